"""One training epoch: warmup, multi-scale, AMP, gradient accumulation and clipping, EMA, progress bar.

``train_one_epoch(state, loader, epoch, cfg)`` is the inner loop of ``train.py``; everything it changes across
epochs lives in ``TrainState`` (model, optimizer, EMA, scaler, accumulation), what stays fixed in ``EpochConfig``.
A non-finite loss raises ``TrainingDivergedError`` before any backward pass or checkpoint write.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from utils.errors import SlideYoloError
from utils.log import get_logger
from utils.train.dist import DistEnv, all_true
from utils.train.ema import ModelEMA
from utils.train.optim import Warmup

if TYPE_CHECKING:
    from utils.train.distill import Distiller
    from utils.train.interrupt import InterruptGuard
    from utils.train.thread_dp import ThreadDataParallel

LOSS_NAMES = ("box_loss", "obj_loss", "cls_loss")
BAR_FORMAT = "{l_bar}{bar:10}{r_bar}"


class TrainingDivergedError(SlideYoloError):
    """The training loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclass
class TrainState:
    """What one epoch updates: the (possibly DDP-wrapped) model, its optimizer, EMA, AMP scaler, accumulation."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    compute_loss: Callable[[list, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    warmup: Warmup
    accumulate: int
    ema: ModelEMA | None = None
    scaler: torch.amp.GradScaler | None = None
    last_opt_step: int = -1
    distill: Distiller | None = None  # with --teacher
    dp: ThreadDataParallel | None = None  # with --cpu-dp N > 1
    rng: random.Random = field(default_factory=lambda: random.Random(0))


@dataclass
class EpochConfig:
    """Fixed settings of the epoch loop."""

    epochs: int
    imgsz: int
    device: torch.device
    grid: int = 32  # largest stride: multi-scale sizes are multiples of it
    amp: bool = False
    amp_dtype: torch.dtype | None = None  # None: the device's autocast default (float16 on CUDA); bfloat16 with --bf16
    multi_scale: bool = False
    clip_norm: float = 10.0
    env: DistEnv = field(default_factory=DistEnv)
    save_dir: Path | None = None  # where train_batch{0,1,2}.jpg go (None: no plots)
    names: dict | None = None
    memory_format: torch.memory_format = torch.contiguous_format  # of the model's weights; batches are converted
    interrupt: InterruptGuard | None = None  # checked each batch: a Ctrl-C whose KeyboardInterrupt was swallowed
    loss_gain: float = 1.0  # the training loss's factor: 4 with --quad (a quarter as many images per batch)


def multi_scale_size(imgsz: int, grid: int, rng: random.Random) -> int:
    """A random training size: a multiple of grid in [0.5, 1.5] x imgsz (at least one grid cell)."""
    low, high = int(imgsz * 0.5), int(imgsz * 1.5)
    return max(rng.randrange(low, high + grid) // grid * grid, grid)


def rescale_batch(imgs: torch.Tensor, size: int, grid: int) -> torch.Tensor:
    """Resize a batch (bs, 3, h, w) so its long side is size, each side a multiple of grid (bilinear)."""
    sf = size / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    new = [math.ceil(x * sf / grid) * grid for x in imgs.shape[2:]]
    return F.interpolate(imgs, size=new, mode="bilinear", align_corners=False)


def check_finite(loss: torch.Tensor, items: torch.Tensor, epoch: int, i: int, device: torch.device) -> None:
    """Raise TrainingDivergedError (on every process) if the loss of any process is NaN or infinite."""
    if all_true(bool(torch.isfinite(loss).all()), device):
        return
    box, obj, cls = (float(x) for x in items.tolist())
    raise TrainingDivergedError(f"training stopped: non-finite loss at epoch {epoch} batch {i} (box_loss {box:.4g}, "
                                f"obj_loss {obj:.4g}, cls_loss {cls:.4g}); the last saved checkpoint is unchanged. "
                                "Try a lower lr0 or warmup_bias_lr in the hyp file, or check the labels")


def optimizer_step(state: TrainState, clip_norm: float) -> None:
    """Unscale (AMP), clip the gradient norm, step the optimizer, reset gradients and update the EMA."""
    params = [p for p in state.model.parameters() if p.grad is not None]
    if state.scaler is not None:
        state.scaler.unscale_(state.optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_norm=clip_norm)
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        state.ema.update(state.model)


def add_distillation(state: TrainState, cfg: EpochConfig, imgs: torch.Tensor, pred: list, loss: torch.Tensor,
                     items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the teacher's distillation loss (teacher forward under the same autocast as the student's)."""
    with torch.autocast(device_type=cfg.device.type, dtype=cfg.amp_dtype, enabled=cfg.amp):
        tpred = state.distill.teacher_outputs(imgs)
    dloss, ditems = state.distill.loss(pred, tpred)  # loss() works in float32
    return loss + dloss * cfg.loss_gain, items + ditems


