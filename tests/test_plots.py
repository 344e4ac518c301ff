"""Tests for utils/plots.py: every plot writes a readable, non-empty image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.eval.metrics import ConfusionMatrix, ap_per_class
from utils.plots import (
    Annotator,
    colors,
    output_to_target,
    plot_images,
    plot_labels,
    plot_mc_curve,
    plot_pr_curve,
    plot_results,
)

REFERENCE_COLUMNS = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
                     "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss",
                     "val/cls_loss", "x/lr0", "x/lr1", "x/lr2"]


def assert_image(path: Path, min_side: int = 50) -> np.ndarray:
    """The file exists, is non-empty and decodes as an image of a sensible size."""
    assert path.is_file() and path.stat().st_size > 0, path
    im = cv2.imread(str(path))
    assert im is not None and min(im.shape[:2]) >= min_side, path
    return im


def test_colors():
    assert colors(3) == colors(3, bgr=True)[::-1]
    assert len({colors(i) for i in range(20)}) == 20
    assert all(0 <= v <= 255 for v in colors(7))


def test_annotator_draws():
    im = np.zeros((100, 120, 3), np.uint8)
    ann = Annotator(im)
    ann.box_label([10, 30, 60, 80], "person 0.9", colors(0))
    ann.box_label([5, 0, 50, 40], "tag inside", colors(1))  # no room above: tag drawn inside
    out = ann.result()
    assert out.shape == im.shape and out.any() and not im.any()  # draws on a copy


def test_plot_images_labels_and_predictions(tmp_path):
    imgs = torch.randint(0, 255, (5, 3, 64, 96), dtype=torch.uint8)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [3, 0, 0.2, 0.3, 0.1, 0.2]])
    f = plot_images(imgs, targets, paths=[f"im{i}.jpg" for i in range(5)], fname=tmp_path / "labels.jpg",
                    names={0: "cat", 1: "dog"})
    im = assert_image(f)
    assert im.shape[:2] == (3 * 64, 3 * 96)  # 3 x 3 tiles for 5 images
    out = [torch.tensor([[10.0, 10, 50, 40, 0.9, 1], [0, 0, 5, 5, 0.1, 0]]), torch.zeros(0, 6)]
    t = output_to_target(out)
    assert t.shape == (2, 7) and t[0].tolist() == pytest.approx([0, 1, 30, 25, 40, 30, 0.9])
    assert_image(plot_images(imgs.float() / 255, t, fname=tmp_path / "pred.jpg"))
    assert_image(plot_images(imgs[:1], torch.zeros(0, 6), fname=tmp_path / "empty.jpg"))
    assert output_to_target([]).shape == (0, 7)


def test_plot_images_downscales_large_batches(tmp_path):
    imgs = np.zeros((16, 3, 640, 640), np.uint8)
    targets = np.array([[15, 2, 320, 320, 100, 100]], dtype=float)  # pixels
    im = assert_image(plot_images(imgs, targets, fname=tmp_path / "big.jpg"))
    assert max(im.shape[:2]) <= 1920


def test_curves_from_ap_per_class(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    tp = rng.random((n, 10)) < np.linspace(0.8, 0.2, 10)
    conf, pred_cls = rng.random(n), rng.integers(0, 3, n)
    ap_per_class(tp, conf, pred_cls, rng.integers(0, 3, 150), plot=True, save_dir=tmp_path, names={0: "a", 1: "b"})
    for name in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"):
        assert_image(tmp_path / name)
    px = np.linspace(0, 1, 1000)
    assert_image(plot_pr_curve(px, np.zeros((30, 1000)), np.zeros((30, 10)), tmp_path / "pr_many.png"))
    assert_image(plot_mc_curve(px, np.zeros((0, 1000)), tmp_path / "mc_none.png"))


def test_confusion_matrix_plot(tmp_path):
    cm = ConfusionMatrix(nc=3)
    cm.matrix = np.array([[5, 1, 0, 2], [0, 4, 1, 0], [1, 0, 3, 1], [2, 1, 0, 0]], dtype=float)
    assert_image(cm.plot(save_dir=tmp_path, names=["a", "b", "c"]))
    assert (tmp_path / "confusion_matrix.png").is_file()
    assert_image(cm.plot(normalize=False, save_dir=tmp_path / "raw", names=()))


def test_plot_results(tmp_path):
    import pandas as pd

    epochs = 6
    data = {c: np.linspace(1, 0.1, epochs) for c in REFERENCE_COLUMNS}
    data["epoch"] = np.arange(epochs)
    df = pd.DataFrame(data)
    df.columns = [f"{c:>20s}" for c in df.columns]  # upstream pads the names with spaces
    df.to_csv(tmp_path / "results.csv", index=False)
    out = plot_results(tmp_path / "results.csv")
    assert out == tmp_path / "results.png"
    assert_image(out)


def test_plot_labels(tmp_path):
    rng = np.random.default_rng(1)
    n = 3000
    labels = np.c_[rng.integers(0, 4, n), rng.random((n, 2)), rng.random((n, 2)) * 0.3]
    files = plot_labels(labels, names=["a", "b", "c", "d"], save_dir=tmp_path)
    assert {f.name for f in files} == {"labels.jpg", "labels_correlogram.jpg"}
    for f in files:
        assert_image(f)
    assert [f.name for f in plot_labels(np.zeros((0, 5)), names=["a"], save_dir=tmp_path / "e")] == ["labels.jpg"]
