"""Training throughput: images per second through the real training step, data loading and augmentation included.

Usage:
    python benchmarks/train_speed.py                            # yolov5n, 320 px, batch 16, built-in data, 2 threads
    python benchmarks/train_speed.py --threads 4 --batches 40 --imgsz 640 --cfg yolov5s.yaml
    python benchmarks/train_speed.py --device 0 --batch-size 64 --workers 8   # CUDA, with AMP as train.py uses
    python benchmarks/train_speed.py --bf16                     # CPU bfloat16 autocast (AVX-512 BF16 or AMX CPUs)
    python benchmarks/train_speed.py --cpu-dp 2                 # each batch as 2 parts in 2 threads (train.py's)
    python benchmarks/train_speed.py --eager-bn                 # ATen's BatchNorm and SiLU, not the fused kernel
    python benchmarks/train_speed.py --loader-nice 0            # dataloader workers at the main process's priority

Runs ``engine.train_one_epoch`` (warmup, accumulation, EMA, gradient clipping) over the first --warmup + --batches
batches of the mosaic-augmented training loader; only the last --batches are timed. The model is in the memory
format train.py trains in (channels_last on the CPU); on CUDA it trains with AMP and its gradient scaler, as
train.py does, and with --bf16 on the CPU under train.py --bf16's bfloat16 autocast (an error where the CPU has no
fast bfloat16). Peak memory is the resident set size high-water mark of this process and of its largest dataloader
worker (``resource.getrusage``).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from models import bn_silu  # noqa: E402
from models.yolo import DetectionModel  # noqa: E402
from utils.data.data_config import check_dataset  # noqa: E402
from utils.data.dataset import create_dataloader  # noqa: E402
from utils.errors import SlideYoloError  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.torch_utils import select_device, training_autocast, training_memory_format  # noqa: E402
from utils.train.ema import ModelEMA  # noqa: E402
from utils.train.engine import EpochConfig, TrainState, train_one_epoch  # noqa: E402
from utils.train.hyp import load_hyp  # noqa: E402
from utils.train.optim import Warmup, accumulate_steps, build_optimizer, build_scheduler, warmup_iterations  # noqa: E402
from utils.train.thread_dp import ThreadDataParallel  # noqa: E402
from utils.train.train_setup import loader_nice, prepare_bn_silu  # noqa: E402
from utils.train.transfer import scale_loss_gains  # noqa: E402


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Training images/s (data loading included) and peak memory")
    p.add_argument("--cfg", default="yolov5n.yaml", help="model YAML")
    p.add_argument("--data", default="data/shapes.yaml", help="dataset YAML (training split is used)")
    p.add_argument("--hyp", default="data/hyps/hyp.scratch-low.yaml", help="hyperparameters (augmentation, loss)")
    p.add_argument("--imgsz", type=int, default=320, help="training image size")
    p.add_argument("--batch-size", type=int, default=16, help="batch size")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--batches", type=int, default=20, help="timed batches")
    p.add_argument("--device", default="cpu", help="cpu, or a CUDA device such as 0")
    p.add_argument("--bf16", action="store_true", help="CPU bfloat16 autocast, as train.py --bf16")
    p.add_argument("--cpu-dp", type=int, default=1, help="CPU: the batch in this many parts in threads, as train.py")
    p.add_argument("--eager-bn", action="store_true", help="CPU: ATen's BatchNorm and SiLU, not the fused kernel")
    p.add_argument("--loader-nice", type=int, default=None,
                   help="dataloader workers' niceness (default as train.py: 19 on the CPU, 0 on CUDA)")
    return p.parse_args(argv)


class Take:
    """The first n batches of a loader, with a length (train_one_epoch needs len())."""

    def __init__(self, loader: Iterable, n: int):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.loader), self.n)


def make_state(opt: argparse.Namespace, nc: int, names: dict, device: torch.device) -> TrainState:
    """Model, loss, optimizer, warmup, EMA (and on CUDA the AMP gradient scaler) set up as train.py does."""
    hyp = load_hyp(opt.hyp)
    model = DetectionModel(opt.cfg, nc=nc).to(device, memory_format=training_memory_format(device))
    model.names = names
    model.hyp = scale_loss_gains(hyp, model.model[-1].nl, nc, opt.imgsz)
    optimizer = build_optimizer(model, "SGD", hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    scheduler = build_scheduler(optimizer, 100, hyp["lrf"])
    warmup = Warmup(warmup_iterations(hyp["warmup_epochs"], 25), hyp, scheduler.lr_lambdas[0], opt.batch_size)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    return TrainState(model, optimizer, ComputeLoss(model), warmup, accumulate_steps(opt.batch_size),
                      ema=ModelEMA(model), scaler=scaler)


def peak_rss_mb() -> tuple[float, float]:
    """(this process, largest finished child) peak resident set size in MB (Linux reports KiB)."""
    unit = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit
    return own, child


def main(opt: argparse.Namespace) -> float:
    """Time the training loop; print and return images per second."""
    torch.set_num_threads(opt.threads)
    data = check_dataset(opt.data)
    hyp = load_hyp(opt.hyp)
    device = select_device(opt.device)
    nice = loader_nice(opt, device)  # as train.py
    loader, _ = create_dataloader(data["train"], opt.imgsz, opt.batch_size, 32, hyp=hyp, augment=True,
                                  workers=opt.workers, shuffle=True, nc=data["nc"], names=data["names"],
                                  worker_nice=nice)
    amp, amp_dtype = training_autocast(device, opt.bf16)  # as train.py: AMP on CUDA, bfloat16 on the CPU if asked
    state = make_state(opt, data["nc"], data["names"], device)
    cfg = EpochConfig(epochs=1, imgsz=opt.imgsz, device=device, amp=amp, amp_dtype=amp_dtype,
                      memory_format=training_memory_format(device))
    prepare_bn_silu(opt, device)  # the fused BatchNorm+SiLU kernel on the CPU, as train.py
    if opt.cpu_dp > 1:
        state.dp = ThreadDataParallel(state.model, opt.cpu_dp, state.compute_loss, ComputeLoss)
    n = opt.warmup + opt.batches
    if n > len(loader):
        raise SystemExit(f"--warmup + --batches = {n} exceeds the {len(loader)} batches of one epoch")
    train_one_epoch(state, Take(loader, opt.warmup), 0, cfg)
    t0 = time.perf_counter()
    train_one_epoch(state, Take(loader, opt.batches), 0, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    if state.dp is not None:
        state.dp.close()
    ips = opt.batches * opt.batch_size / dt
    workers = loader.num_workers
    del loader  # ends the persistent workers, so their peak memory is counted as finished children
    gc.collect()
    own, child = peak_rss_mb()
    where = torch.cuda.get_device_name(device) + " (AMP), " if device.type == "cuda" else ""
    where += "bfloat16 autocast, " if opt.bf16 else ""
    where += f"--cpu-dp {opt.cpu_dp}, " if opt.cpu_dp > 1 else ""
    where += "ATen BatchNorm+SiLU, " if device.type == "cpu" and not bn_silu.KERNEL.active else ""
    print(f"\n{Path(opt.cfg).stem} train {opt.imgsz}px batch {opt.batch_size}, {where}{opt.threads} torch threads, "
          f"{workers} workers at nice {nice}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}:\n  {ips:.1f} images/s ({dt / opt.batches:.3f} s/batch, data loading "
          f"included)\n  peak RSS {own:.0f} MB main process, {child:.0f} MB largest dataloader worker")
    return ips


if __name__ == "__main__":
    try:
        main(parse_opt())
    except SlideYoloError as e:
        print(f"train_speed.py: error: {e}", file=sys.stderr)
        sys.exit(1)
