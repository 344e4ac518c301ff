"""Optimizer parameter groups, nominal-batch accumulation, the learning-rate schedule and warmup (YOLOv5 recipe).

Parameter groups, in this order (``x/lr0``, ``x/lr1``, ``x/lr2`` of results.csv): 0 biases (no decay), 1 other weights
(decayed), 2 normalisation-layer weights (no decay). Each group carries a ``name`` key ("bias", "weight", "norm").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from utils.errors import ConfigError
from utils.log import colorstr, get_logger

NOMINAL_BATCH = 64  # gradients are accumulated up to this many images per optimizer step
OPTIMIZERS = ("SGD", "Adam", "AdamW")
AUTO = "auto"  # --optimizer auto: chosen from the length of the run (plan_optimizer)
AUTO_SHORT_RUN = 10_000  # iterations: auto picks AdamW up to this many, SGD beyond
AUTO_ADAMW_HYP = {"lr0": 0.001, "warmup_bias_lr": 0.01}  # what auto's AdamW uses instead of the hyp's SGD values
NORM_TYPES = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))  # BatchNorm2d, ...


def accumulate_steps(batch_size: int, nominal: int = NOMINAL_BATCH) -> int:
    """Batches per optimizer step so that one step sees about ``nominal`` images: max(round(nominal / bs), 1)."""
    return max(round(nominal / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int, accumulate: int, nominal: int = NOMINAL_BATCH) -> float:
    """Weight decay rescaled to the images per step actually used: wd * bs * accumulate / nominal."""
    return weight_decay * batch_size * accumulate / nominal


@dataclass(frozen=True)
class OptimizerPlan:
    """The optimizer a run uses: its name, the hyp it reads lr0 / momentum / warmup from, images per step."""

    name: str  # one of OPTIMIZERS
    hyp: dict
    nominal: int = NOMINAL_BATCH  # images per optimizer step, reached by gradient accumulation
    reason: str = ""  # why auto chose it (empty for an explicit --optimizer)


def plan_optimizer(name: str, hyp: dict, iterations: int, batch_size: int) -> OptimizerPlan:
    """Resolve ``--optimizer``: SGD, Adam and AdamW as given (nominal batch 64); ``auto`` by the length of the run.

    ``auto`` is for short runs from scratch, where a few hundred SGD steps of 64 images learn little: up to
    ``AUTO_SHORT_RUN`` iterations it takes AdamW with ``AUTO_ADAMW_HYP`` (lr0 0.001, warmup_bias_lr 0.01) and one
    optimizer step per batch of ``batch_size`` images; longer runs get SGD with the hyp's own values.
    """
    if name != AUTO:
        if name not in OPTIMIZERS:
            raise ConfigError(f"--optimizer {name!r} is not known; allowed: {', '.join(OPTIMIZERS + (AUTO,))}")
        return OptimizerPlan(name, dict(hyp))
    if iterations > AUTO_SHORT_RUN:
        return OptimizerPlan("SGD", dict(hyp), reason=f"{iterations} iterations > {AUTO_SHORT_RUN}: SGD")
    return OptimizerPlan("AdamW", {**hyp, **AUTO_ADAMW_HYP}, nominal=batch_size,
                         reason=f"{iterations} iterations <= {AUTO_SHORT_RUN}: AdamW with lr0 "
                                f"{AUTO_ADAMW_HYP['lr0']}, warmup_bias_lr {AUTO_ADAMW_HYP['warmup_bias_lr']}, "
                                f"a step every batch of {batch_size}")


def split_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Group parameters by role: {'bias': all biases, 'weight': other weights, 'norm': norm-layer weights}."""
    groups: dict[str, list[nn.Parameter]] = {"bias": [], "weight": [], "norm": []}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if pname == "bias":
                groups["bias"].append(p)
            elif isinstance(module, NORM_TYPES):
                groups["norm"].append(p)
            else:
                groups["weight"].append(p)
    return groups


