"""torchvision's compiled NMS kernel, loaded without importing the torchvision Python package.

``import torchvision`` imports ``torchvision.ops.roi_align``, which imports ``torch._dynamo``: 2.3 s of every val.py
and detect.py start (docs/PERFORMANCE.md), for one kernel. So this module loads torchvision's own extension library
(``torchvision/_C.so``, ``_C_stable.so`` since 0.29) with ``torch.ops.load_library``, as torchvision itself does, and
calls the registered ``torch.ops.torchvision.nms`` operator: the same C++ kernel ``torchvision.ops.nms`` runs. If
the library cannot be found or loaded, it falls back to ``import torchvision``. Where torchvision is already
imported, nothing is loaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

PER_GROUP_ABOVE = 1000  # boxes; torchvision switches at the same size (4,000 coordinates)


def _nms_registered() -> bool:
    """True once the torchvision::nms operator is known to torch's dispatcher."""
    try:
        torch.ops.torchvision.nms  # noqa: B018 (attribute lookup raises until the library is loaded)
        return True
    except (AttributeError, RuntimeError):
        return False


def load_kernels() -> None:
    """Register torchvision's operators: its _C library directly, else by importing torchvision."""
    if _nms_registered():
        return
    spec = importlib.util.find_spec("torchvision")
    folders = list(spec.submodule_search_locations or []) if spec else []
    libs = [lib for folder in folders for stem in ("_C", "_C_stable") for lib in sorted(Path(folder).glob(f"{stem}.*"))
            if lib.suffix in (".so", ".pyd")]
    if libs:
        try:
            torch.ops.load_library(str(libs[0]))
        except OSError:
            pass
    if not _nms_registered():
        import torchvision  # noqa: F401 (registers the operators)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """Indices of the xyxy boxes kept by greedy NMS (IoU > iou_thres suppressed), by decreasing score."""
    load_kernels()
    return torch.ops.torchvision.nms(boxes, scores, iou_thres)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """NMS within each group (class) -> kept indices by decreasing score, as ``torchvision.ops.batched_nms``.

    Up to ``PER_GROUP_ABOVE`` boxes, one NMS call on boxes shifted by group * (max coordinate + 1), so that groups
    never overlap; above it, one call per group, which is faster on a CPU since NMS is quadratic in the boxes.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if len(boxes) <= PER_GROUP_ABOVE:
        offsets = groups.to(boxes) * (boxes.max() + 1)
        return nms(boxes + offsets[:, None], scores, iou_thres)
    kept = [idx[nms(boxes[idx], scores[idx], iou_thres)]
            for idx in (torch.where(groups == g)[0] for g in torch.unique(groups))]
    kept = torch.cat(kept)
    return kept[scores[kept].argsort(descending=True, stable=True)]
