"""Validate a trained detector on a dataset split: P, R, mAP50, mAP50-95, plots, optional COCO JSON.

Usage:
    python val.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml --img 640
    python val.py --weights yolov5n.pt --data coco128.yaml --save-json      # also pycocotools' mAP
    python val.py --weights best.onnx --data data.yaml --img 640           # .pt, .torchscript and .onnx
    python val.py --weights a.pt b.pt --data data.yaml                     # ensemble: one NMS over both models
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import torch

from models.backend import DetectMultiBackend
from models.ensemble import Ensemble, load_backend, weights_list
from utils.cli import DefaultsHelpFormatter
from utils.data.data_config import check_dataset
from utils.data.dataset import create_dataloader
from utils.deploy.ort_engine import ENGINES
from utils.errors import ConfigError, DatasetError, SlideYoloError
from utils.eval.coco import CocoScoring, coco_evaluate, coco_image_ids, coco_scoring, save_json, yolo_to_coco_gt
from utils.eval.evaluate import EvalConfig, EvalResult, evaluate, format_table, write_per_class_csv
from utils.img_size import check_img_size
from utils.log import colorstr, get_logger
from utils.paths import ROOT, increment_path
from utils.torch_utils import select_device

TASKS = ("train", "val", "test", "speed", "study")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """YOLOv5's val.py flags and defaults."""
    parser = argparse.ArgumentParser(description="Validate a detector on a dataset split",
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--data", type=str, default=str(ROOT / "data/shapes.yaml"), help="dataset.yaml path")
    parser.add_argument("--weights", nargs="+", type=str, default=str(ROOT / "runs/train/exp/weights/best.pt"),
                        help="model path (.pt, .torchscript, .onnx, OpenVINO folder); several .pt files: an ensemble")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    parser.add_argument("--task", default="val", choices=TASKS,
                        help="train, val, test, speed, or study (mAP and speed over image sizes 256-1536)")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="max dataloader workers (at most the CPU cores)")
    parser.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    parser.add_argument("--verbose", action="store_true", help="report mAP by class")
    parser.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    parser.add_argument("--save-hybrid", action="store_true",
                        help="save labels + predictions to *.txt for autolabelling (its mAP is not the model's)")
    parser.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    parser.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file (+ pycocotools mAP)")
    parser.add_argument("--project", default=str(ROOT / "runs/val"), help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA only)")
    parser.add_argument("--augment", action="store_true", help="test-time augmentation (3 scales, one flipped; .pt)")
    parser.add_argument("--single-label", action="store_true",
                        help="one label per box, as detect.py outputs (default: every class above --conf-thres)")
    parser.add_argument("--engine", default="auto", choices=ENGINES,
                        help="what runs a .pt model: auto (onnxruntime on a CPU, else torch), torch or onnxruntime")
    parser.add_argument("--dnn", action="store_true", help="run an .onnx file in OpenCV DNN instead of onnxruntime")
    return parser.parse_args(argv)


def _dataloader_for(data: dict, task: str, imgsz: int, batch_size: int, stride: int, pad: float, rect: bool,
                    single_cls: bool, workers: int):
    """The dataloader of one split, with a clear error when the data YAML has no such split."""
    split = "val" if task == "speed" else task
    if not data.get(split):
        raise DatasetError(f"{data.get('yaml_file') or 'data'}: no '{split}' split to validate on "
                           f"(keys present: {', '.join(k for k in TASKS if data.get(k))})")
    return create_dataloader(data[split], imgsz, batch_size, stride, single_cls, pad=pad, rect=rect,
                             workers=workers, prefix=colorstr(f"{split}: "), nc=data["nc"], names=data["names"])[0]


def _check_classes(backend: DetectMultiBackend | Ensemble, data: dict, weights: str, single_cls: bool) -> None:
    """A model trained on nc classes must be validated on a dataset of nc names."""
    if backend.nc and not single_cls and backend.nc != data["nc"]:
        hint = " (a model trained with --single-cls: validate with --single-cls too)" if backend.nc == 1 else ""
        raise ConfigError(f"weights {weights} predict {backend.nc} classes but {data.get('yaml_file') or 'the data'}"
                          f" names {data['nc']}; pass the data YAML the model was trained on{hint}")


