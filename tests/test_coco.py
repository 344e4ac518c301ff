"""Tests for utils/eval/coco.py: COCO conversion and the pycocotools cross-check of our mAP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.boxes import xywhn2xyxy
from utils.eval.coco import (
    COCO80_TO_91,
    CocoScoring,
    coco_evaluate,
    coco_image_ids,
    coco_scoring,
    detections_to_coco,
    is_coco_val,
    official_coco_annotations,
    save_json,
    yolo_to_coco_gt,
)
from utils.eval.metrics import ap_per_class, process_batch

pytest.importorskip("pycocotools")
NAMES = ["cat", "dog", "bird"]
IOUV = torch.linspace(0.5, 0.95, 10)


def make_dataset(n_images: int = 40, seed: int = 0):
    """Random YOLO labels: files, list of (k, 5) cls+xywhn, shapes (n, 2) w, h."""
    rng = np.random.default_rng(seed)
    files = [f"images/{i:012d}.jpg" for i in range(1, n_images + 1)]
    shapes = np.c_[rng.integers(200, 640, n_images), rng.integers(200, 640, n_images)]
    labels = []
    for _ in range(n_images):
        k = int(rng.integers(1, 9))
        wh = rng.uniform(0.05, 0.4, (k, 2))
        xy = rng.uniform(wh / 2, 1 - wh / 2)
        labels.append(np.c_[rng.integers(0, len(NAMES), k), xy, wh])
    return files, labels, shapes


def noisy_predictions(labels, shapes, seed: int = 1, n_fp: int = 40) -> list[torch.Tensor]:
    """Per image (n, 6) xyxy pixels, conf, cls: jittered labels (some missed, some wrong class) plus n_fp false
    positives with mostly low scores, as a detector run at conf_thres 0.001 produces (and at most 100 rows)."""
    rng = np.random.default_rng(seed)
    out = []
    for lb, (w, h) in zip(labels, shapes):
        boxes = xywhn2xyxy(lb[:, 1:], w, h)
        size = np.repeat(boxes[:, 2:] - boxes[:, :2], 2, 0).reshape(-1, 4)
        boxes = boxes + rng.normal(0, 0.06, boxes.shape) * size
        cls = np.where(rng.random(len(lb)) < 0.1, rng.integers(0, len(NAMES), len(lb)), lb[:, 0])
        keep = rng.random(len(lb)) > 0.1
        conf = rng.uniform(0.3, 1.0, len(lb))
        dup = rng.random(len(lb)) < 0.4  # duplicates that NMS at IoU 0.6 would keep, scored lower
        dup_boxes = boxes[dup] + rng.normal(0, 0.1, (int(dup.sum()), 4)) * size[dup]
        boxes, cls = np.r_[boxes, dup_boxes], np.r_[cls, cls[dup]]
        keep, conf = np.r_[keep, keep[dup]], np.r_[conf, conf[dup] * rng.uniform(0.3, 1.0, int(dup.sum()))]
        fp_xy = rng.uniform(0, 0.7, (n_fp, 2)) * (w, h)
        fp = np.c_[fp_xy, fp_xy + rng.uniform(20, 100, (n_fp, 2))]
        fp_conf = 0.001 + 0.6 * rng.random(n_fp) ** 3
        det = np.r_[np.c_[boxes, conf, cls][keep], np.c_[fp, fp_conf, rng.integers(0, len(NAMES), n_fp)]]
        out.append(torch.tensor(det[np.argsort(-det[:, 4])], dtype=torch.float32))
    return out


def our_map(labels, shapes, preds, ap_method: str = "interp") -> tuple[float, float]:
    """(mAP50-95, mAP50) by process_batch + ap_per_class."""
    stats = []
    for lb, (w, h), det in zip(labels, shapes, preds):
        tl = torch.tensor(np.c_[lb[:, :1], xywhn2xyxy(lb[:, 1:], w, h)], dtype=torch.float32)
        stats.append((process_batch(det, tl, IOUV), det[:, 4], det[:, 5], tl[:, 0]))
    tp, conf, pcls, tcls = (torch.cat(x, 0).numpy() for x in zip(*stats))
    ap = ap_per_class(tp, conf, pcls, tcls, ap_method=ap_method)[5]
    return float(ap.mean()), float(ap[:, 0].mean())


def test_image_ids_numeric_stems_else_stems_else_paths():
    assert coco_image_ids(["a/000000000139.jpg", "b/42.png"]) == [139, 42]
    assert coco_image_ids(["a/139.jpg", "b/bus.jpg"]) == ["139", "bus"]  # as upstream YOLOv5: the file stem
    assert coco_image_ids(["a/7.jpg", "b/007.jpg"]) == ["7", "007"]  # not unique as integers
    assert coco_image_ids(["d/train/a.jpg", "d/val/a.png"]) == ["train/a", "val/a"]  # one stem twice


def test_file_stem_ids_score_as_numeric_ids_do():
    files, labels, shapes = make_dataset(n_images=12)
    named = [f"images/pic_{Path(f).stem[-3:]}.jpg" for f in files]
    preds = noisy_predictions(labels, shapes)
    scores = []
    for fs in (files, named):
        dets = [d for i, p in zip(coco_image_ids(fs), preds) for d in detections_to_coco(p, i)]
        scores.append(coco_evaluate(yolo_to_coco_gt(fs, labels, shapes, NAMES), dets))
    assert coco_image_ids(named)[0] == "pic_001" and scores[1] == pytest.approx(scores[0], abs=1e-9)


def test_coco_category_ids_and_val2017_detection(tmp_path):
    assert len(COCO80_TO_91) == 80 and COCO80_TO_91[:12] == [*range(1, 12), 13] and COCO80_TO_91[-1] == 90
    assert is_coco_val({"val": "/data/coco/val2017.txt"}) and not is_coco_val({"val": "/data/coco/images/val2017"})
    assert official_coco_annotations({"path": str(tmp_path)}) is None
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    assert official_coco_annotations({"path": str(tmp_path)}) == tmp_path / "annotations" / "instances_val2017.json"
    coco = {"path": str(tmp_path), "val": f"{tmp_path}/coco/val2017.txt", "train": f"{tmp_path}/coco/train2017.txt"}
    official = tmp_path / "annotations" / "instances_val2017.json"
    assert coco_scoring(coco, "val", 80) == CocoScoring(COCO80_TO_91, official)
    assert coco_scoring(coco, "train", 80) == CocoScoring(COCO80_TO_91, None)  # not val2017: its labels, converted
    assert coco_scoring(coco, "val", 1) == CocoScoring() == coco_scoring({"val": "x/val.txt"}, "val", 80)


def test_gt_conversion():
    gt = yolo_to_coco_gt(["x/5.jpg"], [np.array([[2, 0.5, 0.5, 0.5, 0.25]])], np.array([[200, 100]]), NAMES)
    assert gt["images"] == [{"id": 5, "file_name": "5.jpg", "width": 200, "height": 100}]
    (ann,) = gt["annotations"]
    assert ann["bbox"] == [50, 37.5, 100, 25] and ann["area"] == 2500
    assert ann["category_id"] == 2 and ann["id"] == 1 and ann["iscrowd"] == 0
    assert [c["id"] for c in gt["categories"]] == [0, 1, 2]


def test_detections_to_coco():
    d = detections_to_coco(torch.tensor([[10.12345, 20, 30, 60, 0.123456789, 1]]), 7, class_map=[1, 2, 3])
    assert d == [{"image_id": 7, "category_id": 2, "bbox": [10.123, 20.0, 19.877, 40.0], "score": 0.12346}]
    assert detections_to_coco(torch.zeros(0, 6), 3) == []


def test_perfect_predictions_give_one(tmp_path):
    files, labels, shapes = make_dataset(10)
    gt = yolo_to_coco_gt(files, labels, shapes, NAMES)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"]]
    assert coco_evaluate(gt, dets) == pytest.approx((1.0, 1.0))
    gt_file, det_file = save_json(gt, tmp_path / "gt.json"), save_json(dets, tmp_path / "dets.json")
    assert json.loads(det_file.read_text())[0]["score"] == 1.0
    assert coco_evaluate(gt_file, det_file) == pytest.approx((1.0, 1.0))
    assert coco_evaluate(gt, []) == (0.0, 0.0)


def coco_case(n_fp: int = 40):
    """Labels, predictions and pycocotools' (mAP50-95, mAP50) of the noisy example."""
    files, labels, shapes = make_dataset()
    preds = noisy_predictions(labels, shapes, n_fp=n_fp)
    assert max(len(p) for p in preds) <= 100  # within COCO's maxDets, so it does not drop any
    gt = yolo_to_coco_gt(files, labels, shapes, NAMES)
    dets = [d for img_id, p in zip(coco_image_ids(files), preds) for d in detections_to_coco(p, img_id)]
    return labels, shapes, preds, coco_evaluate(gt, dets)


def test_our_map_agrees_with_pycocotools():
    labels, shapes, preds, (ref50_95, ref50) = coco_case()
    ours50_95, ours50 = our_map(labels, shapes, preds)
    assert 0.3 < ref50_95 < 0.9  # a non-trivial case
    assert ours50_95 == pytest.approx(ref50_95, abs=0.02)
    assert ours50 == pytest.approx(ref50, abs=0.02)
    # with pycocotools' integration rule the matching is shown to agree exactly
    assert our_map(labels, shapes, preds, "coco") == pytest.approx((ref50_95, ref50), abs=1e-6)


def test_ramp_is_the_only_difference_without_low_score_tail():
    labels, shapes, preds, ref = coco_case(n_fp=0)  # no low-score predictions: p_last stays high
    assert our_map(labels, shapes, preds, "coco") == pytest.approx(ref, abs=1e-6)
    assert our_map(labels, shapes, preds)[0] > ref[0] + 0.02  # YOLOv5's ramp to (1, 0) inflates AP here