def to_float_images(imgs: torch.Tensor, device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    """A uint8 batch as float32 in [0, 1] in the given memory format: laid out while still uint8 (a quarter of the
    bytes), then one float copy divided in place (the same values as ``imgs.float() / 255``)."""
    out = imgs.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    out = out.float() if out.dtype != torch.float32 else out.clone()  # never divide the caller's tensor
    return out.div_(255)


def _forward_loss(model: nn.Module, compute_loss: Callable, imgs: torch.Tensor, targets: torch.Tensor,
                  cfg: EpochConfig, keep_pred: bool = False) -> tuple:
    """The model's forward pass and loss (times cfg.loss_gain; items as computed) under the run's autocast: (loss,
    items), or (pred, loss, items)."""
    with torch.autocast(device_type=cfg.device.type, dtype=cfg.amp_dtype, enabled=cfg.amp):
        pred = model(imgs)
        if cfg.amp_dtype is None:  # CUDA float16 AMP, as YOLOv5: the loss under autocast too
            loss, items = compute_loss(pred, targets.to(cfg.device))
    if cfg.amp_dtype is not None:  # bfloat16 on the CPU: the model in bfloat16, the loss in float32
        loss, items = compute_loss([p.float() for p in pred], targets.to(cfg.device))
    if cfg.loss_gain != 1:
        loss = loss * cfg.loss_gain
    return (pred, loss, items) if keep_pred else (loss, items)


def _part_forward_loss(model: nn.Module, compute_loss: Callable, imgs: torch.Tensor, targets: torch.Tensor,
                       cfg: EpochConfig) -> tuple:
    """One ``--cpu-dp`` part: its slice of the uint8 batch made float in the part's own thread (the parts convert
    side by side while the main thread waits), then ``_forward_loss``."""
    return _forward_loss(model, compute_loss, to_float_images(imgs, cfg.device, cfg.memory_format), targets, cfg)


def memory_str(device: torch.device) -> str:
    """Reserved CUDA memory as e.g. '1.23G', or '0G' on the CPU."""
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.memory_reserved(device) / 1e9:.3g}G"
    return "0G"


def progress_header() -> str:
    """Column titles matching the per-batch progress description."""
    return ("{:>11}" * 7).format("Epoch", "GPU_mem", *LOSS_NAMES, "Instances", "Size")


def _plot_batch(cfg: EpochConfig, ni: int, imgs: torch.Tensor, targets: torch.Tensor, paths: tuple) -> None:
    """Save the first three training batches as train_batch{ni}.jpg (main process, plots on)."""
    if cfg.save_dir is None or ni >= 3 or not cfg.env.is_main:
        return
    from utils.plots import plot_images

    plot_images(imgs, targets, paths, cfg.save_dir / f"train_batch{ni}.jpg", cfg.names)


