"""The Python API behind ``torch.hub.load``: a model that takes images as they come and returns result tables.

``AutoShape(model)`` wraps a ``DetectMultiBackend`` (.pt, .torchscript, .onnx) or an in-memory ``DetectionModel``.
Call it with a file path, a numpy array (HWC, RGB as upstream documents: ``cv2.imread(f)[..., ::-1]``), a PIL image,
or a list of them; it letterboxes, runs the model, applies NMS (``conf``, ``iou``, ``classes``, ``agnostic``,
``multi_label``, ``max_det`` attributes, as upstream) and maps boxes back to each image. A (bs, 3, h, w) tensor
passes straight to the model (raw predictions, no NMS). Softmax (``ce``) models get one label per box. Nothing is
downloaded: a URL is an error.

``Detections`` holds the results: ``xyxy``, ``xywh``, ``xyxyn``, ``xywhn`` (lists of (n, 6) tensors: box, confidence,
class), ``pandas()`` (the same as DataFrames with named columns), ``print()``, ``render()``, ``save()``, ``crop()``.
"""

from __future__ import annotations

import time
from copy import copy
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from utils.boxes import scale_boxes, xyxy2xywh
from utils.data.augment import letterbox
from utils.deploy.detection_writer import save_one_box
from utils.errors import ConfigError
from utils.nms import non_max_suppression
from utils.paths import increment_path
from utils.plots import Annotator, colors

PANDAS_COLUMNS = {"xyxy": ["xmin", "ymin", "xmax", "ymax"], "xyxyn": ["xmin", "ymin", "xmax", "ymax"],
                  "xywh": ["xcenter", "ycenter", "width", "height"], "xywhn": ["xcenter", "ycenter", "width", "height"]}


def load_image(item: Any, index: int) -> tuple[np.ndarray, str]:
    """One input as an HWC uint8 RGB array and a file name for saving."""
    if isinstance(item, (str, Path)):
        text = str(item)
        if text.startswith(("http://", "https://")):
            raise ConfigError(f"{text}: this project never downloads; save the image and pass its local path")
        im = cv2.imread(text)
        if im is None:
            raise ConfigError(f"image {text}: file not found or not an image")
        return np.ascontiguousarray(im[..., ::-1]), Path(text).with_suffix(".jpg").name
    if hasattr(item, "convert") and hasattr(item, "size"):  # PIL image
        stem = Path(getattr(item, "filename", "") or f"image{index}").stem
        return np.asarray(item.convert("RGB")), f"{stem}.jpg"
    im = np.asarray(item)
    if im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=2)
    if im.ndim != 3 or im.shape[2] not in (3, 4):
        raise ConfigError(f"input {index}: expected an HWC image array with 3 channels, got shape {im.shape}")
    return to_uint8(np.ascontiguousarray(im[..., :3])), f"image{index}.jpg"


def to_uint8(im: np.ndarray) -> np.ndarray:
    """An image array as uint8 0-255: floats up to 1.5 are taken as [0, 1] (scikit-image, torchvision; a resize may
    overshoot 1 a little) and scaled, other floats as 0-255; full-range 16-bit integers keep their high byte."""
    if im.dtype == np.uint8:
        return im
    if np.issubdtype(im.dtype, np.floating):
        scale = 255.0 if im.size and float(np.nanmax(im)) <= 1.5 else 1.0
        return np.clip(np.rint(np.nan_to_num(im) * scale), 0, 255).astype(np.uint8)
    if im.dtype == np.uint16:
        return (im >> 8).astype(np.uint8)
    return np.clip(im, 0, 255).astype(np.uint8)


