"""The epoch loop of a training run around ``engine.train_one_epoch``: per-epoch validation, results.csv, checkpoints
(last / best / epochN), early stopping, resuming, and the final strip + validation of best.pt.

Only the main process (rank -1 or 0) validates and writes files; the stop decision is broadcast to the others.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import WeightedRandomSampler

from utils.checkpoint import attempt_load, copy_checkpoint, deferred_stop, save_checkpoint, strip_optimizer
from utils.data.sampling import update_sampler
from utils.errors import CheckpointError
from utils.eval.metrics import fitness
from utils.log import get_logger
from utils.torch_utils import de_parallel
from utils.train.dist import DistEnv, broadcast_object
from utils.train.engine import EarlyStopping, EpochConfig, TrainingDivergedError, TrainState, train_one_epoch
from utils.train.results import append_results

ZERO_RESULTS = (0.0,) * 7  # P, R, mAP50, mAP50-95, val box, obj, cls


@dataclass
class RunContext:
    """Everything the loop needs besides the trainable state: options, data, paths and the validation module."""

    opt: argparse.Namespace
    hyp: dict  # as in hyp.yaml (before gain scaling)
    data: dict
    save_dir: Path
    env: DistEnv
    device: torch.device
    imgsz: int
    batch_size: int  # per process
    val: ModuleType | None = None
    val_loader: Any = None
    tb: Any = None  # utils.train.run_logger.TensorBoardLogger of the main process, or None
    maps: Any = None  # per-class mAP50-95 of the last validation (for --image-weights)

    @property
    def weights_dir(self) -> Path:
        """The run's weights/ folder."""
        return self.save_dir / "weights"


def load_val_module() -> ModuleType | None:
    """Import the project's val.py, or None when it is absent (training then needs --noval)."""
    try:
        import val
    except ModuleNotFoundError as e:
        if e.name != "val":
            raise
        return None
    return val


def validate(ctx: RunContext, state: TrainState, plots: bool = False, model: Any = None) -> tuple:
    """val.run on the EMA model (or a loaded model, in FP16 on CUDA) with the run's val loader.

    Returns (P, R, mAP50, mAP50-95, val box, obj, cls). The EMA is validated in FP32 so its average keeps full
    precision.
    """
    if ctx.val is None:
        get_logger().warning("val.py is not available: validation skipped, metrics recorded as 0")
        return ZERO_RESULTS
    half = model is not None and ctx.device.type == "cuda"
    results, maps, _ = ctx.val.run(ctx.data, batch_size=ctx.batch_size * 2, imgsz=ctx.imgsz, conf_thres=0.001,
                                iou_thres=0.6, half=half, single_cls=ctx.opt.single_cls,
                                model=model if model is not None else state.ema.ema, dataloader=ctx.val_loader,
                                save_dir=ctx.save_dir, plots=plots, verbose=plots or model is not None,
                                compute_loss=state.compute_loss)
    ctx.maps = maps
    return tuple(float(x) for x in results)


def ensure_finite_weights(state: TrainState) -> None:
    """Refuse to checkpoint NaN or infinite weights (TrainingDivergedError), so a good file is never overwritten."""
    net = state.ema.ema if state.ema is not None else de_parallel(state.model)
    bad = [k for k, v in net.state_dict().items() if v.dtype.is_floating_point and not torch.isfinite(v).all()]
    if bad:
        raise TrainingDivergedError(f"training stopped: non-finite weights in {bad[0]} (and {len(bad) - 1} more); "
                                    "the last saved checkpoint is unchanged")


