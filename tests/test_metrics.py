"""Tests for utils/eval/metrics.py: AP integration, per-class metrics, matching, fitness, confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.eval.metrics import ConfusionMatrix, ap_per_class, compute_ap, fitness, process_batch, smooth

IOUV = torch.linspace(0.5, 0.95, 10)


def test_compute_ap_perfect_is_one():
    ap, mpre, mrec = compute_ap(np.array([0.25, 0.5, 0.75, 1.0]), np.ones(4))
    assert ap == pytest.approx(1.0)
    assert mrec[0] == 0 and mrec[-1] == 1 and np.all(np.diff(mpre) <= 0)


def test_compute_ap_hand_computed():
    # one of two labels found at precision 1, then nothing: area 0.5 * 1 + triangle 0.5 * 1 / 2 (ramp to (1, 0))
    assert compute_ap(np.array([0.5]), np.array([1.0]))[0] == pytest.approx(0.75)
    # TP, FP, TP over 2 labels: envelope 1 up to recall 0.5, then 2/3 -> 0.5 + 0.5 * 2/3 (one grid step of slack)
    ap, _, _ = compute_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(5 / 6, abs=2e-3)
    # nothing found
    assert compute_ap(np.zeros(3), np.zeros(3))[0] == 0


def test_compute_ap_coco_rule():
    assert compute_ap(np.array([0.5, 1.0]), np.ones(2), "coco")[0] == pytest.approx(1.0)
    assert compute_ap(np.array([0.5]), np.array([1.0]), "coco")[0] == pytest.approx(51 / 101)  # r = 0 .. 0.5
    # TP, FP, TP over 2 labels: envelope 1 for r <= 0.5 (51 samples), 2/3 for 0.51 .. 1 (50 samples)
    ap = compute_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]), "coco")[0]
    assert ap == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert compute_ap(np.zeros(0), np.zeros(0), "coco")[0] == 0
    with pytest.raises(ValueError, match="interp"):
        compute_ap(np.ones(1), np.ones(1), "voc")


def test_smooth_window_and_constant():
    y = np.full(1000, 0.3)
    assert np.allclose(smooth(y, 0.1), 0.3) and smooth(y, 0.1).shape == (1000,)
    step = smooth(np.r_[np.zeros(500), np.ones(500)], 0.1)
    assert step[449] == 0 and step[550] == 1 and 0 < step[500] < 1  # 101-point window


def test_ap_per_class_missing_predictions_and_labels():
    tp = np.array([[1] * 10, [0] * 10, [1] * 10, [1] * 10], dtype=bool)
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    pred_cls = np.array([0, 0, 0, 2])  # class 2 has no labels: ignored
    target_cls = np.array([0, 0, 1])  # class 1 has no predictions: zeros
    tp_c, fp_c, p, r, f1, ap, classes = ap_per_class(tp, conf, pred_cls, target_cls)
    assert classes.tolist() == [0, 1] and ap.shape == (2, 10)
    for a in (tp_c, fp_c, p, r, f1, ap):
        assert np.isfinite(a).all()
    assert ap[0, 0] == pytest.approx(5 / 6, abs=2e-3) and np.all(ap[1] == 0)
    assert r[0] == pytest.approx(1.0) and p[0] == pytest.approx(2 / 3, abs=1e-3)
    assert p[1] == 0 and r[1] == 0


def test_ap_per_class_no_predictions_no_labels():
    out = ap_per_class(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.array([0, 1, 1]))
    assert all(np.isfinite(a).all() for a in out) and np.all(out[5] == 0) and out[5].shape == (2, 10)
    out = ap_per_class(np.ones((2, 10), bool), np.array([0.5, 0.4]), np.array([0, 0]), np.zeros(0))
    assert out[5].shape == (0, 10) and len(out[6]) == 0


def test_ap_per_class_perfect():
    tp = np.ones((5, 10), bool)
    _, fp_c, p, r, _, ap, _ = ap_per_class(tp, np.linspace(0.9, 0.5, 5), np.zeros(5), np.zeros(5))
    assert np.allclose(ap, 1.0) and p[0] == pytest.approx(1) and r[0] == pytest.approx(1) and fp_c[0] == 0


def test_process_batch_hand_made():
    labels = torch.tensor([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30], [1, 0, 0, 10, 10]], dtype=torch.float32)
    dets = torch.tensor([
        [0, 0, 10, 10, 0.9, 0],  # exact match of label 0
        [1, 0, 11, 10, 0.8, 0],  # IoU 0.818 with label 0, already taken
        [20, 20, 30, 35, 0.7, 0],  # IoU 2/3 with label 1
        [0, 0, 10, 10, 0.6, 2],  # wrong class
        [0, 0, 10, 5, 0.5, 1],  # IoU 0.5 with label 2 (>= counts)
    ])
    correct = process_batch(dets, labels, IOUV)
    assert correct.dtype == torch.bool and correct.shape == (5, 10)
    assert correct[0].all() and not correct[1].any() and not correct[3].any()
    assert correct[2].tolist() == [True] * 4 + [False] * 6  # 0.5 .. 0.65
    assert correct[4].tolist() == [True] + [False] * 9


def test_process_batch_one_to_one_falls_back_to_second_label():
    labels = torch.tensor([[0, 0, 0, 10, 10], [0, 2, 0, 12, 10]], dtype=torch.float32)
    dets = torch.tensor([[0, 0, 10, 10, 0.9, 0], [0.5, 0, 10.5, 10, 0.8, 0]])  # det 1: IoU 0.905 / 0.739
    correct = process_batch(dets, labels, IOUV)
    assert correct[:, 0].tolist() == [True, True]  # COCO: det 1 takes label 1 once label 0 is taken
    assert correct[1].sum() == 5  # IoU 0.739 passes 0.5 .. 0.70
    upstream = process_batch(dets, labels, IOUV, rule="yolov5")
    assert upstream[:, 0].tolist() == [True, False]  # YOLOv5: det 1 only ever wanted label 0


def test_process_batch_confidence_order_wins():
    labels = torch.tensor([[3, 0, 0, 10, 10]], dtype=torch.float32)
    a = [0, 0, 10, 13, 0.9, 3]  # higher score, IoU 100 / 130 = 0.769
    b = [0, 0, 10, 10, 0.8, 3]  # lower score, IoU 1
    expected_a, expected_b = [True] * 6 + [False] * 4, [False] * 6 + [True] * 4
    correct = process_batch(torch.tensor([b, a]), labels, IOUV)  # coco rule sorts by confidence itself
    assert correct[1].tolist() == expected_a and correct[0].tolist() == expected_b
    upstream = process_batch(torch.tensor([a, b]), labels, IOUV, rule="yolov5")  # NMS order
    assert upstream[0].tolist() == expected_a and upstream[1].tolist() == expected_b
    with pytest.raises(ValueError, match="rule"):
        process_batch(torch.tensor([a]), labels, IOUV, rule="iou")


def test_process_batch_empty():
    assert process_batch(torch.zeros(0, 6), torch.zeros(3, 5), IOUV).shape == (0, 10)
    assert not process_batch(torch.tensor([[0, 0, 1, 1, 0.5, 0]]), torch.zeros(0, 5), IOUV).any()


def test_fitness():
    assert fitness(np.array([[0.5, 0.5, 0.6, 0.4]])) == pytest.approx([0.42])
    assert fitness([1, 1, 1, 1, 0.3, 0.2, 0.1]) == pytest.approx([1.0])  # extra columns (losses) ignored


def test_confusion_matrix_counts():
    cm = ConfusionMatrix(nc=2, conf=0.25, iou_thres=0.45)
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [1, 50, 50, 60, 60]], dtype=torch.float32)
    dets = torch.tensor([
        [0, 0, 10, 10, 0.9, 0],  # right class
        [20, 20, 30, 30, 0.8, 0],  # predicted 0, true 1
        [80, 80, 90, 90, 0.7, 1],  # no label: background false positive
        [50, 50, 60, 60, 0.1, 1],  # below conf: label 2 is missed
    ])
    cm.process_batch(dets, labels)
    cm.process_batch(None, torch.tensor([[0, 0, 0, 5, 5]], dtype=torch.float32))  # image without predictions
    cm.process_batch(torch.tensor([[0, 0, 5, 5, 0.9, 1]]), torch.zeros(0, 5))  # image without labels
    expected = np.array([[1, 1, 0], [0, 0, 2], [1, 1, 0]])  # rows predicted, columns true, index 2 background
    assert np.array_equal(cm.matrix, expected)
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0] and fp.tolist() == [1, 2]
