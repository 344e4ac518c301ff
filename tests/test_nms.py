"""Tests for utils/nms.py on hand-made predictions."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from utils import nms
from utils.errors import ConfigError
from utils.log import get_logger
from utils.nms import non_max_suppression


def row(cx: float, cy: float, w: float, h: float, obj: float, *cls: float) -> list[float]:
    """One prediction row: xywh pixels, objectness, class scores."""
    return [cx, cy, w, h, obj, *cls]


def pred(*rows: list[float]) -> torch.Tensor:
    """Batch of one image (1, N, 5 + nc)."""
    return torch.tensor([list(r) for r in rows], dtype=torch.float32)[None]


def test_overlapping_same_class_suppressed():
    p = pred(row(50, 50, 20, 20, 0.9, 0.9, 0.1), row(51, 50, 20, 20, 0.8, 0.9, 0.1))
    (out,) = non_max_suppression(p)
    assert out.shape == (1, 6)
    assert torch.allclose(out[0], torch.tensor([40, 40, 60, 60, 0.81, 0]))  # xyxy, conf = obj * cls


def test_different_classes_kept_unless_agnostic():
    p = pred(row(50, 50, 20, 20, 0.9, 0.9, 0.1), row(51, 50, 20, 20, 0.8, 0.1, 0.9))
    assert non_max_suppression(p)[0].shape[0] == 2
    out = non_max_suppression(p, agnostic=True)[0]
    assert out.shape[0] == 1 and out[0, 5] == 0


def test_labels_join_as_confidence_one_detections_for_save_hybrid():
    p = pred(row(50, 50, 20, 20, 0.9, 0.9, 0.1), row(150, 50, 20, 20, 0.9, 0.9, 0.1))
    labels = [torch.tensor([[0, 51, 50, 20, 20], [1, 300, 300, 10, 10]])]  # cls, cx, cy, w, h in input pixels
    (out,) = non_max_suppression(p, labels=labels)
    assert out[:, 4].tolist() == pytest.approx([1, 1, 0.81])  # the labels first; the box under label 0 suppressed
    assert sorted(out[:2, 5].tolist()) == [0, 1] and out[2, 5] == 0 and out[2, 0] == 140  # the far box stays
    assert [41, 40, 61, 60] in out[:2, :4].tolist()  # label 0 as x1, y1, x2, y2
    (only,) = non_max_suppression(pred(row(50, 50, 20, 20, 0.0001, 0.9, 0.1)), labels=labels)
    assert only.shape == (2, 6)  # no prediction above conf_thres: the labels alone


def test_non_overlapping_kept_sorted_by_conf():
    p = pred(row(20, 20, 10, 10, 0.6, 1.0), row(80, 80, 10, 10, 0.9, 1.0))
    out = non_max_suppression(p)[0]
    assert out[:, 4].tolist() == pytest.approx([0.9, 0.6])


def test_objectness_filter_before_score():
    p = pred(row(50, 50, 20, 20, 0.2, 1.0, 0.0), row(90, 90, 10, 10, 0.5, 0.4, 0.1))
    out = non_max_suppression(p, conf_thres=0.25)[0]
    assert out.shape[0] == 0  # obj 0.2 fails the objectness filter; 0.5 * 0.4 = 0.2 fails the score filter


def test_classes_filter():
    p = pred(row(20, 20, 10, 10, 0.9, 0.9, 0.0, 0.0), row(80, 80, 10, 10, 0.9, 0.0, 0.0, 0.9))
    out = non_max_suppression(p, classes=[2])[0]
    assert out[:, 5].tolist() == [2.0]


def test_max_det():
    rows = [row(10 + 30 * i, 10, 10, 10, 0.9 - 0.01 * i, 1.0) for i in range(10)]
    out = non_max_suppression(pred(*rows), max_det=3)[0]
    assert out.shape[0] == 3
    assert out[:, 4].tolist() == pytest.approx([0.9, 0.89, 0.88])


def test_multi_label_two_rows_exclusive_one():
    p = pred(row(50, 50, 20, 20, 1.0, 0.8, 0.6, 0.1))
    out = non_max_suppression(p, multi_label=True)[0]
    assert sorted(out[:, 5].tolist()) == [0.0, 1.0]
    assert non_max_suppression(p, multi_label=True, exclusive=True)[0].shape[0] == 1
    assert non_max_suppression(p)[0].shape[0] == 1


def test_empty_and_tuple_input():
    p = torch.zeros(2, 0, 7)
    out = non_max_suppression((p, [torch.zeros(1)]))
    assert len(out) == 2 and all(o.shape == (0, 6) for o in out)
    low = torch.rand(2, 50, 7) * torch.tensor([100, 100, 10, 10, 0.1, 1, 1])
    assert all(o.shape == (0, 6) for o in non_max_suppression(low))


class _ListHandler(logging.Handler):
    """Collect log records in a list."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_time_limit_only_warns(monkeypatch):
    monkeypatch.setitem(nms._state, "warned_slow", False)
    logger, handler = get_logger(), _ListHandler()
    logger.addHandler(handler)
    try:
        p = pred(row(50, 50, 20, 20, 0.9, 0.9)).repeat(3, 1, 1)
        outs = [non_max_suppression(p, time_limit=0.0) for _ in range(2)]
    finally:
        logger.removeHandler(handler)
    assert all([o.shape[0] for o in out] == [1, 1, 1] for out in outs)  # every image processed, none truncated
    assert sum("time limit" in r.getMessage() for r in handler.records) == 1  # warned once


def test_batched_equals_one_by_one():
    torch.manual_seed(0)
    p = torch.rand(3, 200, 8) * torch.tensor([640, 640, 80, 80, 1, 1, 1, 1])
    batched = non_max_suppression(p, conf_thres=0.1, iou_thres=0.5)
    for i in range(3):
        single = non_max_suppression(p[i:i + 1], conf_thres=0.1, iou_thres=0.5)[0]
        assert torch.equal(batched[i], single)
        assert batched[i].shape[0] > 0


@pytest.mark.parametrize("n, max_det", [(1, 1), (50, 300), (3000, 10), (9000, 300)])
def test_first_kept_equals_full_batched_nms(n, max_det):
    """Suppressing only until max_det boxes are kept gives exactly torchvision's full result, cut to max_det."""
    g = torch.Generator().manual_seed(n)
    xy, wh = torch.rand(n, 2, generator=g) * 320, torch.rand(n, 2, generator=g) * 60 + 2
    scores = torch.rand(n, generator=g).sort(descending=True).values
    boxes, groups = torch.cat((xy, xy + wh), 1), torch.randint(0, 6, (n,), generator=g).float()
    full = torchvision.ops.batched_nms(boxes, scores, groups, 0.6)[:max_det]
    assert torch.equal(nms.first_kept(boxes, scores, groups, 0.6, max_det), full)
    assert len(full) == min(max_det, len(torchvision.ops.batched_nms(boxes, scores, groups, 0.6)))


def test_thresholds_outside_zero_one_are_a_config_error():
    p = torch.zeros(1, 4, 7)
    with pytest.raises(ConfigError, match=r"--conf-thres 2 and --iou-thres 0.45 must each lie in \[0, 1\]"):
        non_max_suppression(p, conf_thres=2, iou_thres=0.45)
    with pytest.raises(ConfigError, match="--iou-thres -1"):
        non_max_suppression(p, iou_thres=-1)
