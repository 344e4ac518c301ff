"""Run detection on images, folders, globs, .txt lists, videos and webcams with .pt, .torchscript or .onnx weights.

Usage - sources:
    python detect.py --weights best.pt --source img.jpg        # image
                                                vid.mp4        # video
                                                path/          # folder
                                                'path/*.jpg'   # glob
                                                list.txt       # list of paths, one per line
                                                0              # webcam
Usage - formats:
    python detect.py --weights best.pt | best.torchscript | best.onnx

Results go to runs/detect/exp*: annotated images and .mp4 videos, labels/*.txt (--save-txt), predictions.csv
(--save-csv) and crops/<class>/ (--save-crop).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

from models.backend import DetectMultiBackend
from utils.boxes import clip_boxes, scale_boxes, xyxy2xywh, xyxy2xywhn
from utils.data_config import find_data_yaml, load_yaml, normalise_names
from utils.errors import CheckpointError, ConfigError, SlideYoloError
from utils.log import colorstr, get_logger
from utils.nms import non_max_suppression
from utils.paths import ROOT, increment_path
from utils.plots import Annotator, colors
from utils.sources import load_source

DEFAULT_WEIGHTS = "yolov5s.pt"  # YOLOv5's default name; never downloaded, so it must exist locally
DEFAULT_SOURCE = ROOT / "data" / "images"


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (YOLOv5 names and defaults)."""
    p = argparse.ArgumentParser(description="Detect objects in images, videos and streams")
    p.add_argument("--weights", type=str, default=DEFAULT_WEIGHTS, help="model path (.pt, .torchscript, .onnx)")
    p.add_argument("--source", type=str, default=str(DEFAULT_SOURCE), help="file/dir/glob/.txt/video, 0=webcam")
    p.add_argument("--data", type=str, default=None, help="optional data YAML whose names replace the model's")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference size h,w")
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu (default: cuda if available)")
    p.add_argument("--view-img", action="store_true", help="show results in a window")
    p.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt (YOLO format)")
    p.add_argument("--save-csv", action="store_true", help="save results to predictions.csv")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes")
    p.add_argument("--nosave", action="store_true", help="do not save images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--project", default=str(ROOT / "runs" / "detect"), help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    p.add_argument("--hide-labels", action="store_true", help="hide labels")
    p.add_argument("--hide-conf", action="store_true", help="hide confidences")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    p.add_argument("--vid-stride", type=int, default=1, help="video frame-rate stride")
    opt = p.parse_args(argv)
    opt.imgsz = opt.imgsz * 2 if len(opt.imgsz) == 1 else opt.imgsz
    return opt


def check_img_size(imgsz: Sequence[int], stride: int) -> list[int]:
    """Round each size up to a multiple of stride, warning when it changes."""
    imgsz = list(imgsz) * 2 if len(imgsz) == 1 else list(imgsz)
    new = [max(int(np.ceil(s / stride)) * stride, stride) for s in imgsz]
    if new != imgsz:
        get_logger().warning(f"WARNING --imgsz {imgsz} must be a multiple of stride {stride}, using {new}")
    return new


def describe(det: torch.Tensor, names: dict) -> str:
    """'4 persons, 1 bus, ' from the class column of (n, 6) detections ('(no detections), ' when empty)."""
    if not len(det):
        return "(no detections), "
    out = ""
    for c in det[:, 5].unique():
        n = int((det[:, 5] == c).sum())
        out += f"{n} {names.get(int(c), int(c))}{'s' * (n > 1)}, "
    return out


def save_one_box(xyxy: torch.Tensor, im: np.ndarray, file: Path, gain: float = 1.02, pad: int = 10) -> Path:
    """Save the crop of a BGR image around an xyxy box, enlarged by gain and pad pixels, to a new numbered file."""
    b = xyxy2xywh(xyxy.view(-1, 4).float())
    b[:, 2:] = b[:, 2:] * gain + pad
    box = clip_boxes(torch.cat((b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2), 1), im.shape[:2]).long()[0]
    file = increment_path(file, sep="_")  # bus.jpg, bus_2.jpg, ...
    file.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(file), im[int(box[1]):int(box[3]), int(box[0]):int(box[2])])
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
        stem = p.stem if mode == "image" else f"{_safe_name(p.stem or path)}_{frame}"
        if self.save_txt:
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
        """Append one row per detection to predictions.csv (header on first write)."""
        file = self.save_dir / "predictions.csv"
        new = not file.exists()
        with open(file, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["image", "frame", "class", "confidence", "x1", "y1", "x2", "y2"])
            for *xyxy, conf, cls in det.tolist():
                w.writerow([image, frame, self.names.get(int(cls), int(cls)), f"{conf:.4f}",
                            *(f"{v:.1f}" for v in xyxy)])

    def _write_frame(self, path: str, im: np.ndarray, cap: Optional[cv2.VideoCapture]) -> None:
        """Append a frame to the .mp4 of its video (opened on the first frame at the source fps and size)."""
        if path != self.video_path:
            self.close()
            fps = (cap.get(cv2.CAP_PROP_FPS) if cap is not None else 0) or 30.0
            out = self.save_dir / f"{_safe_name(Path(path).stem or path)}.mp4"
            h, w = im.shape[:2]
            self.video_path = path
            self.video_writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        self.video_writer.write(im)

    def close(self) -> None:
        """Finish the open video file, if any."""
        if self.video_writer is not None:
            self.video_writer.release()
        self.video_path, self.video_writer = None, None


