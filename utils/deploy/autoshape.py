"""The Python API behind ``torch.hub.load``: a model that takes images as they come and returns result tables.

``AutoShape(model)`` wraps a ``DetectMultiBackend`` (.pt, .torchscript, .onnx) or an in-memory ``DetectionModel``.
Call it with a file path, a numpy array (HWC or CHW, RGB as upstream documents: ``cv2.imread(f)[..., ::-1]``), a PIL
image, or a list of them; it letterboxes, runs the model, applies NMS (``conf``, ``iou``, ``classes``, ``agnostic``,
``multi_label``, ``max_det`` attributes, as upstream) and maps boxes back to each image. As upstream, a batch runs at
the smallest stride-multiple shape that holds every image scaled to ``size`` (bus.jpg at 640: 640x480), and ``amp``
runs CUDA inference under autocast. A (bs, 3, h, w) tensor passes straight to the model (raw predictions, no NMS).
Softmax (``ce``) models get one label per box. Nothing is downloaded: a URL is an error.

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
from utils.deploy.detection_writer import crop_box, describe, save_one_box
from utils.errors import ConfigError
from utils.log import get_logger
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
        from PIL import ImageOps

        stem = Path(getattr(item, "filename", "") or f"image{index}").stem
        return np.asarray(ImageOps.exif_transpose(item).convert("RGB")), f"{stem}.jpg"
    im = np.asarray(item)
    if im.ndim == 3 and im.shape[0] in (1, 3, 4) and im.shape[2] not in (1, 3, 4):  # CHW, as a dataloader gives
        im = im.transpose(1, 2, 0)
    if im.ndim == 3 and im.shape[2] == 1:
        im = im[..., 0]
    if im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=2)
    if im.ndim != 3 or im.shape[2] not in (3, 4):
        raise ConfigError(f"input {index}: expected an HWC (or CHW) image array with 1, 3 or 4 channels, got shape "
                          f"{im.shape}")
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


def inference_shape(shapes: Sequence[Sequence[int]], size: Sequence[int], stride: int) -> list[int]:
    """The batch's [h, w] as upstream: each image (h, w) scaled to fit size, the largest over the batch, rounded up to
    the stride (bus.jpg, 1080x810, at 640: [640, 480])."""
    fits = [[int(h * min(size[0] / h, size[1] / w)), int(w * min(size[0] / h, size[1] / w))] for h, w in shapes]
    return [int(np.ceil(s / stride) * stride) for s in np.max(fits, 0)]


class AutoShape(nn.Module):
    """Images in, ``Detections`` out; settings: attributes conf, iou, classes, agnostic, multi_label, max_det (NMS) and
    amp (autocast on CUDA)."""

    conf, iou, classes, agnostic, multi_label, max_det, amp = 0.25, 0.45, None, False, False, 1000, False

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
        cuda_amp = bool(self.amp) and x.device.type == "cuda"
        with torch.inference_mode(), torch.autocast(x.device.type, enabled=cuda_amp):
            y = self.model(x, augment=True) if augment else self.model(x)
        return (y[0] if isinstance(y, (list, tuple)) else y).float()

    def _shape(self, size: int | Sequence[int], shapes: list[tuple[int, ...]]) -> list[int]:
        """The batch's input [h, w] for size (int: the longest side; (h, w): the box each image must fit in): see
        ``inference_shape``; a fixed-size export takes its own size."""
        hw = [int(s) for s in (size if isinstance(size, (list, tuple)) else [size])]
        hw = hw * 2 if len(hw) == 1 else hw
        if not self.dynamic and hasattr(self.model, "input_size"):
            return [int(np.ceil(s / self.stride) * self.stride) for s in self.model.input_size(hw)]
        return inference_shape(shapes, hw, self.stride)

    def forward(self, ims: Any, size: int | Sequence[int] = 640, augment: bool = False) -> Any:
        """Detect on one image or a list; a (bs, 3, h, w) tensor gives the raw model output instead."""
        if isinstance(ims, torch.Tensor):
            return self._predict(ims.to(self._device()), augment)
        t0 = time.perf_counter()
        items = list(ims) if isinstance(ims, (list, tuple)) else [ims]
        if not items:
            raise ConfigError("model(ims): an empty list, no image to detect on")
        loaded = [load_image(x, i) for i, x in enumerate(items)]
        hw = self._shape(size, [im.shape[:2] for im, _ in loaded])
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
    """Detections of a batch: ims (RGB arrays; annotated once ``render`` ran), pred (list of (n, 6) xyxy, conf, cls in
    image pixels), files, names, s (the input shape), t (pre-process, inference, NMS ms per image)."""

    def __init__(self, ims: list[np.ndarray], pred: list[torch.Tensor], files: list[str], times: tuple,
                 names: dict, shape: tuple):
        self.ims, self.pred, self.files, self.names, self.s = list(ims), pred, files, names, tuple(shape)
        self.originals = list(ims)  # what save, crop and render draw from, whatever render did to ims
        self.times = self.t = tuple(times)
        gains = [torch.tensor([im.shape[1], im.shape[0], im.shape[1], im.shape[0], 1.0, 1.0]) for im in ims]
        self.xyxy = pred
        self.xywh = [torch.cat((xyxy2xywh(p[:, :4]), p[:, 4:]), 1) for p in pred]
        self.xyxyn = [p / g for p, g in zip(self.xyxy, gains)]
        self.xywhn = [p / g for p, g in zip(self.xywh, gains)]
        self.n = len(pred)

    def __len__(self) -> int:
        """Number of images."""
        return self.n

    def _name(self, cls: float | torch.Tensor) -> str:
        """The name of a class index (the index itself when the model has no name for it)."""
        return self.names.get(int(cls), str(int(cls)))

    def pandas(self) -> Detections:
        """A copy whose xyxy, xywh, xyxyn, xywhn are lists of DataFrames (box columns, confidence, class, name)."""
        import pandas as pd

        new = copy(self)
        for key, box_cols in PANDAS_COLUMNS.items():
            frames = []
            for p in getattr(self, key):
                rows = [[*r[:5], int(r[5]), self._name(r[5])] for r in p.tolist()]
                frames.append(pd.DataFrame(rows, columns=[*box_cols, "confidence", "class", "name"]))
            setattr(new, key, frames)
        return new

    def summary(self) -> str:
        """One line per image ('image 1/2: 480x640 2 persons, 1 tie') and the speed line."""
        lines = [f"image {i + 1}/{self.n}: {im.shape[0]}x{im.shape[1]} {describe(p, self.names)[:-2]}"
                 for i, (im, p) in enumerate(zip(self.originals, self.pred))]
        pre, inf, nms = self.t
        lines.append(f"Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image at shape "
                     f"{self.s}")
        return "\n".join(lines)

    def print(self) -> None:
        """Print the summary."""
        print(self.summary())

    def __str__(self) -> str:
        """The summary."""
        return self.summary()

    def __repr__(self) -> str:
        """The class and image count over the summary (what a notebook shows for ``results``)."""
        return f"{type(self).__name__}: {self.n} image{'s' * (self.n > 1)}\n{self.summary()}"

    def _annotated(self, labels: bool) -> list[np.ndarray]:
        """Annotated copies of the original images (RGB)."""
        out = []
        for im, p in zip(self.originals, self.pred):
            ann = Annotator(im)
            for *box, conf, cls in p.tolist():
                ann.box_label(box, f"{self._name(cls)} {conf:.2f}" if labels else "", color=colors(int(cls)))
            out.append(ann.result())
        return out

    def render(self, labels: bool = True) -> list[np.ndarray]:
        """Draw the boxes: ``ims`` becomes the annotated images (RGB), as upstream, and is returned; the originals
        stay in ``originals``, so a second render or a later save or crop does not draw twice."""
        self.ims[:] = self._annotated(labels)
        return self.ims

    def show(self, labels: bool = True) -> None:
        """Open each annotated image in the system's image viewer (PIL ``Image.show``)."""
        from PIL import Image

        for im, f in zip(self._annotated(labels), self.files):
            Image.fromarray(im).show(title=f)

    def tolist(self) -> list[Detections]:
        """One Detections per image, as upstream's ``results.tolist()``."""
        return [Detections([im], [p], [f], self.t, self.names, (1, *self.s[1:]))
                for im, p, f in zip(self.originals, self.pred, self.files)]

    def save(self, labels: bool = True, save_dir: str | Path = "runs/detect/exp", exist_ok: bool = False) -> Path:
        """Write the annotated images into save_dir (numbered like runs: exp, exp2, ...); returns the folder."""
        folder = increment_path(save_dir, exist_ok=exist_ok, mkdir=True)
        for im, f in zip(self._annotated(labels), self.files):
            cv2.imwrite(str(folder / f), im[..., ::-1])
        get_logger().info(f"{self.n} annotated image{'s' * (self.n > 1)} saved to {folder}")
        return folder

    def crop(self, save: bool = True, save_dir: str | Path = "runs/detect/exp", exist_ok: bool = False) -> list[dict]:
        """Every detection, best first per image, as a dict as upstream's: box (four 0-d tensors, xyxy), conf, cls
        (0-d tensors), label, im (the RGB crop, enlarged as the saved file: 2 % and 10 px), plus file (the saved crop,
        save_dir/crops/<class>/<image>.jpg, -2, -3 ... for more; None when not saved)."""
        folder = increment_path(save_dir, exist_ok=exist_ok, mkdir=True) if save else None
        crops = []
        for im, p, f in zip(self.originals, self.pred, self.files):
            bgr = np.ascontiguousarray(im[..., ::-1]) if save else None
            for row in p:
                name = self._name(row[5])
                x1, y1, x2, y2 = crop_box(row[:4], im.shape)
                file = save_one_box(row[:4], bgr, folder / "crops" / name / f) if save else None
                crops.append({"box": list(row[:4]), "conf": row[4], "cls": row[5], "label": f"{name} {row[4]:.2f}",
                              "im": im[y1:y2, x1:x2], "file": file})
        return crops