def _square_size(backend: DetectMultiBackend | Ensemble, imgsz: int, weights: str) -> int:
    """The square size val.py letterboxes to: --imgsz rounded up to the stride, or a fixed-size export's own size
    (ConfigError for a fixed non-square export, which square batches cannot feed)."""
    if not backend.dynamic and backend.imgsz and backend.imgsz[0] != backend.imgsz[1]:
        h, w = backend.imgsz
        raise ConfigError(f"weights {weights}: exported at the fixed size {h}x{w}; val.py letterboxes every image to a "
                          "square, so validate the .pt, a square export (--imgsz N) or a --dynamic one")
    return backend.input_size([check_img_size(imgsz, backend.stride, floor=backend.stride)])[0]


def _coco_check(result: EvalResult, dataloader, names: dict, save_dir: Path, weights: str,
                coco: CocoScoring) -> None:
    """Write predictions and ground truth as COCO JSON and print pycocotools' mAP next to ours. On COCO (as
    upstream): COCO's 1-90 category ids, and on val2017 COCO's own annotations where they are."""
    log = get_logger()
    ds = dataloader.dataset
    cmap, official = coco.class_map, coco.annotations
    preds = [{**d, "category_id": cmap[d["category_id"]]} for d in result.coco_json] if cmap else result.coco_json
    pred_json = save_json(preds, save_dir / f"{Path(weights).stem}_predictions.json")
    gt_json = official or save_json(yolo_to_coco_gt(ds.im_files, ds.labels, ds.shapes, names, cmap),
                                    save_dir / "ground_truth.json")
    log.info(f"Saved {pred_json}" + (f"; scoring against {official}" if official else f" and {gt_json}"))
    try:
        map_, map50 = coco_evaluate(gt_json, pred_json, img_ids=coco_image_ids(ds.im_files) if official else None)
    except ImportError as e:
        log.warning(f"WARNING pycocotools unavailable, COCO cross-check skipped: {e}")
        return
    except Exception as e:  # e.g. annotations that do not cover these images: the predictions are saved anyway
        log.warning(f"WARNING pycocotools could not score {pred_json.name} against {gt_json}: "
                    f"{type(e).__name__}: {e}")
        return
    log.info(f"pycocotools: mAP50-95 {map_:.3f}, mAP50 {map50:.3f} (ours: {result.map:.3f}, {result.map50:.3f})")


def _closing_lines(result: EvalResult, dataloader, names: dict, save_dir: Path, first_weights: Path,
                   coco: CocoScoring | None, shape: tuple) -> None:
    """A standalone run's last lines: speed per image, the COCO cross-check (--save-json: coco), where results went."""
    log = get_logger()
    pre, inf, nms = result.times_ms
    log.info(f"Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image at shape {shape}")
    if coco is not None and result.coco_json:
        _coco_check(result, dataloader, names, save_dir, first_weights, coco)
    log.info(f"Results saved to {colorstr('bold', str(save_dir))}")


