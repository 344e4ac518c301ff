"""The evaluation loop behind val.py: predictions over a dataloader -> P, R, mAP50, mAP50-95, losses, plots.

Boxes are compared in original-image pixels (predictions and labels both mapped back from the letterboxed batch),
matched per IoU threshold 0.50:0.05:0.95 by ``utils.eval.metrics.process_batch`` and summarised by ``ap_per_class``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from utils.boxes import scale_boxes, xywh2xyxy, xyxy2xywh
from utils.eval.coco import coco_image_ids, detections_to_coco
from utils.eval.metrics import ConfusionMatrix, ap_per_class, process_batch
from utils.eval.plot_jobs import PlotJobs
from utils.log import get_logger
from utils.nms import non_max_suppression
from utils.plots import output_to_target, plot_images

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)  # COCO's mAP@0.5:0.95 thresholds


@dataclass
class EvalConfig:
    """Thresholds and outputs of one evaluation pass."""

    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: int = 300
    single_cls: bool = False
    exclusive: bool = False  # one label per box in NMS (val.py --single-label); else every class above conf_thres
    save_dir: Optional[Path] = None
    plots: bool = True
    save_txt: bool = False
    save_conf: bool = False
    save_json: bool = False
    save_hybrid: bool = False  # labels join NMS as confidence-1 detections (autolabelling; the mAP is not the model's)


@dataclass
class EvalResult:
    """Metrics of one pass: mean P/R/mAP over classes with labels, per-class rows, losses and timings (ms/image)."""

    mp: float = 0.0
    mr: float = 0.0
    map50: float = 0.0
    map: float = 0.0
    loss: np.ndarray = field(default_factory=lambda: np.zeros(3))
    maps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    times_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seen: int = 0
    per_class: list[tuple[int, int, int, float, float, float, float]] = field(default_factory=list)
    instances: int = 0
    class_instances: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # labels per class
    coco_json: list[dict] = field(default_factory=list)


class _Stats:
    """Accumulates per-image (correct, conf, pred_cls, target_cls) rows and the confusion matrix."""

    def __init__(self, nc: int):
        self.rows: list[tuple[torch.Tensor, ...]] = []
        self.confusion = ConfusionMatrix(nc=nc)
        self.seen = 0

    def add(self, pred: torch.Tensor, predn: torch.Tensor, labelsn: torch.Tensor) -> None:
        """Record one image: pred (n, 6) scaled to the original image as predn, labelsn (m, 5) cls + xyxy pixels."""
        self.seen += 1
        niou = IOU_THRESHOLDS.numel()
        if pred.shape[0] == 0:
            if labelsn.shape[0]:
                self.rows.append((torch.zeros(0, niou, dtype=torch.bool), torch.zeros(0), torch.zeros(0),
                                  labelsn[:, 0].cpu()))
                self.confusion.process_batch(None, labelsn.cpu())
            return
        correct = torch.zeros(pred.shape[0], niou, dtype=torch.bool)
        if labelsn.shape[0]:
            correct = process_batch(predn.cpu(), labelsn.cpu(), IOU_THRESHOLDS).cpu()
            self.confusion.process_batch(predn.cpu(), labelsn.cpu())
        self.rows.append((correct, pred[:, 4].cpu(), pred[:, 5].cpu(), labelsn[:, 0].cpu()))

    def arrays(self) -> list[np.ndarray]:
        """Concatenate the rows into (tp, conf, pred_cls, target_cls) numpy arrays."""
        if not self.rows:
            return [np.zeros((0, IOU_THRESHOLDS.numel()), bool), np.zeros(0), np.zeros(0), np.zeros(0)]
        return [torch.cat(x, 0).numpy() for x in zip(*self.rows)]


def _save_txt(predn: torch.Tensor, shape: tuple[int, int], save_conf: bool, file: Path) -> None:
    """Write predictions (n, 6) in original pixels as YOLO txt rows: cls cx cy w h (normalized) [conf]."""
    gn = torch.tensor(shape)[[1, 0, 1, 0]]
    with open(file, "a") as f:
        for *xyxy, conf, cls in predn.tolist():
            xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
            row = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(("%g " * len(row)).rstrip() % row + "\n")


def evaluate(model: Callable, dataloader, names: dict[int, str], cfg: EvalConfig,
             compute_loss: Optional[Callable] = None, device: torch.device = torch.device("cpu"),
             fp16: bool = False, desc: str = "") -> EvalResult:
    """Run model over dataloader and compute detection metrics.

    model(im) -> (bs, N, 5 + nc) predictions, or (y, raw) for a PyTorch model in eval mode (raw feeds compute_loss).
    Batches are (uint8 images, targets (n, 6) normalized, paths, shapes) as ``create_dataloader`` yields them.
    """
    nc = 1 if cfg.single_cls else len(names)
    stats, loss = _Stats(nc), torch.zeros(3, device=device)
    dt = [0.0, 0.0, 0.0]
    ids = dict(zip(dataloader.dataset.im_files, coco_image_ids(dataloader.dataset.im_files)))
    jdict: list[dict] = []
    if cfg.save_txt and cfg.save_dir:
        (cfg.save_dir / "labels").mkdir(parents=True, exist_ok=True)
    header = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"
    for batch_i, (im, targets, paths, shapes) in enumerate(tqdm(dataloader, desc=desc or header,
                                                                 bar_format="{l_bar}{bar:10}{r_bar}")):
        t0 = time.perf_counter()
        im_u8 = im  # the loader's uint8 batch, drawn by plot_images without a float round trip
        im = im.to(device, non_blocking=True)
        im = (im.half() if fp16 else im.float()) / 255
        targets = targets.to(device)
        nb, _, height, width = im.shape
        t1 = time.perf_counter()
        out = model(im)
        preds, raw = (out[0], out[1]) if isinstance(out, (list, tuple)) else (out, None)
        t2 = time.perf_counter()
        if compute_loss is not None and raw is not None:
            loss += compute_loss([x.float() for x in raw], targets)[1]
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)
        t3 = time.perf_counter()
        priors = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if cfg.save_hybrid else None
        preds = non_max_suppression(preds, cfg.conf_thres, cfg.iou_thres, multi_label=True, agnostic=cfg.single_cls,
                                    max_det=cfg.max_det, exclusive=cfg.exclusive, labels=priors)
        t4 = time.perf_counter()
        dt[0] += t1 - t0
        dt[1] += t2 - t1
        dt[2] += t4 - t3
        for si, pred in enumerate(preds):
            labels = targets[targets[:, 0] == si, 1:]
            shape, ratio_pad = shapes[si][0], shapes[si][1]
            if cfg.single_cls:
                pred[:, 5] = 0
            predn = pred.clone()
            scale_boxes(im[si].shape[1:], predn[:, :4], shape, ratio_pad)
            tbox = xywh2xyxy(labels[:, 1:5])
            scale_boxes(im[si].shape[1:], tbox, shape, ratio_pad)
            stats.add(pred, predn, torch.cat((labels[:, 0:1], tbox), 1))
            if cfg.save_txt and cfg.save_dir:
                _save_txt(predn, shape, cfg.save_conf, cfg.save_dir / "labels" / f"{Path(paths[si]).stem}.txt")
            if cfg.save_json:
                jdict.extend(detections_to_coco(predn, ids.get(paths[si], 0)))
        if cfg.plots and cfg.save_dir and batch_i < 3:
            plot_images(im_u8, targets, paths, cfg.save_dir / f"val_batch{batch_i}_labels.jpg", names)
            plot_images(im_u8, output_to_target(preds), paths, cfg.save_dir / f"val_batch{batch_i}_pred.jpg", names)
    result = summarise(stats, nc, names, cfg)
    result.loss = (loss.cpu() / max(len(dataloader), 1)).numpy()
    result.times_ms = tuple(x / max(stats.seen, 1) * 1e3 for x in dt)
    result.coco_json = jdict
    return result


def summarise(stats: _Stats, nc: int, names: dict[int, str], cfg: EvalConfig) -> EvalResult:
    """Turn accumulated rows into mean and per-class metrics; plots curves and the confusion matrix if asked."""
    result = EvalResult(seen=stats.seen, maps=np.zeros(nc))
    plots = cfg.plots and cfg.save_dir is not None
    with PlotJobs(workers=None if plots else 0) as jobs:  # the figures are drawn in worker processes meanwhile
        if plots:  # the longest figure first
            jobs.run(stats.confusion.plot, save_dir=cfg.save_dir, names=[names.get(i, str(i)) for i in range(nc)])
        fill_metrics(result, stats.arrays(), nc, names, cfg, jobs)
    return result


def fill_metrics(result: EvalResult, arrays: tuple[np.ndarray, ...], nc: int, names: dict[int, str],
                 cfg: EvalConfig, jobs: PlotJobs) -> None:
    """Mean and per-class metrics from the rows (tp, conf, pred_cls, target_cls); curves go to jobs when plotting."""
    tp, conf, pred_cls, target_cls = arrays
    nt = np.bincount(target_cls.astype(int), minlength=nc)
    result.instances, result.class_instances = int(nt.sum()), nt
    plots = cfg.plots and cfg.save_dir is not None
    if tp.shape[0] and tp.any():
        _, _, p, r, _, ap, ap_class = ap_per_class(tp, conf, pred_cls, target_cls, plot=plots,
                                                   save_dir=cfg.save_dir or Path("."), names=names, jobs=jobs)
        ap50, ap_mean = ap[:, 0], ap.mean(1)
        result.mp, result.mr, result.map50, result.map = p.mean(), r.mean(), ap50.mean(), ap_mean.mean()
        result.maps += result.map
        for i, c in enumerate(ap_class):
            result.maps[c] = ap_mean[i]
            result.per_class.append((int(c), result.seen, int(nt[c]), p[i], r[i], ap50[i], ap_mean[i]))
    elif result.instances == 0:
        get_logger().warning("WARNING no labels found in the evaluation set, cannot compute metrics without labels")


def format_table(result: EvalResult, names: dict[int, str], per_class: bool) -> str:
    """The YOLOv5 results table: 'all' row, then one row per class with labels when per_class."""
    fmt = "{:>22}{:>11}{:>11}{:>11.3g}{:>11.3g}{:>11.3g}{:>11.3g}"
    lines = [fmt.format("all", result.seen, result.instances, result.mp, result.mr, result.map50, result.map)]
    if per_class:
        for c, seen, n, p, r, ap50, ap in result.per_class:
            lines.append(fmt.format(names.get(c, str(c)), seen, n, p, r, ap50, ap))
    return "\n".join(lines)


def write_per_class_csv(result: EvalResult, names: dict[int, str], path: Path) -> Path:
    """per_class.csv: the 'all' row, then one row per class with labels (class, images, instances, P, R, mAP50,
    mAP50-95), as val.py's table; a class with labels and no detection gets zeros."""
    rows = ["class,images,instances,P,R,mAP50,mAP50-95",
            f"all,{result.seen},{result.instances},{result.mp:.5f},{result.mr:.5f},{result.map50:.5f},{result.map:.5f}"]
    found = {c: (seen, n, p, r, ap50, ap) for c, seen, n, p, r, ap50, ap in result.per_class}
    for c, n in enumerate(result.class_instances):  # a class with labels but no detection: zeros
        if c in found or n:
            seen, n, p, r, ap50, ap = found.get(c, (result.seen, int(n), 0.0, 0.0, 0.0, 0.0))
            rows.append(f"{names.get(c, str(c))},{seen},{n},{p:.5f},{r:.5f},{ap50:.5f},{ap:.5f}")
    path.write_text("\n".join(rows) + "\n")
    return path
