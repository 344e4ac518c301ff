"""Drawing and plots: box annotation (cv2 Hershey fonts), image mosaics, PR/F1 curves, results, label statistics.

No font is ever downloaded: images use cv2's built-in Hershey fonts and plots use matplotlib's bundled DejaVu Sans.
matplotlib is switched to the non-interactive Agg backend inside the plotting functions, never at import time.
Images given to ``plot_images`` are RGB (as the dataloader yields them); files are written with cv2 (BGR on disk).
"""

from __future__ import annotations

import colorsys
import math
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

from utils.boxes import xywh2xyxy, xyxy2xywh
from utils.log import get_logger

Names = Union[Sequence[str], dict, None]
FONT = cv2.FONT_HERSHEY_SIMPLEX


def pyplot_agg():
    """Return matplotlib.pyplot with the Agg backend selected (safe for headless runs and threads)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _name(names: Names, c: int) -> str:
    """Class name of index c from a list or dict of names, or the index itself."""
    if isinstance(names, dict):
        return str(names.get(c, c))
    return str(names[c]) if names is not None and 0 <= c < len(names) else str(c)


@lru_cache(maxsize=256)
def colors(i: int, bgr: bool = False) -> tuple[int, int, int]:
    """Distinct colour of class i as an (r, g, b) or (b, g, r) int tuple: hues stepped by the golden ratio."""
    hue = (int(i) * 0.618033988749895) % 1.0
    sat, val = (0.85, 0.95) if int(i) % 2 == 0 else (0.6, 0.8)
    rgb = tuple(int(round(255 * v)) for v in colorsys.hsv_to_rgb(hue, sat, val))
    return rgb[::-1] if bgr else rgb


class Annotator:
    """Draw boxes with labels on a copy of an HWC uint8 image using cv2 (Hershey font)."""

    def __init__(self, im: np.ndarray, line_width: Optional[int] = None):
        """Wrap im (h, w, 3) uint8; line width defaults to ~0.3 % of the mean image side, at least 2 px."""
        self.im = np.ascontiguousarray(im).copy()
        self.lw = line_width or max(round(sum(self.im.shape[:2]) / 2 * 0.003), 2)
        self.tf = max(self.lw - 1, 1)  # text thickness
        self.fs = self.lw / 3  # font scale

    def box_label(self, box: Sequence[float], label: str = "", color: tuple = (128, 128, 128),
                  txt_color: tuple = (255, 255, 255)) -> None:
        """Draw an xyxy pixel box and, if given, its label on a filled tag above (or inside at the top edge)."""
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        cv2.rectangle(self.im, p1, p2, color, thickness=self.lw, lineType=cv2.LINE_AA)
        if label:
            (w, h), base = cv2.getTextSize(label, FONT, self.fs, self.tf)
            outside = p1[1] - h - base >= 0
            top = p1[1] - h - base if outside else p1[1]
            cv2.rectangle(self.im, (p1[0], top), (p1[0] + w, top + h + base), color, -1, cv2.LINE_AA)
            cv2.putText(self.im, label, (p1[0], top + h), FONT, self.fs, txt_color, self.tf, cv2.LINE_AA)

    def text(self, xy: Sequence[int], text: str, txt_color: tuple = (255, 255, 255)) -> None:
        """Write text with its top-left corner at xy."""
        (_, h), _ = cv2.getTextSize(text, FONT, self.fs, self.tf)
        cv2.putText(self.im, text, (int(xy[0]), int(xy[1]) + h), FONT, self.fs, txt_color, self.tf, cv2.LINE_AA)

    def rectangle(self, xy: Sequence[int], color: tuple = (255, 255, 255), width: int = 1) -> None:
        """Draw a plain xyxy rectangle outline."""
        cv2.rectangle(self.im, (int(xy[0]), int(xy[1])), (int(xy[2]), int(xy[3])), color, width)

    def result(self) -> np.ndarray:
        """Return the annotated image (h, w, 3) uint8."""
        return self.im


def _to_numpy(x) -> np.ndarray:
    """Tensor or array -> numpy array on the CPU (half tensors as float32)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def plot_images(images, targets, paths: Optional[Sequence[str]] = None, fname: Union[str, Path] = "images.jpg",
                names: Names = None, max_subplots: int = 16, max_size: int = 1920) -> Path:
    """Save a mosaic of up to max_subplots RGB images (bs, 3, h, w) with boxes -> fname.

    images: uint8 0-255 or float 0-1. targets (k, 6) [batch_idx, cls, cx, cy, w, h] labels or (k, 7) with conf last
    (predictions, drawn when conf > 0.25); boxes normalized (all <= 1.01) or pixels of the (h, w) input.
    """
    images, targets = _to_numpy(images)[:max_subplots], _to_numpy(targets).astype(float)
    if targets.size == 0:
        targets = np.zeros((0, 6))
    if images.dtype != np.uint8:
        images = images * 255 if images.size and images.max() <= 1 else images
        images = images.clip(0, 255).astype(np.uint8)
    bs, _, h, w = images.shape
    bs = min(bs, max_subplots)
    ns = math.ceil(bs ** 0.5)  # tiles per side
    scale = min(1.0, max_size / ns / max(h, w))
    th, tw = math.ceil(h * scale), math.ceil(w * scale)
    mosaic = np.full((ns * th, ns * tw, 3), 255, dtype=np.uint8)
    for i in range(bs):
        y, x = (i // ns) * th, (i % ns) * tw
        tile = images[i].transpose(1, 2, 0)
        mosaic[y:y + th, x:x + tw] = cv2.resize(tile, (tw, th)) if scale < 1 else tile
    ann = Annotator(mosaic, line_width=max(round(min(th, tw) / 200), 1))
    ann.fs, ann.tf = max(ann.lw / 3, 0.35), 1
    for i in range(bs):
        y, x = (i // ns) * th, (i % ns) * tw
        ann.rectangle((x, y, x + tw, y + th), (255, 255, 255), 2)
        if paths is not None and i < len(paths):
            ann.text((x + 5, y + 5), Path(paths[i]).name[:40], txt_color=(220, 220, 220))
        ti = targets[targets[:, 0] == i] if len(targets) else targets
        if not len(ti):
            continue
        boxes = xywh2xyxy(ti[:, 2:6].astype(float))
        if boxes.max() <= 1.01:  # normalized
            boxes[:, [0, 2]] *= tw
            boxes[:, [1, 3]] *= th
        else:
            boxes *= scale
        boxes[:, [0, 2]] += x
        boxes[:, [1, 3]] += y
        is_pred = ti.shape[1] > 6
        for j, box in enumerate(boxes):
            c = int(ti[j, 1])
            if is_pred and ti[j, 6] <= 0.25:
                continue
            label = _name(names, c) + (f" {ti[j, 6]:.1f}" if is_pred else "")
            ann.box_label(box, label, colors(c))
    fname = Path(fname)
    fname.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(fname), cv2.cvtColor(ann.result(), cv2.COLOR_RGB2BGR))
    return fname


def output_to_target(output: Sequence[torch.Tensor], max_det: int = 300) -> np.ndarray:
    """NMS output list of (n, 6) xyxy, conf, cls -> (k, 7) [batch_idx, cls, cx, cy, w, h, conf] in pixels."""
    rows = []
    for i, o in enumerate(output):
        o = o[:max_det].detach().cpu().float()
        idx = torch.full((o.shape[0], 1), float(i))
        rows.append(torch.cat((idx, o[:, 5:6], xyxy2xywh(o[:, :4]), o[:, 4:5]), 1))
    return torch.cat(rows, 0).numpy() if rows else np.zeros((0, 7), dtype=np.float32)


def _grey_lines(ax, px: np.ndarray, py: np.ndarray) -> None:
    """One grey curve per row of py over px, as a single LineCollection (much faster to draw than c lines)."""
    from matplotlib.collections import LineCollection

    if len(py):
        ax.add_collection(LineCollection(np.stack(np.broadcast_arrays(px, py), -1), colors="grey", linewidths=1))


def plot_pr_curve(px: np.ndarray, py: np.ndarray, ap: np.ndarray, save_path: Union[str, Path] = "PR_curve.png",
                  names: Names = None) -> Path:
    """Precision-recall curves: px (1000,) recall grid, py (c, 1000) precision per class, ap (c, t) -> PNG."""
    plt = pyplot_agg()
    py = np.asarray(py).reshape(-1, len(px))
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    if names is not None and 0 < len(names) < 21:
        for i, y in enumerate(py):
            ax.plot(px, y, linewidth=1, label=f"{_name(names, i)} {ap[i, 0]:.3f}")
    else:
        _grey_lines(ax, px, py)
    if len(py):
        ax.plot(px, py.mean(0), linewidth=3, color="blue", label=f"all classes {ap[:, 0].mean():.3f} mAP@0.5")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1), title="Precision-Recall Curve")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    return save_figure(plt, fig, save_path)