@torch.no_grad()
def run(data: dict | str | Path = ROOT / "data/shapes.yaml", weights=None, batch_size: int = 32, imgsz: int = 640,
        conf_thres: float = 0.001, iou_thres: float = 0.6, max_det: int = 300, task: str = "val", device: str = "",
        workers: int = 8, single_cls: bool = False, verbose: bool = False, save_txt: bool = False,
        save_conf: bool = False, save_json: bool = False, project: str | Path = ROOT / "runs/val", name: str = "exp",
        exist_ok: bool = False, half: bool = False, model=None, dataloader=None, save_dir: Path = Path(""),
        plots: bool = True, compute_loss=None, engine: str = "auto", single_label: bool = False,
        augment: bool = False, dnn: bool = False, save_hybrid: bool = False):
    """Validate; returns ((P, R, mAP50, mAP50-95, box, obj, cls), maps (nc,), (pre, inference, nms) ms per image).

    From training pass ``model`` (a DetectionModel), ``dataloader``, ``save_dir`` and ``compute_loss``; otherwise
    ``weights`` (.pt, .torchscript, .onnx; a list of several .pt files is validated as one ensemble, see
    models/ensemble.py) and ``data`` are loaded here. Every model, sigmoid or softmax, is scored
    with every class above conf_thres per box (the mAP protocol); ``single_label`` keeps one label per box instead.
    ``augment`` runs test-time augmentation (models/tta.py; .pt weights only, not during training); ``dnn`` runs
    an .onnx file in OpenCV DNN; ``save_hybrid`` adds the labels to NMS as confidence-1 detections (autolabelling).
    """
    log = get_logger()
    training = model is not None
    if task == "speed":
        conf_thres, iou_thres, save_json, plots = 0.25, 0.45, False, False
    if training:
        device = next(model.parameters()).device
        data = data if isinstance(data, dict) else check_dataset(data)
        names = data["names"]
        model_fn = model.half() if half and device.type == "cuda" else model.float()
        fp16 = half and device.type == "cuda"
        model_fn.eval()
    else:
        device = select_device(device, batch_size)
        data = check_dataset(data, only=("val" if task == "speed" else task,))  # the split validated, not train
        backend = load_backend(weights, device=device, fp16=half, engine=engine, dnn=dnn)
        label = backend.describe()
        if augment:
            backend.check_augment()
        _check_classes(backend, data, label, single_cls)
        names, fp16 = data["names"], backend.fp16
        imgsz = _square_size(backend, imgsz, label)
        batch_size = batch_size if backend.dynamic else backend.batch
        rect = backend.dynamic  # rectangular batches need a model that accepts any size (.pt, dynamic exports)
        dataloader = _dataloader_for(data, task, imgsz, batch_size, backend.stride, 0.5 if rect else 0.0, rect,
                                     single_cls, workers)
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)  # no empty folder on errors
        model_fn = functools.partial(backend, augment=True) if augment else backend
        if not rect and batch_size > 1:
            log.info(f"{label}: fixed-size model, square {imgsz} batches")
    cfg = EvalConfig(conf_thres, iou_thres, max_det, single_cls, single_label, Path(save_dir) if save_dir else None,
                     plots, save_txt, save_conf, save_json, save_hybrid)
    result = evaluate(model_fn, dataloader, names, cfg, compute_loss=compute_loss, device=device, fp16=fp16)
    nc = 1 if single_cls else len(names)
    if not training and isinstance(backend, Ensemble):
        log.info(f"{backend.describe()}, one NMS over their predictions:")
    log.info(format_table(result, names, per_class=(verbose or (nc < 50 and not training)) and nc > 1))
    if save_dir and (verbose or not training):
        write_per_class_csv(result, names, Path(save_dir) / "per_class.csv")
    if not training:
        _closing_lines(result, dataloader, names, Path(save_dir), weights_list(weights)[0],
                       coco_scoring(data, task, nc) if save_json else None, (batch_size, 3, imgsz, imgsz))
    else:
        model.float()
    return (result.mp, result.mr, result.map50, result.map, *result.loss.tolist()), result.maps, result.times_ms


def main(opt: argparse.Namespace) -> list:
    """Validate the weights (several .pt files as one ensemble; each on its own for --task speed and study, as
    YOLOv5 does); returns the run() results, one per run ({weights: rows} for study)."""
    log = get_logger()
    log.info(colorstr("val: ") + ", ".join(f"{k}={v}" for k, v in vars(opt).items()))
    weights = opt.weights if isinstance(opt.weights, list) else [opt.weights]
    if opt.save_hybrid:
        opt.save_txt = True
        log.warning("WARNING --save-hybrid: labels join the predictions in NMS, so the mAP is that of labels and "
                    "predictions together, not the model's")
    if opt.task == "speed":
        return [run(**{**vars(opt), "weights": w}) for w in weights]
    if opt.task == "study":
        return [_study(opt, weights)]
    return [run(**{**vars(opt), "weights": weights})]


def _study(opt: argparse.Namespace, weights: list[str]) -> dict:
    """--task study: each weights file on the val split at sizes 256-1536, in one runs/val/exp* folder."""
    from utils.eval.study import run_study

    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    rest = {k: v for k, v in vars(opt).items() if k not in ("weights", "data", "imgsz", "project", "name", "exist_ok")}
    rows = run_study(run, weights, opt.data, save_dir, **{**rest, "task": "val"})
    get_logger().info(f"Study saved to {colorstr('bold', str(save_dir))}: study.png and one study_*.txt per weights")
    return rows


if __name__ == "__main__":
    try:
        main(parse_opt())
    except SlideYoloError as e:
        sys.exit(f"val.py: {e}")

