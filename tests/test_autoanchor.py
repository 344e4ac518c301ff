"""AutoAnchor: fit metric by hand, best possible recall, k-means (scipy and numpy) and in-place anchor updates."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.yolo import DetectionModel
from utils.train.autoanchor import anchor_fit, anchor_stats, check_anchors, kmean_anchors, kmeans, label_wh

CENTRES = np.array([[10.0, 12.0], [40.0, 24.0], [110.0, 130.0]])


def _boxes(n_per: int = 200, spread: float = 0.08, seed: int = 0) -> np.ndarray:
    """Box sizes (pixels) scattered multiplicatively around three known centres."""
    rng = np.random.default_rng(seed)
    return np.concatenate([c * np.exp(rng.normal(0, spread, (n_per, 2))) for c in CENTRES])


def test_anchor_fit_by_hand():
    wh = np.array([[10.0, 20.0], [40.0, 40.0]])
    anchors = np.array([[20.0, 20.0], [10.0, 10.0]])
    # box 1 vs anchor 1: ratios 0.5, 1 -> 0.5; vs anchor 2: 1, 2 -> 0.5. box 2: 2, 2 -> 0.5; 4, 4 -> 0.25
    assert np.allclose(anchor_fit(wh, anchors), [[0.5, 0.5], [0.5, 0.25]])


def test_bpr_and_anchors_above_threshold():
    anchors = np.array([[10.0, 10.0], [20.0, 20.0]])
    assert anchor_stats(anchors, anchors, thr=4.0) == (1.0, 2.0)  # each fits itself and the other (ratio 2)
    far = anchors * 10  # best ratios 1/5 and 1/10, both < 1/4
    assert anchor_stats(far, anchors, thr=4.0) == (0.0, 0.0)
    bpr, _ = anchor_stats(np.vstack([anchors, far]), anchors, thr=4.0)
    assert bpr == 0.5


def test_label_wh_letterbox_scale():
    shapes = np.array([[200, 100], [50, 100]])  # w, h
    labels = [np.array([[0, 0.5, 0.5, 0.5, 0.5]]), np.array([[1, 0.5, 0.5, 1.0, 0.1]])]
    wh = label_wh(shapes, labels, imgsz=100)
    assert np.allclose(wh, [[50, 25], [50, 10]])


@pytest.mark.parametrize("scipy_present", [True, False])
def test_kmeans_recovers_clusters(monkeypatch, scipy_present):
    if not scipy_present:
        monkeypatch.setitem(sys.modules, "scipy.cluster.vq", None)  # import fails -> numpy k-means
    wh = _boxes()
    s = wh.std(0)
    c = kmeans(wh / s, 3, np.random.default_rng(1)) * s
    c = c[np.argsort(c.prod(1))]
    assert np.allclose(c, CENTRES, rtol=0.1)


def test_kmean_anchors_sorted_and_full_recall():
    wh = _boxes()
    k = kmean_anchors(wh, n=3, thr=4.0, gen=200, seed=0)
    assert k.shape == (3, 2) and np.all(np.diff(k.prod(1)) > 0)
    assert anchor_stats(wh, k, 4.0)[0] == 1.0
    assert np.allclose(k, CENTRES, rtol=0.25)


def _dataset(scale: float = 1.0) -> SimpleNamespace:
    """A fake dataset (shapes, labels) whose boxes at imgsz 320 are the three cluster sizes times scale."""
    wh = _boxes(60) * scale / 320
    labels = [np.column_stack([np.zeros(len(b)), np.full((len(b), 2), 0.5), b]) for b in np.array_split(wh, 30)]
    return SimpleNamespace(shapes=np.full((30, 2), 640), labels=labels)


def test_check_anchors_replaces_bad_anchors_in_grid_units():
    model = DetectionModel("yolov5n.yaml", nc=3)
    det = model.model[-1]
    with torch.no_grad():
        det.anchors.mul_(40)  # far too large for the boxes
    ref = det.anchors  # the loss keeps this reference: the update must be in place
    assert check_anchors(_dataset(), model, thr=4.0, imgsz=320)
    assert det.anchors is ref
    px = (det.anchors * det.stride.view(-1, 1, 1)).view(-1, 2).numpy()
    assert anchor_stats(_boxes(60), px, 4.0)[0] > 0.98
    assert np.all(np.diff(px.prod(1)) >= 0)  # smallest anchors on the finest level


def test_check_anchors_keeps_good_anchors():
    model = DetectionModel("yolov5n.yaml", nc=3)
    before = model.model[-1].anchors.clone()
    assert not check_anchors(_dataset(), model, thr=4.0, imgsz=320)
    assert torch.equal(model.model[-1].anchors, before)