def train_one_epoch(state: TrainState, loader: Iterable, epoch: int, cfg: EpochConfig) -> torch.Tensor:
    """Train for one pass over loader; return the mean (box, obj, cls) loss items of this process, shape (3,)."""
    model, nb = state.model, len(loader)
    model.train()
    sampler = getattr(loader, "sampler", None)
    if cfg.env.distributed and hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    mloss = torch.zeros(3, device=cfg.device)
    bar = enumerate(loader)
    if cfg.env.is_main:
        get_logger().info("\n" + progress_header())
        bar = tqdm(bar, total=nb, bar_format=BAR_FORMAT)
    state.optimizer.zero_grad(set_to_none=True)
    in_parts = state.dp is not None and not cfg.multi_scale  # each part converts its own images in its thread
    part = partial(_part_forward_loss if in_parts else _forward_loss, cfg=cfg)
    for i, (imgs, targets, paths, _) in bar:
        if cfg.interrupt is not None:
            cfg.interrupt.check()
        ni = i + nb * epoch  # iterations since the start of training
        if not in_parts:
            imgs = to_float_images(imgs, cfg.device, cfg.memory_format)
        if state.warmup.active(ni):
            state.accumulate = state.warmup(ni, epoch, state.optimizer)
        if cfg.multi_scale:
            imgs = rescale_batch(imgs, multi_scale_size(cfg.imgsz, cfg.grid, state.rng), cfg.grid)
        if state.dp is not None:  # --cpu-dp: the batch in parts, each in its own thread (utils/train/thread_dp.py)
            loss, items = state.dp.losses(imgs, targets, part)
            check_finite(loss, items, epoch, i, cfg.device)
            state.dp.backward()
        else:
            pred, loss, items = _forward_loss(model, state.compute_loss, imgs, targets, cfg, keep_pred=True)
            if state.distill is not None:
                loss, items = add_distillation(state, cfg, imgs, pred, loss, items)
            check_finite(loss, items, epoch, i, cfg.device)
            if cfg.env.distributed:
                loss = loss * cfg.env.world_size  # DDP averages gradients over processes
            (state.scaler.scale(loss) if state.scaler is not None else loss).backward()
        if ni - state.last_opt_step >= state.accumulate:
            optimizer_step(state, cfg.clip_norm)
            state.last_opt_step = ni
        mloss = (mloss * i + items.to(mloss.device)) / (i + 1)
        if cfg.env.is_main:
            bar.set_description(("{:>11}" * 2 + "{:>11.4g}" * 5).format(
                f"{epoch}/{cfg.epochs - 1}", memory_str(cfg.device), *mloss.tolist(), targets.shape[0],
                imgs.shape[-1]))
            _plot_batch(cfg, ni, imgs, targets, paths)
    return mloss


class EarlyStopping:
    """Stop when fitness has not improved for ``patience`` epochs (patience 0 or less: never). Only a higher fitness
    is an improvement, as upstream YOLOv5 since its fix for plateaus: a run stuck at the same fitness (0 mAP from
    scratch, say) stops too."""

    def __init__(self, patience: int = 100, best_fitness: float = 0.0, best_epoch: int = 0):
        self.patience = patience if patience and patience > 0 else float("inf")
        self.best_fitness, self.best_epoch = best_fitness, best_epoch
        self.last_epoch = best_epoch

    @property
    def possible_stop(self) -> bool:
        """True when the coming epoch may be the last (so it is validated and saved even with --noval/--nosave)."""
        return self.last_epoch - self.best_epoch >= self.patience - 1

    def __call__(self, epoch: int, fitness: float) -> bool:
        """Record this epoch's fitness; True when training should stop."""
        self.last_epoch = epoch
        if fitness > self.best_fitness:
            self.best_epoch, self.best_fitness = epoch, fitness
        stop = epoch - self.best_epoch >= self.patience
        if stop:
            get_logger().info(f"Stopping early: no improvement in the last {self.patience} epochs (best epoch "
                              f"{self.best_epoch}, fitness {self.best_fitness:.4f}); raise --patience to train on, "
                              "or --patience 0 to disable")
        return stop
