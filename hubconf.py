"""torch.hub entry points, offline: ``torch.hub.load('.', 'custom', path='best.pt', source='local')``.

    model = torch.hub.load(".", "custom", path="runs/train/exp/weights/best.pt", source="local")  # .pt/.onnx/...
    model = torch.hub.load(".", "yolov5n", pretrained=False, classes=3, source="local")          # untrained
    results = model(["data/images/shapes1.jpg", rgb_array, pil_image], size=320)
    results.print(); results.pandas().xyxy[0]; results.save(); results.crop()

Nothing is ever downloaded: ``pretrained=True`` looks for ``<name>.pt`` in the working folder and the project root.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # torch.hub imports this file from its folder
    sys.path.insert(0, str(ROOT))

dependencies = ["torch", "torchvision", "numpy", "cv2", "yaml"]


def custom(path: str | Path | list = "yolov5s.pt", autoshape: bool = True, _verbose: bool = True,
           device: str | torch.device | None = None) -> torch.nn.Module:
    """A model from a local weights file (.pt, .torchscript, .onnx), or a list of .pt files as one ensemble, wrapped
    to take images (autoshape); device None picks CUDA when there is one, as upstream; _verbose False logs warnings
    only while loading."""
    from models.ensemble import load_backend
    from utils.deploy.autoshape import AutoShape

    with _quiet(not _verbose):
        backend = load_backend(path, device=device)
    return AutoShape(backend) if autoshape else backend


@contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """While loading, log warnings only (upstream's ``_verbose=False``)."""
    from utils.log import get_logger

    log = get_logger()
    level = log.level
    if quiet:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _transfer(name: str, weights: Path, channels: int, classes: int,
              device: str | torch.device | None) -> torch.nn.Module:
    """models/<name>.yaml with channels and classes, given every weight of the checkpoint whose name and shape fit
    (upstream's ``pretrained=True`` with other classes or channels; training's ``build_model``); names kept when the
    class count is the same."""
    from utils.torch_utils import select_device
    from utils.train.transfer import build_model

    model, ckpt = build_model(ROOT / "models" / f"{name}.yaml", weights, classes, select_device(device), ch=channels)
    names = getattr(ckpt.get("model") or ckpt.get("ema"), "names", None) or {}
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    model.names = names if len(names) == classes else {i: f"class{i}" for i in range(classes)}
    return model


def _create(name: str, pretrained: bool, channels: int, classes: int, autoshape: bool, verbose: bool,
            device: str | torch.device | None) -> torch.nn.Module:
    """A YOLOv5 model by name: the local <name>.pt when pretrained (its weights moved into a new model for other
    channels or classes), else an untrained one from models/<name>.yaml."""
    from models.yolo import DetectionModel
    from utils.deploy.autoshape import AutoShape
    from utils.errors import CheckpointError
    from utils.torch_utils import select_device

    if pretrained:
        folders = list(dict.fromkeys((Path.cwd().resolve(), ROOT)))  # the working folder, then the project's
        found = [f / f"{name}.pt" for f in folders if (f / f"{name}.pt").is_file()]
        if not found:
            raise CheckpointError(f"{name}.pt: not found in {' or '.join(map(str, folders))}; this project never "
                                  "downloads weights: copy the file there, or use 'custom' with path=...")
        if (channels, classes) == (3, 80):
            return custom(found[0], autoshape, verbose, device)
        with _quiet(not verbose):
            model = _transfer(name, found[0], channels, classes, device)
    else:
        model = DetectionModel(ROOT / "models" / f"{name}.yaml", ch=channels, nc=classes).to(select_device(device))
        model.names = {i: f"class{i}" for i in range(classes)}
    return AutoShape(model) if autoshape else model


def _named(name: str, size: str) -> Callable[..., torch.nn.Module]:
    """The torch.hub entry point of one YOLOv5 size: ``name(pretrained, channels, classes, autoshape, _verbose,
    device)``."""

    def entry(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
              _verbose: bool = True, device: str | torch.device | None = None) -> torch.nn.Module:
        return _create(name, pretrained, channels, classes, autoshape, _verbose, device)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"YOLOv5-{size}: the local {name}.pt when pretrained, else untrained from models/{name}.yaml."
    return entry


yolov5n = _named("yolov5n", "nano")
yolov5s = _named("yolov5s", "small")
yolov5m = _named("yolov5m", "medium")
yolov5l = _named("yolov5l", "large")
yolov5x = _named("yolov5x", "xlarge")
