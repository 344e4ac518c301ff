"""Exponential moving average (EMA) of model weights, as kept by YOLOv5 training and saved in checkpoints."""

from __future__ import annotations

import math
from copy import deepcopy

import torch
from torch import nn

from utils.torch_utils import de_parallel

EMA_ATTRS = ("yaml", "nc", "names", "hyp")  # model attributes mirrored onto the EMA copy


class ModelEMA:
    """A frozen copy of the model whose floating-point state follows the trained weights.

    After each optimizer step: ``v <- d * v + (1 - d) * w`` for every float entry of the state dict (parameters and
    BatchNorm buffers), with ``d = decay * (1 - exp(-updates / tau))``, so early updates follow the model closely and
    the average lengthens as training goes on. Integer buffers (``num_batches_tracked``) are left as copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay_max = decay
        self.tau = tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates: int | None = None) -> float:
        """The averaging factor d after ``updates`` updates (defaults to the current count)."""
        n = self.updates if updates is None else updates
        return self.decay_max * (1.0 - math.exp(-n / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Count one update and blend the model's current state into the average."""
        self.updates += 1
        d = self.decay()
        current = de_parallel(model).state_dict()
        for name, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(current[name].detach().to(v.dtype), alpha=1.0 - d)

    def update_attr(self, model: nn.Module, names: tuple[str, ...] = EMA_ATTRS) -> None:
        """Copy plain attributes (names, nc, hyp, ...) from the model; setting ``hyp`` also sets class_act."""
        src = de_parallel(model)
        for name in names:
            if name in src.__dict__ or hasattr(type(src), name):
                setattr(self.ema, name, getattr(src, name))
