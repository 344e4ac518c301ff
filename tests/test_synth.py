"""Tests of the built-in procedural dataset: determinism, class/size/occlusion properties, manifest handling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from utils.data import synth
from utils.errors import DatasetError


def _label_bytes(root):
    """Mapping relative label path -> file bytes for a generated folder."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob("labels/*/*.txt"))}


def test_same_seed_gives_identical_files(tmp_path):
    a = synth.generate(tmp_path / "a", seed=3, n_train=5, n_val=2, imgsz=96)
    b = synth.generate(tmp_path / "b", seed=3, n_train=5, n_val=2, imgsz=96)
    c = synth.generate(tmp_path / "c", seed=4, n_train=5, n_val=2, imgsz=96)
    assert len(_label_bytes(a)) == 7
    assert _label_bytes(a) == _label_bytes(b)
    assert _label_bytes(a) != _label_bytes(c)
    assert (a / "images/train/train_00000.jpg").read_bytes() == (b / "images/train/train_00000.jpg").read_bytes()
    assert sorted(p.name for p in (a / "images/val").iterdir()) == ["val_00000.jpg", "val_00001.jpg"]


@pytest.fixture(scope="module")
def sample_labels():
    """Labels of 120 images drawn in memory at 320 px."""
    return [synth.draw_image(np.random.default_rng([0, 0, i]), 320)[1] for i in range(120)]


def test_classes_sizes_and_imbalance(sample_labels):
    lb = np.concatenate(sample_labels)
    assert ((lb[:, 1:] >= 0) & (lb[:, 1:] <= 1)).all()
    counts = np.bincount(lb[:, 0].astype(int), minlength=len(synth.CLASS_NAMES))
    assert (counts > 0).all(), counts  # every class present
    star = synth.CLASS_NAMES.index("star")
    assert 0.05 < counts[star] / counts.sum() < 0.14  # rare class
    assert counts.max() >= 2 * counts[star]
    side = lb[:, 3:].max(1) * 320
    assert (side < 16).mean() > 0.05  # small objects
    assert side.max() > 80  # and large ones


def test_objects_overlap(sample_labels):
    def overlaps(lb):
        x1, y1 = lb[:, 1] - lb[:, 3] / 2, lb[:, 2] - lb[:, 4] / 2
        x2, y2 = lb[:, 1] + lb[:, 3] / 2, lb[:, 2] + lb[:, 4] / 2
        ix = np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1)
        iy = np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1)
        hit = (ix > 0.01) & (iy > 0.01)
        np.fill_diagonal(hit, False)
        return hit.any()

    assert sum(overlaps(lb) for lb in sample_labels) >= 5  # partial occlusion occurs


def test_hidden_objects_are_dropped_and_boxes_fit_visible_pixels():
    ids = np.full((100, 100), -1)
    ids[10:30, 10:30] = 0  # object 0: 400 px drawn, 400 visible
    ids[50:60, 50:60] = 1  # object 1: drawn 400 px, only 100 visible (75 % hidden)
    ids[70:90, 20:40] = 2  # object 2: drawn 800 px, 400 visible (50 % hidden)
    lb = synth.visible_labels(ids, [4, 2, 5], [400, 400, 800])
    assert lb[:, 0].tolist() == [4, 5]
    np.testing.assert_allclose(lb[0, 1:], [0.2, 0.2, 0.2, 0.2])
    np.testing.assert_allclose(lb[1, 1:], [0.3, 0.8, 0.2, 0.2])


def test_shape_masks_differ_in_form():
    rng = np.random.default_rng(0)
    fills = {}
    for k, name in enumerate(synth.CLASS_NAMES):
        m = synth.shape_mask(k, (64, 64), 32, 32, 24, 0.0, rng)
        assert m[32 - 24:32 + 25, 32 - 24:32 + 25].sum() == m.sum() > 0
        fills[name] = m.sum() / (np.pi * 24**2)
    assert not synth.shape_mask(synth.CLASS_NAMES.index("ring"), (64, 64), 32, 32, 24, 0.0, rng)[32, 32]
    assert fills["circle"] > fills["square"] > fills["triangle"]
    assert fills["star"] < 0.5 and fills["ring"] < 0.8


def test_manifest_reuse_and_regeneration(tmp_path):
    root = synth.generate(tmp_path / "s", seed=0, n_train=2, n_val=1, imgsz=64)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["names"] == synth.CLASS_NAMES and manifest["n_train"] == 2
    assert synth.is_complete(root, 0, 2, 1, 64) and not synth.is_complete(root, 1, 2, 1, 64)
    stamp = (root / "labels/train/train_00000.txt").stat().st_mtime_ns
    synth.generate(root, seed=0, n_train=2, n_val=1, imgsz=64)  # complete: reused
    assert (root / "labels/train/train_00000.txt").stat().st_mtime_ns == stamp
    (root / "labels/train/train_00001.txt").unlink()  # damaged: regenerated
    assert not synth.is_complete(root, 0, 2, 1, 64)
    synth.generate(root, seed=0, n_train=2, n_val=1, imgsz=64)
    assert (root / "labels/train/train_00001.txt").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("someone's data")
    with pytest.raises(DatasetError, match="not a generated"):
        synth.generate(tmp_path / "mine", seed=0, n_train=2, n_val=1, imgsz=64)
    (tmp_path / ".t.tmp999999999").mkdir()  # left by a dead process
    synth.generate(tmp_path / "t", seed=0, n_train=2, n_val=1, imgsz=64)
    synth.generate(tmp_path / "t", seed=5, n_train=3, n_val=1, imgsz=64)  # other parameters: regenerated
    assert len(list((tmp_path / "t/images/train").iterdir())) == 3
    assert not list(tmp_path.glob(".t.tmp*"))


def test_cli(tmp_path):
    opt = synth.parse_opt(["--out", str(tmp_path / "cli"), "--seed", "2", "--n-train", "2", "--n-val", "1",
                           "--imgsz", "64"])
    synth.main(opt)
    assert synth.is_complete(tmp_path / "cli", 2, 2, 1, 64)