def _portable_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy in the default (contiguous) memory format, whatever format training used."""
    return deepcopy(model).to(memory_format=torch.contiguous_format)


def make_checkpoint(state: TrainState, ctx: RunContext, epoch: int, best_fitness: float) -> dict:
    """The checkpoint dict: FP32 model (with its class_act) and EMA copies, optimizer, loss state (the Slide moving
    average), epoch, fitness, opt, hyp."""
    return {"epoch": epoch, "best_fitness": best_fitness, "model": _portable_copy(de_parallel(state.model)),
            "ema": _portable_copy(state.ema.ema) if state.ema is not None else None,
            "updates": state.ema.updates if state.ema is not None else 0,
            "optimizer": state.optimizer.state_dict(), "last_opt_step": state.last_opt_step,
            "loss_state": getattr(state.compute_loss, "state_dict", dict)(),
            "opt": vars(ctx.opt), "hyp": ctx.hyp, "date": datetime.now().isoformat()}


def save_epoch(state: TrainState, ctx: RunContext, epoch: int, best_fitness: float, is_best: bool) -> None:
    """Write last.pt, best.pt when is_best, and epoch{N}.pt every --save-period epochs (all atomically; a Ctrl-C
    waits for all of them, as a last.pt whose best_fitness is this epoch's needs this epoch's best.pt)."""
    ensure_finite_weights(state)
    ckpt = make_checkpoint(state, ctx, epoch, best_fitness)
    with deferred_stop():
        last = save_checkpoint(ckpt, ctx.weights_dir / "last.pt")
        if is_best:
            copy_checkpoint(last, ctx.weights_dir / "best.pt")  # the same dict: its file, not a second pickling
        period = ctx.opt.save_period
        if period > 0 and epoch % period == 0:
            copy_checkpoint(last, ctx.weights_dir / f"epoch{epoch}.pt")


def restore_state(ckpt: dict, state: TrainState, scheduler: LambdaLR, weights: str, epochs: int) -> tuple[int, float]:
    """Load optimizer, EMA, schedule position and best fitness from a last.pt; return (start_epoch, best_fitness)."""
    start_epoch = int(ckpt.get("epoch", -1)) + 1
    if start_epoch <= 0 or ckpt.get("optimizer") is None:
        raise CheckpointError(f"--resume {weights}: this run has finished (its optimizer was stripped), nothing to "
                              "resume; start a new run with --weights to fine-tune from it")
    if start_epoch >= epochs:
        raise CheckpointError(f"--resume {weights}: all {epochs} epochs are done, nothing to resume")
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.ema is not None and ckpt.get("ema") is not None:
        state.ema.ema.load_state_dict(ckpt["ema"].float().state_dict())
        state.ema.updates = int(ckpt.get("updates") or 0)
    state.last_opt_step = int(ckpt.get("last_opt_step", -1))
    if hasattr(state.compute_loss, "load_state_dict"):
        state.compute_loss.load_state_dict(ckpt.get("loss_state") or {})
    scheduler.last_epoch = start_epoch  # the next step() yields the factor of start_epoch + 1
    get_logger().info(f"Resuming training from {weights} at epoch {start_epoch} of {epochs}")
    return start_epoch, float(ckpt.get("best_fitness") or 0.0)


def end_epoch(state: TrainState, ctx: RunContext, epoch: int, mloss: torch.Tensor, lrs: list[float],
              stopper: EarlyStopping, best_fitness: float) -> tuple[tuple, float, bool]:
    """Main process: validate, log results.csv, save checkpoints, decide early stop -> (results, best, stop)."""
    if state.ema is not None:
        state.ema.update_attr(state.model)
    final = epoch + 1 == ctx.opt.epochs or stopper.possible_stop
    results = validate(ctx, state) if (not ctx.opt.noval or final) else ZERO_RESULTS
    fi = float(fitness(np.array(results).reshape(1, -1))[0])
    stop = stopper(epoch, fi)
    best_fitness = max(best_fitness, fi)
    append_results(ctx.save_dir / "results.csv", epoch, mloss.tolist(), results, lrs)
    if ctx.tb is not None:
        ctx.tb.epoch(epoch, mloss.tolist(), results, lrs)
    if not ctx.opt.nosave or final:
        save_epoch(state, ctx, epoch, best_fitness, is_best=fi == best_fitness)
    return results, best_fitness, stop


def fit(state: TrainState, scheduler: LambdaLR, loader: Any, ctx: RunContext, cfg: EpochConfig,
        start_epoch: int = 0, best_fitness: float = 0.0) -> tuple[tuple, float, int]:
    """Train epochs start_epoch..epochs-1; return (last validation results, best fitness, last epoch run)."""
    stopper = EarlyStopping(ctx.opt.patience, best_fitness, max(start_epoch - 1, 0))
    results, epoch, t0 = ZERO_RESULTS, start_epoch - 1, time.time()
    stop_after = getattr(ctx.opt, "stop_after", None)
    for epoch in range(start_epoch, ctx.opt.epochs):
        resample(loader, ctx)
        mloss = train_one_epoch(state, loader, epoch, cfg)
        lrs = [g["lr"] for g in state.optimizer.param_groups]
        scheduler.step()
        stop = False
        if ctx.env.is_main:
            results, best_fitness, stop = end_epoch(state, ctx, epoch, mloss, lrs, stopper, best_fitness)
        stop = broadcast_object(stop)
        if stop or (stop_after is not None and epoch + 1 >= stop_after):
            break
    get_logger().info(f"\n{epoch - start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
    return results, best_fitness, epoch


def fit_and_finish(state: TrainState, scheduler: LambdaLR, loader: Any, ctx: RunContext, cfg: EpochConfig,
                   start_epoch: int, best: float) -> tuple:
    """Train the remaining epochs, then (main process, run not cut by --stop-after) strip and validate best.pt."""
    try:
        results, _, last_epoch = fit(state, scheduler, loader, ctx, cfg, start_epoch, best)
    finally:
        if state.dp is not None:
            state.dp.close()
    opt, env = ctx.opt, ctx.env
    if opt.weights_hash:
        print(f"weights-hash rank {env.rank}: {parameters_hash(state.model)}", flush=True)
    interrupted = opt.stop_after is not None and last_epoch + 1 < opt.epochs
    return finish(state, ctx) if env.is_main and not interrupted else results


def resample(loader: Any, ctx: RunContext) -> None:
    """--image-weights: the next epoch's image weights from the class frequencies and the last class mAPs."""
    if getattr(ctx.opt, "image_weights", False) and isinstance(getattr(loader, "sampler", None),
                                                                WeightedRandomSampler):
        nc = 1 if ctx.opt.single_cls else ctx.data["nc"]
        update_sampler(loader.sampler, loader.dataset.labels, nc, ctx.maps)


def finish(state: TrainState, ctx: RunContext) -> tuple:
    """Strip the optimizer from last.pt and best.pt, validate best.pt with plots, plot results.csv."""
    results = ZERO_RESULTS
    for f in (ctx.weights_dir / "last.pt", ctx.weights_dir / "best.pt"):
        if not f.exists():
            continue
        strip_optimizer(f)
        if f.name == "best.pt" and ctx.val is not None:
            get_logger().info(f"\nValidating {f}...")
            results = validate(ctx, state, plots=not ctx.opt.noplots, model=attempt_load(f, ctx.device))
    if not ctx.opt.noplots and (ctx.save_dir / "results.csv").exists():
        from utils.plots import plot_results

        plot_results(ctx.save_dir / "results.csv")
    if ctx.tb is not None:
        ctx.tb.images(ctx.opt.epochs - 1)
        ctx.tb.close()
    get_logger().info(f"Results saved to {ctx.save_dir}")
    return results


def parameters_hash(model: torch.nn.Module) -> str:
    """SHA-256 of all parameters in name order (buffers excluded: BatchNorm statistics stay per process in DDP)."""
    h = hashlib.sha256()
    for name, p in sorted(de_parallel(model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
