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
    python detect.py --weights a.pt b.pt      # ensemble of .pt models: one NMS over all their predictions

Results go to runs/detect/exp*: annotated images and .mp4 videos, labels/*.txt (--save-txt), predictions.csv
(--save-csv) and crops/<class>/ (--save-crop).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
import torch

from models.backend import DetectMultiBackend
from models.ensemble import Ensemble, Weights, load_backend, weights_list
from utils.boxes import scale_boxes
from utils.checkpoint import strip_optimizer
from utils.cli import DefaultsHelpFormatter
from utils.data.data_config import find_data_yaml, load_yaml, normalise_names
from utils.deploy.detection_writer import ResultWriter, describe
from utils.deploy.ort_engine import ENGINES
from utils.deploy.sources import load_source
from utils.errors import CheckpointError, ConfigError, SlideYoloError
from utils.img_size import check_img_size
from utils.log import colorstr, get_logger
from utils.nms import non_max_suppression
from utils.paths import ROOT, increment_path

DEFAULT_WEIGHTS = str(ROOT / "runs/train/exp/weights/best.pt")  # what `python train.py` leaves; never downloaded
DEFAULT_SOURCE = ROOT / "data" / "images"


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (YOLOv5 names and defaults)."""
    p = argparse.ArgumentParser(description="Detect objects in images, videos and streams",
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--weights", nargs="+", type=str, default=DEFAULT_WEIGHTS,
                   help="model path (.pt, .torchscript, .onnx, OpenVINO folder); several .pt files: one ensemble")
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
    p.add_argument("--augment", action="store_true", help="test-time augmentation (3 scales, one flipped; .pt)")
    p.add_argument("--vid-stride", type=int, default=1, help="video frame-rate stride")
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="what runs a .pt model: auto (onnxruntime on a CPU, else torch), torch or onnxruntime")
    p.add_argument("--dnn", action="store_true", help="run an .onnx file in OpenCV DNN instead of onnxruntime")
    p.add_argument("--update", action="store_true", help="afterwards, strip the optimizer from the .pt weights")
    opt = p.parse_args(argv)
    if len(opt.imgsz) > 2:
        p.error(f"--imgsz takes one size or two (h w), got {len(opt.imgsz)}: {' '.join(map(str, opt.imgsz))}")
    opt.imgsz = opt.imgsz * 2 if len(opt.imgsz) == 1 else opt.imgsz
    return opt


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


def _load_backend(weights: Weights, device: str, half: bool, data: Optional[str], engine: str = "auto",
                  dnn: bool = False) -> Union[DetectMultiBackend, Ensemble]:
    """Open the weights, several as one ensemble (CheckpointError telling the user to pass --weights if one is
    missing), and apply --data names."""
    for w in weights_list(weights):
        if not w.exists():
            raise CheckpointError(f"weights {w}: file not found. Nothing is downloaded: pass --weights with a local "
                                  ".pt, .torchscript or .onnx file or OpenVINO folder "
                                  "(e.g. runs/train/exp/weights/best.pt)")
    backend = load_backend(weights, device=device or "", fp16=half, engine=engine, dnn=dnn)
    if data:
        yaml_file = find_data_yaml(data)
        names = normalise_names(load_yaml(yaml_file), str(yaml_file))
        if backend.nc and len(names) != backend.nc:
            raise ConfigError(f"{yaml_file}: {len(names)} names but the model {backend.describe()} has "
                              f"{backend.nc} classes")
        backend.names = names
    return backend


def run(weights: Weights = DEFAULT_WEIGHTS, source: Union[str, Path, Sequence] = DEFAULT_SOURCE,
        data: Optional[str] = None, imgsz: Sequence[int] = (640, 640), conf_thres: float = 0.25,
        iou_thres: float = 0.45, max_det: int = 1000, device: str = "", view_img: bool = False, save_txt: bool = False,
        save_csv: bool = False, save_conf: bool = False, save_crop: bool = False, nosave: bool = False,
        classes: Optional[Sequence[int]] = None, agnostic_nms: bool = False,
        project: Union[str, Path] = ROOT / "runs" / "detect", name: str = "exp", exist_ok: bool = False,
        line_thickness: int = 3, hide_labels: bool = False, hide_conf: bool = False, half: bool = False,
        vid_stride: int = 1, engine: str = "auto", augment: bool = False, dnn: bool = False) -> dict:
    """Detect on source and save results; returns {'save_dir': Path, 'predictions': [...], 'speed': (pre, inf, nms)}.

    Each prediction is {'path': str, 'frame': int (0 for images), 'det': (n, 6) float tensor on CPU with
    x1, y1, x2, y2 in original-image pixels, conf, cls}. 'speed' is the mean ms per image of each stage. ``weights``
    is one path, or a list of several .pt paths run as one ensemble (models/ensemble.py). ``augment`` runs
    test-time augmentation (models/tta.py; .pt weights only); ``dnn`` runs an .onnx file in OpenCV DNN.
    """
    log = get_logger()
    backend = _load_backend(weights, device, half, data, engine, dnn)
    if augment:
        backend.check_augment()
    imgsz = backend.input_size(check_img_size(imgsz, backend.stride, floor=backend.stride))
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
            y = backend(x, augment=augment)
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
    _log_summary(source, speed, seen, shape, save_dir, writer.n_txt if save_txt else None)
    return {"save_dir": save_dir, "predictions": predictions, "speed": speed}


def _log_summary(source: Any, speed: tuple, seen: int, shape: Optional[tuple], save_dir: Path,
                 n_txt: Optional[int]) -> None:
    """The closing lines: ms per image of each stage (or that nothing could be read) and where results went."""
    log = get_logger()
    if seen:
        log.info(f"Speed: {speed[0]:.1f}ms pre-process, {speed[1]:.1f}ms inference, {speed[2]:.1f}ms NMS per image "
                 f"at shape {shape}")
    else:
        what = source if isinstance(source, (str, Path)) else "source"
        log.warning(f"WARNING {what}: no image or frame could be read, nothing was detected")
    labels = f"\n{n_txt} labels saved to {save_dir / 'labels'}" if n_txt is not None else ""
    if any(save_dir.iterdir()):  # not after --nosave alone, which saves nothing
        log.info(f"Results saved to {colorstr('bold', str(save_dir))}{labels}")


def main(opt: argparse.Namespace) -> dict:
    """Run detection from parsed options; --update then strips the optimizer from each .pt weights file."""
    kwargs = vars(opt).copy()
    update = kwargs.pop("update", False)
    out = run(**kwargs)
    for w in (weights_list(opt.weights) if update else []):
        if w.suffix.lower() == ".pt":  # as upstream's --update: a final, smaller file (no longer resumable)
            strip_optimizer(w)
            size = w.stat().st_size / 1e6
            get_logger().info(f"--update: {w} saved without its optimizer state, in FP16 ({size:.1f} MB)")
    return out


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point: run from command-line arguments; user-facing errors exit with one line, no traceback."""
    try:
        main(parse_opt(argv))
    except SlideYoloError as e:
        sys.exit(f"detect.py: {e}")


if __name__ == "__main__":
    cli()
