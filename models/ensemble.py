"""Model ensembles (YOLOv5's ``--weights a.pt b.pt``): several .pt models run on the same batch as one backend.

Each member is a DetectMultiBackend on its own engine (torch, or onnxruntime for ``engine="auto"`` on a CPU); its
output is already decoded (xywh in input pixels, objectness, class probabilities from its own sigmoid or softmax),
so the members' predictions (bs, N_i, 5 + nc) are concatenated along N and NMS runs once over the union: YOLOv5's
"NMS ensemble". The members must predict the same number of classes; names come from the first member (a warning
names the files when they differ) and the stride is the largest member stride, as upstream. Only .pt files can be
members: exported formats carry fixed sizes and batches of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import torch
from torch import nn

from models.backend import DetectMultiBackend
from utils.errors import ConfigError
from utils.log import get_logger

Weights = Union[str, Path, Sequence[Union[str, Path]]]


def weights_list(weights: Weights) -> list[Path]:
    """One path or a sequence of paths as a list of Paths (a one-element list stands for a single model)."""
    items = [weights] if isinstance(weights, (str, Path)) else list(weights or [])
    if not items:
        raise ConfigError("--weights: no weights file given")
    return [Path(w) for w in items]


def _check_members(members: Sequence[DetectMultiBackend]) -> None:
    """ConfigError when members disagree on the class count; a warning when only their class names differ."""
    first = members[0]
    for m in members[1:]:
        if m.nc != first.nc:
            raise ConfigError(f"ensemble: {first.weights} predicts {first.nc} classes but {m.weights} predicts "
                              f"{m.nc}; the models of an ensemble must share their classes")
        if m.names != first.names:
            get_logger().warning(f"WARNING ensemble: {m.weights} names its classes differently from {first.weights}; "
                                 f"using {first.weights.name}'s names")


class Ensemble(nn.Module):
    """Several .pt models as one backend: ``ensemble(im) -> y`` concatenates the members' decoded predictions.

    Offers DetectMultiBackend's interface (``stride``, ``names``, ``nc``, ``class_act``, ``dynamic``, ``imgsz``,
    ``batch``, ``fp16``, ``device``, ``engine``, ``warmup``, ``input_size``, ``check_augment``), so val.py, detect.py
    and AutoShape use it unchanged. ``class_act`` is 'softmax' only when every member is softmax (one label per box
    in detect.py); a member's own activation is already applied to its scores either way.
    """

    pt, jit, onnx, openvino, dnn, dynamic, imgsz, batch = True, False, False, False, False, True, None, 1

    def __init__(self, members: Sequence[DetectMultiBackend]):
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"ensemble: needs at least 2 models, got {len(members)}")
        _check_members(members)
        self.members = nn.ModuleList(members)
        first = members[0]
        self.weights = [m.weights for m in members]
        self.device, self.fp16, self.nc, self.names = first.device, first.fp16, first.nc, dict(first.names)
        self.stride = max(m.stride for m in members)
        self.class_act = "softmax" if all(m.class_act == "softmax" for m in members) else "sigmoid"
        engines = list(dict.fromkeys(m.engine for m in members))
        self.engine = "+".join(engines)

    def describe(self) -> str:
        """'Ensemble of 2 models: a.pt, b.pt', for log lines and results."""
        return f"Ensemble of {len(self.members)} models: {', '.join(str(w) for w in self.weights)}"

    def forward(self, im: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """im (bs, 3, h, w) in [0, 1] -> (bs, sum of the members' N, 5 + nc); ``augment`` runs TTA in each member."""
        return torch.cat([m(im, augment=augment) for m in self.members], 1)

    def check_augment(self) -> None:
        """ConfigError unless every member can run test-time augmentation."""
        for m in self.members:
            m.check_augment()

    def warmup(self, imgsz: Sequence[int] = (1, 3, 640, 640), runs: int = 1) -> None:
        """Run zero images through every member."""
        for m in self.members:
            m.warmup(imgsz, runs)

    def input_size(self, imgsz: Sequence[int]) -> list[int]:
        """The [h, w] to feed: imgsz itself (every member is a .pt model, which takes any size)."""
        return list(imgsz) * 2 if len(imgsz) == 1 else list(imgsz)


def load_backend(weights: Weights, device: Union[str, torch.device] = "cpu", fp16: bool = False,
                 engine: str = "auto", dnn: bool = False) -> Union[DetectMultiBackend, Ensemble]:
    """A DetectMultiBackend for one weights path, an Ensemble of .pt models for several (ConfigError for others)."""
    paths = weights_list(weights)
    if len(paths) == 1:
        return DetectMultiBackend(paths[0], device=device, fp16=fp16, engine=engine, dnn=dnn)
    for w in paths:
        if w.suffix.lower() != ".pt":
            raise ConfigError(f"weights {w}: an ensemble (several --weights) takes .pt files only; validate or run "
                              "an exported model on its own")
    members = [DetectMultiBackend(w, device=device, fp16=fp16, engine=engine, dnn=dnn) for w in paths]
    ensemble = Ensemble(members)
    get_logger().info(f"{ensemble.describe()} (engine {ensemble.engine}, stride {ensemble.stride}, "
                      f"{ensemble.nc} classes, names from {paths[0].name}); NMS runs over all their predictions")
    return ensemble
