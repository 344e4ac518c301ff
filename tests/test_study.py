"""utils/eval/study.py: val.py --task study's rows per image size, their files and the plot."""

from __future__ import annotations

import cv2
import numpy as np

from utils.eval.study import COLUMNS, run_study


def test_study_validates_each_weights_at_each_size_and_writes_upstreams_columns(tmp_path):
    calls = []

    def fake_run(weights, data, imgsz, project, name, **kwargs):
        calls.append((weights, imgsz, name, kwargs["plots"], kwargs["conf_thres"]))
        bigger = 0.1 if weights == "b.pt" else 0.0
        return (0.5, 0.4, imgsz / 1000 + bigger, imgsz / 2000 + bigger, 0.01, 0.02, 0.03), None, (1.0, imgsz / 10, 2.0)

    rows = run_study(fake_run, ["a.pt", "b.pt"], "data/coco128.yaml", tmp_path, sizes=(256, 384), conf_thres=0.01)
    assert calls == [("a.pt", 256, "a_256", False, 0.01), ("a.pt", 384, "a_384", False, 0.01),
                     ("b.pt", 256, "b_256", False, 0.01), ("b.pt", 384, "b_384", False, 0.01)]
    assert rows["b.pt"].shape == (2, len(COLUMNS)) and rows["b.pt"][1, 3] == 0.384 / 2 + 0.1
    txt = tmp_path / "study_coco128_a.txt"
    y = np.loadtxt(txt, usecols=[0, 1, 2, 3, 7, 8, 9], ndmin=2)  # the columns upstream's plot_val_study reads
    assert y.shape == (2, 7) and y[:, 5].tolist() == [25.6, 38.4]
    assert txt.read_text().startswith("# P R mAP50 mAP50-95") and "256 384" in txt.read_text().splitlines()[0]
    assert cv2.imread(str(tmp_path / "study.png")) is not None