def _safe_name(text: str) -> str:
    """A file-name-safe version of a source name (stream URLs, webcam indices)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))


def _show(window: str, im: np.ndarray) -> bool:
    """Show an image in a window; False (after a warning) when this OpenCV build has no GUI."""
    try:
        cv2.imshow(window, im)
        cv2.waitKey(1)
        return True
    except cv2.error:
        get_logger().warning("WARNING --view-img: this OpenCV build cannot open windows (headless); not showing")
        return False


def _sync(device: torch.device) -> float:
    """perf_counter after waiting for queued CUDA work, so timings cover the GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _load_backend(weights: Union[str, Path], device: str, half: bool, data: Optional[str]) -> DetectMultiBackend:
    """Open the weights (CheckpointError telling the user to pass --weights if missing) and apply --data names."""
    if not Path(weights).exists():
        raise CheckpointError(f"weights {weights}: file not found. Nothing is downloaded: pass --weights with a local "
                              ".pt, .torchscript or .onnx file (e.g. runs/train/exp/weights/best.pt)")
    backend = DetectMultiBackend(weights, device=device or "", fp16=half)
    if data:
        yaml_file = find_data_yaml(data)
        names = normalise_names(load_yaml(yaml_file), str(yaml_file))
        if backend.nc and len(names) != backend.nc:
            raise ConfigError(f"{yaml_file}: {len(names)} names but the model {weights} has {backend.nc} classes")
        backend.names = names
    return backend


def run(weights: Union[str, Path] = DEFAULT_WEIGHTS, source: Union[str, Path, Sequence] = DEFAULT_SOURCE,
        data: Optional[str] = None, imgsz: Sequence[int] = (640, 640), conf_thres: float = 0.25,
        iou_thres: float = 0.45, max_det: int = 1000, device: str = "", view_img: bool = False, save_txt: bool = False,
        save_csv: bool = False, save_conf: bool = False, save_crop: bool = False, nosave: bool = False,
        classes: Optional[Sequence[int]] = None, agnostic_nms: bool = False,
        project: Union[str, Path] = ROOT / "runs" / "detect", name: str = "exp", exist_ok: bool = False,
        line_thickness: int = 3, hide_labels: bool = False, hide_conf: bool = False, half: bool = False,
        vid_stride: int = 1) -> dict:
    """Detect on source and save results; returns {'save_dir': Path, 'predictions': [...], 'speed': (pre, inf, nms)}.

    Each prediction is {'path': str, 'frame': int (0 for images), 'det': (n, 6) float tensor on CPU with
    x1, y1, x2, y2 in original-image pixels, conf, cls}. 'speed' is the mean ms per image of each stage.
    """
    log = get_logger()
    backend = _load_backend(weights, device, half, data)
    imgsz = backend.input_size(check_img_size(imgsz, backend.stride))
    dataset = load_source(source, imgsz, backend.stride, auto=backend.dynamic, vid_stride=vid_stride)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    writer = ResultWriter(save_dir, backend.names, not nosave, save_txt, save_conf, save_csv, save_crop,
                          line_thickness, hide_labels, hide_conf)
    backend.warmup((1, 3, *imgsz))
    exclusive = backend.class_act == "softmax"
    predictions, dt, seen, shape = [], np.zeros(3), 0, None
    try:
        for path, im, im0, cap, s in dataset:
            t0 = _sync(backend.device)
            x = torch.from_numpy(im).to(backend.device).float().div_(255).unsqueeze(0)
            t1 = _sync(backend.device)
            y = backend(x)
            t2 = _sync(backend.device)
            det = non_max_suppression(y, conf_thres, iou_thres, classes, agnostic_nms, max_det=max_det,
                                      exclusive=exclusive)[0]
            det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], im0.shape).round()
            det = det.cpu()
            t3 = _sync(backend.device)
            dt += (t1 - t0, t2 - t1, t3 - t2)
            seen, shape = seen + 1, tuple(x.shape)
            predictions.append({"path": path, "frame": dataset.frame, "det": det})
            annotated = writer.annotate(im0, det) if (not nosave or view_img) else None
            writer.write(path, im0, det, dataset.mode, dataset.frame, cap, annotated)
            if view_img and annotated is not None:
                view_img = _show(str(path), annotated)
            log.info(f"{s}{x.shape[2]}x{x.shape[3]} {describe(det, backend.names)}{(t2 - t1) * 1e3:.1f}ms")
    finally:
        writer.close()
    speed = tuple(float(v) for v in dt * 1e3 / max(seen, 1))
    log.info(f"Speed: {speed[0]:.1f}ms pre-process, {speed[1]:.1f}ms inference, {speed[2]:.1f}ms NMS per image "
             f"at shape {shape}")
    labels = f"\n{writer.n_txt} labels saved to {save_dir / 'labels'}" if save_txt else ""
    log.info(f"Results saved to {colorstr('bold', str(save_dir))}{labels}")
    return {"save_dir": save_dir, "predictions": predictions, "speed": speed}


def main(opt: argparse.Namespace) -> dict:
    """Run detection from parsed options."""
    return run(**vars(opt))


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point: run from command-line arguments; user-facing errors exit with one line, no traceback."""
    try:
        main(parse_opt(argv))
    except SlideYoloError as e:
        sys.exit(f"detect.py: {e}")


if __name__ == "__main__":
    cli()