def plot_mc_curve(px: np.ndarray, py: np.ndarray, save_path: Union[str, Path] = "mc_curve.png", names: Names = None,
                  xlabel: str = "Confidence", ylabel: str = "Metric") -> Path:
    """Metric-confidence curves: px (1000,) confidence grid, py (c, 1000) per class; the mean is smoothed -> PNG."""
    from utils.eval.metrics import smooth

    plt = pyplot_agg()
    py = np.asarray(py).reshape(-1, len(px))
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    if names is not None and 0 < len(names) < 21:
        for i, y in enumerate(py):
            ax.plot(px, y, linewidth=1, label=_name(names, i))
    else:
        _grey_lines(ax, px, py)
    if len(py):
        y = smooth(py.mean(0), 0.05)
        k = int(y.argmax())
        ax.plot(px, y, linewidth=3, color="blue", label=f"all classes {y[k]:.2f} at {px[k]:.3f}")
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1), title=f"{ylabel}-Confidence Curve")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    return save_figure(plt, fig, save_path)


def save_figure(plt, fig, path: Union[str, Path], dpi: int = 250) -> Path:
    """Save and close a figure; returns the path. PNGs use zlib level 1: the same pixels, written about 3x faster."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, **({"pil_kwargs": {"compress_level": 1}} if path.suffix.lower() == ".png" else {}))
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix: np.ndarray, save_path: Union[str, Path], names: Names = (),
                          normalize: bool = True) -> Path:
    """Heatmap of an (nc + 1, nc + 1) matrix, rows predicted, columns true, last index background -> PNG.

    Drawn with matplotlib's ``imshow`` (seaborn's heatmap draws the same picture, but its import alone costs about a
    second per val.py run); cells under 0.005 are left blank, values are written in the cells when nc < 30.
    """
    plt = pyplot_agg()
    nc = matrix.shape[0] - 1
    array = matrix / (matrix.sum(0, keepdims=True) + 1e-9) if normalize else matrix.astype(float)
    array = np.where(array < 0.005, np.nan, array)  # leave near-zero cells blank
    fig, ax = plt.subplots(1, 1, figsize=(12, 9), tight_layout=True)
    im = ax.imshow(array, cmap="Blues", vmin=0.0, interpolation="nearest")
    fig.colorbar(im, ax=ax)
    if names is not None and 0 < len(names) < 99:
        labels = [_name(names, i) for i in range(nc)] + ["background"]
        size = 10 if nc < 50 else 6
        ax.set_xticks(range(nc + 1), labels, rotation=90, fontsize=size)
        ax.set_yticks(range(nc + 1), labels, fontsize=size)
    if nc < 30:
        vmax = np.nanmax(array) if np.isfinite(array).any() else 1.0
        for (i, j), v in np.ndenumerate(array):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}" if normalize else f"{v:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if v > 0.6 * vmax else "black")
    ax.set(xlabel="True", ylabel="Predicted", title="Confusion Matrix")
    return save_figure(plt, fig, save_path)


RESULT_COLUMNS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
                  "val/box_loss", "val/obj_loss", "val/cls_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")


def plot_results(file: Union[str, Path] = "results.csv", save_path: Optional[Union[str, Path]] = None) -> Path:
    """Plot a YOLOv5-style results.csv (epoch, losses, P, R, mAP columns) as a 2 x 5 grid -> results.png beside it."""
    import pandas as pd

    from utils.eval.metrics import smooth

    plt = pyplot_agg()
    file = Path(file)
    data = pd.read_csv(file)
    data.columns = [c.strip() for c in data.columns]
    cols = [c for c in RESULT_COLUMNS if c in data.columns] or \
        [c for c in data.columns if c != "epoch" and not c.startswith("x/")]
    x = data["epoch"].to_numpy() if "epoch" in data.columns else np.arange(len(data))
    fig, axes = plt.subplots(2, 5, figsize=(12, 6), tight_layout=True)
    for ax, col in zip(axes.ravel(), cols):
        y = data[col].to_numpy(dtype=float)
        ax.plot(x, y, marker=".", linewidth=2, markersize=8, label="results")
        if len(y) > 2:
            ax.plot(x, smooth(y, 0.1), ":", linewidth=2, label="smooth")
        ax.set_title(col, fontsize=12)
    axes.ravel()[0].legend()
    return save_figure(plt, fig, save_path or file.with_name("results.png"), dpi=200)


def plot_labels(labels: np.ndarray, names: Names = (), save_dir: Union[str, Path] = "", max_rows: int = 1000
                ) -> list[Path]:
    """Label statistics of (n, 5) cls, cx, cy, w, h (normalized) -> labels.jpg and labels_correlogram.jpg.

    labels.jpg: instances per class, box outlines centred, centre (x, y) and size (w, h) 2-D histograms.
    labels_correlogram.jpg: seaborn pairplot of x, y, width, height on a random subsample of max_rows rows.
    """
    import pandas as pd
    import seaborn as sn

    plt = pyplot_agg()
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    labels = _to_numpy(labels).reshape(-1, 5).astype(float)
    cls, boxes = labels[:, 0].astype(int), labels[:, 1:]
    nc = max(len(names) if names is not None else 0, int(cls.max()) + 1 if len(cls) else 1)
    get_logger().info(f"Plotting labels to {save_dir / 'labels.jpg'}...")
    rng = np.random.default_rng(0)
    sub = boxes[rng.choice(len(boxes), max_rows, replace=False)] if len(boxes) > max_rows else boxes
    out = []
    df = pd.DataFrame(sub, columns=["x", "y", "width", "height"])
    if len(df) > 1:
        grid = sn.pairplot(df, corner=True, diag_kind="hist", kind="hist", diag_kws={"bins": 50},
                           plot_kws={"bins": 50})
        grid.savefig(save_dir / "labels_correlogram.jpg", dpi=200)
        plt.close(grid.figure)
        out.append(save_dir / "labels_correlogram.jpg")

    fig, ax = plt.subplots(2, 2, figsize=(8, 8), tight_layout=True)
    ax = ax.ravel()
    counts = np.bincount(cls, minlength=nc)
    ax[0].bar(range(nc), counts, color=[np.array(colors(i)) / 255 for i in range(nc)])
    ax[0].set_ylabel("instances")
    if names is not None and 0 < len(names) < 30:
        ax[0].set_xticks(range(nc), [_name(names, i) for i in range(nc)], rotation=90, fontsize=10)
    else:
        ax[0].set_xlabel("classes")
    canvas = np.full((1000, 1000, 3), 255, dtype=np.uint8)
    for c, (_, _, w, h) in zip(cls[:1000], boxes[:1000]):
        x1, y1 = int(500 - w * 500), int(500 - h * 500)
        cv2.rectangle(canvas, (x1, y1), (int(500 + w * 500), int(500 + h * 500)), colors(int(c)), 1)
    ax[1].imshow(canvas)
    ax[1].axis("off")
    for a, (i, j, xl, yl) in zip(ax[2:], ((0, 1, "x", "y"), (2, 3, "width", "height"))):
        a.hist2d(boxes[:, i], boxes[:, j], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
        a.set(xlabel=xl, ylabel=yl)
    out.insert(0, save_figure(plt, fig, save_dir / "labels.jpg", dpi=200))
    return out
