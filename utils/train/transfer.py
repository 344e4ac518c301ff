"""Building the model to train: from a model YAML, or from a checkpoint with transfer learning, plus layer freezing
and the YOLOv5 scaling of loss gains to the model's levels, classes and image size."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.yolo import DetectionModel
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError
from utils.log import get_logger


def intersect_dicts(src: dict, dst: dict, exclude: tuple[str, ...] = ()) -> dict:
    """Entries of src whose key exists in dst with the same shape, skipping keys that contain an exclude string."""
    return {k: v for k, v in src.items()
            if k in dst and not any(x in k for x in exclude) and v.shape == dst[k].shape}


def build_model(cfg: str | Path | dict | None, weights: str | Path | None, nc: int, device: torch.device,
                anchors: int | None = None, resume: bool = False, ch: int = 3) -> tuple[DetectionModel, dict | None]:
    """Build a DetectionModel with nc classes (and ch input channels) from cfg, or from the checkpoint's own YAML when
    cfg is empty.

    With weights, every tensor whose name and shape match is copied from the checkpoint's ``model`` (the other class
    count's head layers are skipped); anchors are kept from the checkpoint unless cfg or hyp ``anchors`` defines new
    ones (always kept when resuming). Returns (model on device, the loaded checkpoint dict or None).
    """
    log = get_logger()
    if not weights:
        if not cfg:
            raise ConfigError("train: give a model config (--cfg yolov5n.yaml) or weights (--weights path/to.pt)")
        return DetectionModel(cfg, ch=ch, nc=nc, anchors=anchors).to(device), None
    ckpt = load_checkpoint(weights)
    src = ckpt["model"] if isinstance(ckpt.get("model"), nn.Module) else ckpt["ema"]
    yaml_cfg = cfg or getattr(src, "yaml", None)
    if not yaml_cfg:
        raise ConfigError(f"weights {weights}: the model has no YAML config inside; pass --cfg as well")
    model = DetectionModel(yaml_cfg, ch=ch, nc=nc, anchors=anchors).to(device)
    exclude = ("anchor",) if (cfg or anchors) and not resume else ()
    own = model.state_dict()
    csd = intersect_dicts(src.float().state_dict(), own, exclude)
    model.load_state_dict(csd, strict=False)
    log.info(f"Transferred {len(csd)}/{len(own)} items from {weights}")
    return model, ckpt


def freeze_layers(model: nn.Module, freeze: list[int] | tuple[int, ...]) -> list[str]:
    """Freeze layers: one number N freezes layers 0..N-1, several numbers freeze those layers; returns frozen names.

    ``--freeze 10`` freezes the YOLOv5 backbone, ``--freeze 0`` (default) nothing.
    """
    layers = list(freeze) if len(freeze) > 1 else list(range(freeze[0] if freeze else 0))
    prefixes = tuple(f"model.{i}." for i in layers)
    frozen = []
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(prefixes))
        if not p.requires_grad:
            frozen.append(name)
    if frozen and len(frozen) == len(list(model.parameters())):
        n = len(getattr(model, "model", []))
        backbone = len((getattr(model, "yaml", None) or {}).get("backbone") or []) or 10
        raise ConfigError(f"--freeze {' '.join(map(str, freeze))} freezes every layer of this {n}-layer model, so "
                          f"nothing would train; freeze fewer (--freeze {backbone} is this model's backbone)")
    if frozen:
        get_logger().info(f"Froze {len(frozen)} parameter tensors in layers {layers}")
    return frozen


def scale_loss_gains(hyp: dict, nl: int, nc: int, imgsz: int, label_smoothing: float | None = None) -> dict:
    """YOLOv5's gain scaling: box (and box_l1) *= 3/nl, cls *= nc/80 * 3/nl, obj *= (imgsz/640)^2 * 3/nl; sets
    label_smoothing when given (else keeps the hyp's, 0.0 if it has none).

    The hyp files are tuned for 3 levels, 80 classes and 640 pixels. Returns a new dict.
    """
    h = dict(hyp)
    per_level = 3 / nl
    h["box"] = hyp["box"] * per_level
    h["box_l1"] = hyp.get("box_l1", 0.0) * per_level
    h["cls"] = hyp["cls"] * nc / 80 * per_level
    h["obj"] = hyp["obj"] * (imgsz / 640) ** 2 * per_level
    h["label_smoothing"] = hyp.get("label_smoothing", 0.0) if label_smoothing is None else label_smoothing
    return h
