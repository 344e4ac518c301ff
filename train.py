"""Train a YOLOv5-style detector on a YOLO-format dataset (the built-in shapes dataset by default).

Usage:
    python train.py                                              # yolov5n from scratch on data/shapes.yaml, CPU-sized
    python train.py --data data.yaml --cfg yolov5s.yaml --weights '' --hyp data/hyps/hyp.slide.yaml --epochs 100
    python train.py --data data.yaml --weights path/to/yolov5n.pt  # fine-tune from a checkpoint
    python train.py --resume                                     # continue the newest run under --project
    torchrun --nproc_per_node 2 train.py --data data.yaml ...     # DistributedDataParallel
    python train.py --cpu-dp 1                                   # CPU: one batch in one thread group (default auto)

Outputs go to runs/train/exp{N}: weights/last.pt and best.pt, hyp.yaml, opt.yaml, results.csv and plots.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import torch
import yaml

from utils.checkpoint import is_resumable, load_checkpoint
from utils.cli import DefaultsHelpFormatter
from utils.errors import CheckpointError, ConfigError, SlideYoloError
from utils.log import get_logger
from utils.paths import ROOT
from utils.torch_utils import select_device
from utils.train import dist
from utils.train.hyp import load_hyp
from utils.train.interrupt import TrainingInterrupted
from utils.train.optim import AUTO, OPTIMIZERS
from utils.train.train_setup import DEFAULT_CFG, TEST_HOOKS, run_training


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (YOLOv5's names and meanings); argv None reads sys.argv."""
    p = argparse.ArgumentParser(description="Train a YOLOv5-style detector", formatter_class=DefaultsHelpFormatter)
    p.add_argument("--weights", type=str, default="", help="initial weights path ('' = from scratch)")
    p.add_argument("--cfg", type=str, default="", help=f"model.yaml path ({DEFAULT_CFG} when no --weights)")
    p.add_argument("--data", type=str, default="data/shapes.yaml", help="dataset.yaml path")
    p.add_argument("--hyp", type=str, default="data/hyps/hyp.scratch-low.yaml", help="hyperparameters path")
    p.add_argument("--epochs", type=int, default=None, help="total training epochs (100; 40 on the built-in data)")
    p.add_argument("--batch-size", type=int, default=None, help="total batch size for all processes (16)")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=None,
                   help="train, val image size in pixels (640; 320 on the built-in data)")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--quad", action="store_true", help="quad dataloader: every 4 images of a batch train as one of "
                   "twice the side (helps at a larger --img on small objects); --batch-size a multiple of 4")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume the most recent run, or a last.pt")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--cache", type=str, nargs="?", const="ram", choices=("ram", "disk"), help="image --cache ram/disk")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--cpu-dp", default="auto", metavar="N|auto",
                   help="CPU: split each batch into N parts trained side by side in N threads (as DDP with N "
                   "processes: BatchNorm statistics per part); auto: one part per torch thread, each of at least 8 "
                   "images (2 on 2 cores at batch 16, about 1.4x faster per step); 1: off")
    p.add_argument("--bf16", action="store_true",
                   help="CPU: train under bfloat16 autocast (needs AVX-512 BF16 or AMX; about 1.3x faster per step)")
    p.add_argument("--eager-bn", action="store_true",
                   help="CPU: run BatchNorm and SiLU with ATen's own kernels, not the fused kernel models/bn_silu.py "
                   "compiles once per checkout")
    p.add_argument("--teacher", type=str, default="", help="distil from this trained checkpoint (same classes, "
                   "strides and anchors; a student from scratch takes the teacher's anchors)")
    p.add_argument("--distill-weight", type=float, default=None,
                   help="weight of the distillation terms (with --teacher; default 1)")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--image-weights", action="store_true", help="use weighted image selection for training")
    p.add_argument("--optimizer", type=str, choices=OPTIMIZERS + (AUTO,), default=None,
                   help="optimizer (SGD; auto on the built-in data: AdamW for short runs)")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in DDP mode")
    p.add_argument("--workers", type=int, default=8, help="max dataloader workers (per process in DDP mode)")
    p.add_argument("--loader-nice", type=int, default=None, metavar="N",
                   help="lower the training dataloader workers' scheduling priority by N (default: 19 on the CPU, "
                   "where they share the cores with training, so they run in its idle moments; 0 on CUDA)")
    p.add_argument("--project", default=str(ROOT / "runs/train"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    p.add_argument("--label-smoothing", type=float, default=None,
                   help="label smoothing epsilon (default: the hyp file's label_smoothing, else 0.0)")
    p.add_argument("--patience", type=int, default=100, help="early stopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="save a checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    add_evolve_options(p)
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="DDP rank (set by old launchers)")
    add_upstream_only(p)
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: interrupt after N epochs
    p.add_argument("--weights-hash", action="store_true", help=argparse.SUPPRESS)  # tests: log a parameter hash
    return p.parse_args(argv)


def add_evolve_options(p: argparse.ArgumentParser) -> None:
    """--evolve and its companions: the Optuna hyperparameter search (utils/train/evolve.py)."""
    p.add_argument("--evolve", type=int, nargs="?", const=300, help="evolve hyperparameters for x complete trials")
    p.add_argument("--evolve-storage", default="", help="Optuna storage URL for --evolve (default: SQLite file in "
                   "the run folder; postgresql://... to share one study between machines)")
    p.add_argument("--evolve-population", "--evolve_population", default=None, help="warm start of --evolve: a "
                   "folder of hyp YAML files (or one file) whose values are among the first trials")
    p.add_argument("--resume-evolve", "--resume_evolve", default=None, help="continue the search of a runs/evolve "
                   "folder")


def add_upstream_only(p: argparse.ArgumentParser) -> None:
    """Upstream's Weights & Biases and Google Cloud flags: accepted so its command lines run, with a warning."""
    p.add_argument("--entity", default=None, help="upstream's W&B entity (no W&B here: a warning, no effect)")
    p.add_argument("--upload_dataset", "--upload-dataset", nargs="?", const=True, default=False,
                   help="upstream's W&B dataset upload (no W&B here: a warning, no effect)")
    p.add_argument("--bbox_interval", "--bbox-interval", type=int, default=-1,
                   help="upstream's W&B box-image interval (no W&B here: a warning, no effect)")
    p.add_argument("--bucket", default="", help="upstream's gsutil bucket for --evolve (never used here: a warning; "
                   "share a search with --evolve-storage)")


def latest_last_pt(project: str | Path) -> Path:
    """The most recently written last.pt under project that can be resumed: finished runs' (stripped) are passed
    over. CheckpointError when there is none."""
    found = sorted(Path(project).glob("**/last.pt"), key=lambda f: f.stat().st_mtime, reverse=True)
    if not found:
        raise CheckpointError(f"--resume: no last.pt found under {project}; pass the path of one")
    finished = []
    for last in found:
        try:
            if is_resumable(load_checkpoint(last, mmap=True)):
                if finished:
                    get_logger().info(f"--resume: {last} is the newest interrupted run ({finished[0]} has finished)")
                return last
            finished.append(last)
        except CheckpointError:  # an unreadable file is not the run to continue
            continue
    if not finished:
        raise CheckpointError(f"--resume: no last.pt under {project} can be read; pass the path of one")
    raise CheckpointError(f"--resume: every last.pt under {project} is of a finished run (the newest: {finished[0]}); "
                          f"start a new run, with --weights {finished[0]} to fine-tune from it")


def ignored_on_resume(opt: argparse.Namespace) -> list[str]:
    """The command-line options given besides --resume (and --project, which says where to look), as flags."""
    defaults, skip = vars(parse_opt([])), {"resume", "project", "local_rank", *TEST_HOOKS}
    return [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(opt).items()
            if k not in skip and v != defaults.get(k)]


def resolve_resume(opt: argparse.Namespace) -> argparse.Namespace:
    """For --resume: the options of the interrupted run (its opt.yaml), pointed at its last.pt."""
    last = latest_last_pt(opt.project) if opt.resume is True else Path(str(opt.resume))
    if not last.is_file():
        raise CheckpointError(f"--resume {last}: file not found")
    opt_yaml = last.parent.parent / "opt.yaml"
    saved = yaml.safe_load(opt_yaml.read_text()) if opt_yaml.is_file() else load_checkpoint(last).get("opt")
    if not isinstance(saved, dict):
        raise CheckpointError(f"--resume {last}: no opt.yaml beside the weights folder and no options in the file")
    ignored = ignored_on_resume(opt)
    if ignored:
        get_logger().warning(f"--resume continues {last.parent.parent} with its own options (its opt.yaml), so "
                             f"{' '.join(ignored)} is ignored; to train with other options, start a new run with "
                             f"--weights {last}")
    new = argparse.Namespace(**{**vars(parse_opt([])), **saved})
    new.cfg, new.weights, new.resume, new.exist_ok = "", str(last), True, True
    new.save_dir = str(last.parent.parent)
    for key in TEST_HOOKS:
        setattr(new, key, getattr(opt, key))
    return new


UPSTREAM_ONLY = {"entity": None, "upload_dataset": False, "bbox_interval": -1, "bucket": ""}


def upstream_only_flags(opt: argparse.Namespace) -> list[str]:
    """The upstream-only flags (W&B, Google Cloud) given with a value other than their default, as flags."""
    return [f"--{k}" for k, default in UPSTREAM_ONLY.items() if getattr(opt, k, default) != default]


def warn_upstream_only(opt: argparse.Namespace, env: dist.DistEnv) -> None:
    """Say once (main process) that upstream's W&B / gsutil flags do nothing here, and what logs the run instead."""
    given = upstream_only_flags(opt)
    if given and env.is_main:
        get_logger().warning(f"WARNING {' '.join(given)}: upstream YOLOv5's Weights & Biases / Google Cloud options "
                             "have no effect here (nothing is uploaded or downloaded); runs log to TensorBoard and "
                             "results.csv in their folder, and --evolve-storage shares a search between machines")


def main(opt: argparse.Namespace) -> tuple:
    """Resolve --resume and the device, join DDP when launched by torchrun, train; returns the final results."""
    env = dist.dist_env(opt.local_rank)
    warn_upstream_only(opt, env)
    if opt.evolve is not None and opt.evolve < 1:
        raise ConfigError(f"--evolve {opt.evolve}: give the number of trials to run (at least 1; 300 when left out)")
    if opt.evolve or opt.resume_evolve:
        return run_evolve(opt, env)
    if opt.resume:
        opt = resolve_resume(opt)
    device = select_device(opt.device)
    if env.distributed and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    dist.init_distributed(env, device)
    try:
        return run_training(opt, device, env)
    finally:
        dist.cleanup()


def run_evolve(opt: argparse.Namespace, env: dist.DistEnv):
    """--evolve: an Optuna search of single-process training runs (utils/train/evolve.py); returns the study."""
    from utils.data.data_config import check_dataset
    from utils.train import evolve

    if env.distributed:
        raise ConfigError("--evolve runs single-process trials; to search on several machines, start one "
                          "'train.py --evolve' per machine with the same --evolve-storage URL instead of torchrun")
    if opt.resume:
        raise ConfigError("--evolve and --resume do not combine; use --resume-evolve DIR to continue a search")

    def classes(search: argparse.Namespace) -> int:
        """The search's class count; its hyp file and data are checked before any folder is made."""
        load_hyp(search.hyp)
        return 1 if search.single_cls else check_dataset(search.data)["nc"]

    opt = evolve.prepare(opt, classes)  # a resumed search's own options (data, --single-cls), not the command line's
    device = select_device(opt.device)
    try:
        return evolve.evolve(opt, lambda trial_opt: run_training(trial_opt, device, env))
    except KeyboardInterrupt as e:  # the study keeps every finished trial; the interrupted one runs again on resume
        raise TrainingInterrupted(f"the search's finished trials are kept in {opt.save_dir}; continue with: "
                                  f"python train.py --resume-evolve {opt.save_dir}",
                                  getattr(e, "signum", signal.SIGINT)) from None


def run(**kwargs) -> tuple:
    """Python entry point: ``train.run(data='data/shapes.yaml', imgsz=320, epochs=10)``; returns final results."""
    opt = parse_opt([])
    for k, v in kwargs.items():
        if not hasattr(opt, k):
            raise ConfigError(f"train.run: unknown option {k!r}")
        setattr(opt, k, v)
    return main(opt)


def error_line(e: SlideYoloError) -> str:
    """The one-line message of an error; for one re-raised from a dataloader worker, the original message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if len(lines) > 1 and "Original Traceback" in str(e):
        return lines[-1].split(": ", 1)[-1]  # "utils.errors.DatasetError: <message>" -> "<message>"
    return " ".join(lines)


if __name__ == "__main__":
    try:
        main(parse_opt())
    except SlideYoloError as e:
        print(f"train.py: error: {error_line(e)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM; a TrainingInterrupted says how to continue
        signum = getattr(e, "signum", signal.SIGINT)
        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        print(f"train.py: {what}{'; ' + str(e) if str(e) else ''}", file=sys.stderr)
        sys.exit(128 + signum)