class AutoShape(nn.Module):
    """Images in, ``Detections`` out; NMS settings: attributes conf, iou, classes, agnostic, multi_label, max_det."""

    conf, iou, classes, agnostic, multi_label, max_det = 0.25, 0.45, None, False, False, 1000

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.names = dict(getattr(model, "names", {}) or {})
        self.stride = int(max(torch.as_tensor(getattr(model, "stride", 32)).flatten().tolist()))
        self.class_act = getattr(model, "class_act", "sigmoid")
        self.dynamic = getattr(model, "dynamic", True)

    def _device(self) -> torch.device:
        """Where the wrapped model runs (a backend without parameters, such as ONNX, names its own)."""
        params = list(self.model.parameters())
        return params[0].device if params else torch.device(getattr(self.model, "device", "cpu"))

    def _predict(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """Decoded predictions (bs, N, 5 + nc) of the wrapped model (test-time augmented when ``augment``)."""
        with torch.inference_mode():
            y = self.model(x, augment=True) if augment else self.model(x)
        return (y[0] if isinstance(y, (list, tuple)) else y).float()

    def _size(self, size: int | Sequence[int]) -> list[int]:
        """The input [h, w]: size rounded up to the stride, or what a fixed-size export needs."""
        hw = [int(size)] * 2 if isinstance(size, (int, float)) else [int(s) for s in size]
        if hasattr(self.model, "input_size"):
            hw = self.model.input_size(hw)
        return [int(np.ceil(s / self.stride) * self.stride) for s in hw]

    def forward(self, ims: Any, size: int | Sequence[int] = 640, augment: bool = False) -> Any:
        """Detect on one image or a list; a (bs, 3, h, w) tensor gives the raw model output instead."""
        if isinstance(ims, torch.Tensor):
            return self._predict(ims.to(self._device()), augment)
        t0 = time.perf_counter()
        items = list(ims) if isinstance(ims, (list, tuple)) else [ims]
        if not items:
            raise ConfigError("model(ims): an empty list, no image to detect on")
        loaded = [load_image(x, i) for i, x in enumerate(items)]
        hw = self._size(size)
        batch = np.stack([letterbox(im, hw, auto=False, stride=self.stride)[0] for im, _ in loaded])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0  # RGB in, as the model was trained
        t1 = time.perf_counter()
        y = self._predict(x.to(self._device()), augment)
        t2 = time.perf_counter()
        pred = non_max_suppression(y, self.conf, self.iou, self.classes, self.agnostic, self.multi_label,
                                   max_det=self.max_det, exclusive=self.class_act == "softmax")
        for det, (im, _) in zip(pred, loaded):
            scale_boxes(hw, det[:, :4], im.shape[:2])
        t3 = time.perf_counter()
        times = tuple(1e3 * dt / len(loaded) for dt in (t1 - t0, t2 - t1, t3 - t2))
        return Detections([im for im, _ in loaded], [d.cpu() for d in pred], [f for _, f in loaded], times,
                          self.names, tuple(x.shape))


class Detections:
    """Detections of a batch: ims (RGB arrays), pred (list of (n, 6) xyxy, conf, cls in image pixels), files."""

    def __init__(self, ims: list[np.ndarray], pred: list[torch.Tensor], files: list[str], times: tuple,
                 names: dict, shape: tuple):
        self.ims, self.pred, self.files, self.times, self.names, self.s = ims, pred, files, times, names, shape
        gains = [torch.tensor([im.shape[1], im.shape[0], im.shape[1], im.shape[0], 1.0, 1.0]) for im in ims]
        self.xyxy = pred
        self.xywh = [torch.cat((xyxy2xywh(p[:, :4]), p[:, 4:]), 1) for p in pred]
        self.xyxyn = [p / g for p, g in zip(self.xyxy, gains)]
        self.xywhn = [p / g for p, g in zip(self.xywh, gains)]
        self.n = len(pred)

    def __len__(self) -> int:
        """Number of images."""
        return self.n

    def pandas(self) -> Detections:
        """A copy whose xyxy, xywh, xyxyn, xywhn are lists of DataFrames (box columns, confidence, class, name)."""
        import pandas as pd

        new = copy(self)
        for key, box_cols in PANDAS_COLUMNS.items():
            frames = []
            for p in getattr(self, key):
                rows = [[*r[:5], int(r[5]), self.names.get(int(r[5]), str(int(r[5])))] for r in p.tolist()]
                frames.append(pd.DataFrame(rows, columns=[*box_cols, "confidence", "class", "name"]))
            setattr(new, key, frames)
        return new

    def summary(self) -> str:
        """One line per image ('image 1/2: 480x640 2 persons, 1 tie') and the speed line."""
        lines = []
        for i, (im, p) in enumerate(zip(self.ims, self.pred)):
            found = ", ".join(f"{int((p[:, 5] == c).sum())} {self.names.get(int(c), str(int(c)))}"
                              for c in p[:, 5].unique()) or "(no detections)"
            lines.append(f"image {i + 1}/{self.n}: {im.shape[0]}x{im.shape[1]} {found}")
        pre, inf, nms = self.times
        lines.append(f"Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image at shape "
                     f"{self.s}")
        return "\n".join(lines)

    def print(self) -> None:
        """Print the summary."""
        print(self.summary())

    def __str__(self) -> str:
        """The summary."""
        return self.summary()

    def render(self, labels: bool = True) -> list[np.ndarray]:
        """Annotated copies of the images (RGB)."""
        out = []
        for im, p in zip(self.ims, self.pred):
            ann = Annotator(im)
            for *box, conf, cls in p.tolist():
                name = self.names.get(int(cls), str(int(cls)))
                ann.box_label(box, f"{name} {conf:.2f}" if labels else "", color=colors(int(cls)))
            out.append(ann.result())
        return out

    def show(self, labels: bool = True) -> None:
        """Open each annotated image in the system's image viewer (PIL ``Image.show``)."""
        from PIL import Image

        for im in self.render(labels):
            Image.fromarray(im).show()

    def tolist(self) -> list[Detections]:
        """One Detections per image, as upstream's ``results.tolist()``."""
        return [Detections([im], [p], [f], self.times, self.names, (1, *self.s[1:]))
                for im, p, f in zip(self.ims, self.pred, self.files)]

    def save(self, labels: bool = True, save_dir: str | Path = "runs/detect/exp", exist_ok: bool = False) -> Path:
        """Write the annotated images into save_dir (numbered like runs); returns the folder."""
        folder = increment_path(save_dir, exist_ok=exist_ok, mkdir=True)
        for im, f in zip(self.render(labels), self.files):
            cv2.imwrite(str(folder / f), im[..., ::-1])
        return folder

    def crop(self, save: bool = True, save_dir: str | Path = "runs/detect/exp", exist_ok: bool = False) -> list[dict]:
        """Every detection as a dict (box, conf, cls, label, im: the RGB crop); saved under save_dir/crops/<class>/."""
        folder = increment_path(save_dir, exist_ok=exist_ok, mkdir=save) if save else None
        crops = []
        for im, p, f in zip(self.ims, self.pred, self.files):
            bgr = np.ascontiguousarray(im[..., ::-1])
            for *box, conf, cls in p.tolist():
                name = self.names.get(int(cls), str(int(cls)))
                xyxy = torch.tensor(box)
                file = save_one_box(xyxy, bgr, folder / "crops" / name / f) if save else None
                x1, y1, x2, y2 = (int(round(v)) for v in box)
                crops.append({"box": box, "conf": conf, "cls": int(cls), "label": f"{name} {conf:.2f}",
                              "im": im[max(y1, 0):y2, max(x1, 0):x2], "file": file})
        return crops
