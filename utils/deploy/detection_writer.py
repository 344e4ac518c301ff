"""What detect.py saves for each image or video frame: annotated images and .mp4 videos, YOLO txt labels,
predictions.csv rows and crops (``ResultWriter``), plus the one-line summary of an image's detections (``describe``).

Detections are (n, 6) tensors x1, y1, x2, y2, conf, cls in original-image pixels (after ``scale_boxes``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from utils.boxes import clip_boxes, xyxy2xywh, xyxy2xywhn
from utils.paths import increment_path
from utils.plots import Annotator, colors


def describe(det: torch.Tensor, names: dict) -> str:
    """'4 persons, 1 bus, ' from the class column of (n, 6) detections ('(no detections), ' when empty)."""
    if not len(det):
        return "(no detections), "
    out = ""
    for c in det[:, 5].unique():
        n = int((det[:, 5] == c).sum())
        out += f"{n} {names.get(int(c), int(c))}{'s' * (n > 1)}, "
    return out


def crop_box(xyxy: torch.Tensor, shape: tuple, gain: float = 1.02, pad: int = 10) -> tuple[int, int, int, int]:
    """The pixel box (x1, y1, x2, y2) of a crop around an xyxy box, enlarged by gain and pad, clipped to shape."""
    b = xyxy2xywh(torch.as_tensor(xyxy).view(-1, 4).float())
    b[:, 2:] = b[:, 2:] * gain + pad
    box = clip_boxes(torch.cat((b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2), 1), shape[:2]).long()[0]
    return int(box[0]), int(box[1]), int(box[2]), int(box[3])


def save_one_box(xyxy: torch.Tensor, im: np.ndarray, file: Path, gain: float = 1.02, pad: int = 10) -> Path:
    """Save the crop of a BGR image around an xyxy box (see ``crop_box``) to a new numbered file."""
    x1, y1, x2, y2 = crop_box(xyxy, im.shape, gain, pad)
    file = increment_path(file, sep="-")  # bus.jpg, bus-2.jpg, ... as upstream
    file.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(file), im[y1:y2, x1:x2])
    return file


class ResultWriter:
    """Writes what detect.py saves: annotated images and videos, YOLO txt labels, predictions.csv, crops."""

    def __init__(self, save_dir: Path, names: dict, save_img: bool, save_txt: bool, save_conf: bool, save_csv: bool,
                 save_crop: bool, line_thickness: int, hide_labels: bool, hide_conf: bool):
        self.save_dir, self.names = save_dir, names
        self.save_img, self.save_txt, self.save_conf = save_img, save_txt, save_conf
        self.save_csv, self.save_crop = save_csv, save_crop
        self.lw, self.hide_labels, self.hide_conf = line_thickness, hide_labels, hide_conf
        self.video_path, self.video_writer = None, None
        self.n_txt = 0
        if save_txt:
            (save_dir / "labels").mkdir(parents=True, exist_ok=True)

    def annotate(self, im0: np.ndarray, det: torch.Tensor) -> np.ndarray:
        """Draw (n, 6) detections in original-image pixels on a copy of im0."""
        annotator = Annotator(im0, line_width=self.lw)
        for *xyxy, conf, cls in det.tolist():
            c = int(cls)
            name = self.names.get(c, str(c))
            label = None if self.hide_labels else (name if self.hide_conf else f"{name} {conf:.2f}")
            annotator.box_label(xyxy, label, color=colors(c, True))
        return annotator.result()

    def write(self, path: str, im0: np.ndarray, det: torch.Tensor, mode: str, frame: int,
              cap: Optional[cv2.VideoCapture], annotated: Optional[np.ndarray]) -> None:
        """Save everything requested for one image or frame."""
        p = Path(path)
        stem = p.stem if mode == "image" else f"{safe_name(p.stem or path)}_{frame}"
        if self.save_txt and len(det):  # as YOLOv5: no label file for an image without detections
            self._write_txt(self.save_dir / "labels" / f"{stem}.txt", det, im0.shape)
        if self.save_csv:
            self._write_csv(p.name, frame, det)
        if self.save_crop:
            for *xyxy, _, cls in det:
                name = self.names.get(int(cls), str(int(cls)))
                save_one_box(torch.stack(xyxy), im0, self.save_dir / "crops" / name / f"{stem}.jpg")
        if self.save_img and annotated is not None:
            if mode == "image":
                cv2.imwrite(str(self.save_dir / p.name), annotated)
            else:
                self._write_frame(path, annotated, cap)

    def _write_txt(self, file: Path, det: torch.Tensor, shape: tuple) -> None:
        """One 'cls x y w h [conf]' line per detection, normalized xywh."""
        xywhn = xyxy2xywhn(det[:, :4].float(), w=shape[1], h=shape[0])
        with open(file, "w") as f:
            for b, (conf, cls) in zip(xywhn.tolist(), det[:, 4:6].tolist()):
                row = (int(cls), *b, conf) if self.save_conf else (int(cls), *b)
                f.write(" ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in row) + "\n")
        self.n_txt += 1

    def _write_csv(self, image: str, frame: int, det: torch.Tensor) -> None:
        """Append one row per detection to predictions.csv (header on first write): upstream YOLOv5's three columns
        (Image Name, Prediction, Confidence) by their names, then the frame and the box in pixels."""
        file = self.save_dir / "predictions.csv"
        new = not file.exists()
        with open(file, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["Image Name", "Prediction", "Confidence", "frame", "x1", "y1", "x2", "y2"])
            for *xyxy, conf, cls in det.tolist():
                w.writerow([image, self.names.get(int(cls), int(cls)), f"{conf:.4f}", frame,
                            *(f"{v:.1f}" for v in xyxy)])

    def _write_frame(self, path: str, im: np.ndarray, cap: Optional[cv2.VideoCapture]) -> None:
        """Append a frame to the .mp4 of its video (opened on the first frame at the source fps and size)."""
        if path != self.video_path:
            self.close()
            fps = (cap.get(cv2.CAP_PROP_FPS) if cap is not None else 0) or 30.0
            out = self.save_dir / f"{safe_name(Path(path).stem or path)}.mp4"
            h, w = im.shape[:2]
            self.video_path = path
            self.video_writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        self.video_writer.write(im)

    def close(self) -> None:
        """Finish the open video file, if any."""
        if self.video_writer is not None:
            self.video_writer.release()
        self.video_path, self.video_writer = None, None


def safe_name(text: str) -> str:
    """A file-name-safe version of a source name (stream URLs, webcam indices)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))
