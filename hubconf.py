"""torch.hub entry points, offline: ``torch.hub.load('.', 'custom', path='best.pt', source='local')``.

    model = torch.hub.load(".", "custom", path="runs/train/exp/weights/best.pt", source="local")  # .pt/.onnx/...
    model = torch.hub.load(".", "yolov5n", pretrained=False, classes=3, source="local")          # untrained
    results = model(["data/images/shapes1.jpg", rgb_array, pil_image], size=320)
    results.print(); results.pandas().xyxy[0]; results.save(); results.crop()

Nothing is ever downloaded: ``pretrained=True`` looks for ``<name>.pt`` in the working folder and the project root.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # torch.hub imports this file from its folder
    sys.path.insert(0, str(ROOT))

dependencies = ["torch", "torchvision", "numpy", "cv2", "yaml"]


def custom(path: str | Path | list = "yolov5s.pt", autoshape: bool = True, device: str = "cpu",
           _verbose: bool = True):
    """A model from a local weights file (.pt, .torchscript, .onnx), or a list of .pt files as one ensemble, wrapped
    to take images (autoshape)."""
    from models.ensemble import load_backend
    from utils.deploy.autoshape import AutoShape

    backend = load_backend(path, device=device)
    return AutoShape(backend) if autoshape else backend


def _create(name: str, pretrained: bool, channels: int, classes: int, autoshape: bool, device: str):
    """A YOLOv5 model by name: the local <name>.pt when pretrained, else an untrained one from models/<name>.yaml."""
    from models.yolo import DetectionModel
    from utils.deploy.autoshape import AutoShape
    from utils.errors import CheckpointError

    if pretrained:
        folders = list(dict.fromkeys((Path.cwd().resolve(), ROOT)))  # the working folder, then the project's
        found = [f / f"{name}.pt" for f in folders if (f / f"{name}.pt").is_file()]
        if not found:
            raise CheckpointError(f"{name}.pt: not found in {' or '.join(map(str, folders))}; this project never "
                                  "downloads weights: copy the file there, or use 'custom' with path=...")
        return custom(found[0], autoshape, device)
    model = DetectionModel(ROOT / "models" / f"{name}.yaml", ch=channels, nc=classes).to(device)
    model.names = {i: f"class{i}" for i in range(classes)}
    return AutoShape(model) if autoshape else model


def _named(name: str, size: str):
    """The torch.hub entry point of one YOLOv5 size: ``name(pretrained, channels, classes, autoshape, device)``."""

    def entry(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
              device: str = "cpu"):
        return _create(name, pretrained, channels, classes, autoshape, device)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"YOLOv5-{size}: the local {name}.pt when pretrained, else untrained from models/{name}.yaml."
    return entry


yolov5n = _named("yolov5n", "nano")
yolov5s = _named("yolov5s", "small")
yolov5m = _named("yolov5m", "medium")
yolov5l = _named("yolov5l", "large")
yolov5x = _named("yolov5x", "xlarge")