def build_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937,
                    decay: float = 5e-4) -> torch.optim.Optimizer:
    """SGD (Nesterov) or Adam/AdamW (betas (momentum, 0.999)) over the three groups; decay on group 1 only."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"--optimizer {name!r} is not known; allowed: {', '.join(OPTIMIZERS)}")
    g = split_params(model)
    groups = [{"params": g["bias"], "weight_decay": 0.0, "name": "bias"},
              {"params": g["weight"], "weight_decay": decay, "name": "weight"},
              {"params": g["norm"], "weight_decay": 0.0, "name": "norm"}]
    if name == "SGD":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    else:
        cls = torch.optim.Adam if name == "Adam" else torch.optim.AdamW
        opt = cls(groups, lr=lr, betas=(momentum, 0.999))
    get_logger().info(f"{colorstr('optimizer:')} {name}(lr={lr}, momentum={momentum}): {len(g['bias'])} biases "
                      f"(no decay), {len(g['weight'])} weights (decay {decay:.3g}), {len(g['norm'])} norm weights "
                      "(no decay)")
    return opt


class LinearDecay:
    """LR factor falling linearly from 1 at epoch 0 to ``lrf`` at ``epochs``: (1 - x / epochs)(1 - lrf) + lrf."""

    def __init__(self, epochs: int, lrf: float):
        self.epochs, self.lrf = epochs, lrf

    def __call__(self, x: float) -> float:
        """Factor at (fractional) epoch x."""
        return (1 - x / self.epochs) * (1.0 - self.lrf) + self.lrf


class CosineDecay:
    """One-cycle cosine LR factor from 1 to ``lrf``: 1 + (lrf - 1)(1 - cos(pi x / epochs)) / 2 (``--cos-lr``)."""

    def __init__(self, epochs: int, lrf: float):
        self.epochs, self.lrf = epochs, lrf

    def __call__(self, x: float) -> float:
        """Factor at (fractional) epoch x."""
        return 1.0 + (self.lrf - 1.0) * (1 - math.cos(x * math.pi / self.epochs)) / 2


def lr_factor(epochs: int, lrf: float, cos_lr: bool = False) -> Callable[[float], float]:
    """The per-epoch LR multiplier: CosineDecay with cos_lr, else LinearDecay (both picklable)."""
    return CosineDecay(epochs, lrf) if cos_lr else LinearDecay(epochs, lrf)


def build_scheduler(optimizer: torch.optim.Optimizer, epochs: int, lrf: float, cos_lr: bool = False) -> LambdaLR:
    """LambdaLR stepping once per epoch with lr_factor; it records each group's ``initial_lr``."""
    return LambdaLR(optimizer, lr_lambda=lr_factor(epochs, lrf, cos_lr))


def warmup_iterations(warmup_epochs: float, batches_per_epoch: int, minimum: int = 100) -> int:
    """Number of warmup iterations: max(round(warmup_epochs * batches_per_epoch), minimum)."""
    return max(round(warmup_epochs * batches_per_epoch), minimum)


class Warmup:
    """Linear warmup applied per iteration ``ni`` while ``ni <= n_iters``.

    Over [0, n_iters]: the bias group's lr falls from ``warmup_bias_lr`` and the other groups' rise from 0, all to
    ``initial_lr * lf(epoch)``; SGD momentum rises from ``warmup_momentum`` to ``momentum``; gradient accumulation
    rises from 1 to nominal / batch_size (rounded).
    """

    def __init__(self, n_iters: int, hyp: dict, lf: Callable[[float], float], batch_size: int,
                 nominal: int = NOMINAL_BATCH):
        self.n_iters = n_iters
        self.bias_lr0 = hyp["warmup_bias_lr"]
        self.momentum0, self.momentum = hyp["warmup_momentum"], hyp["momentum"]
        self.lf = lf
        self.max_accumulate = nominal / batch_size

    def active(self, ni: int) -> bool:
        """True while iteration ni is inside the warmup."""
        return ni <= self.n_iters

    def __call__(self, ni: int, epoch: int, optimizer: torch.optim.Optimizer) -> int:
        """Set every group's lr (and momentum) for iteration ni; return the accumulation steps to use."""
        xi = [0, self.n_iters]
        for group in optimizer.param_groups:
            start = self.bias_lr0 if group.get("name") == "bias" else 0.0
            group["lr"] = float(np.interp(ni, xi, [start, group["initial_lr"] * self.lf(epoch)]))
            if "momentum" in group:
                group["momentum"] = float(np.interp(ni, xi, [self.momentum0, self.momentum]))
        return max(1, int(np.interp(ni, xi, [1, self.max_accumulate]).round()))
