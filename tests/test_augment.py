"""Tests that augmentations keep boxes on the object's pixels: letterbox, flips, mosaic, random perspective."""

from __future__ import annotations

import numpy as np
import pytest

from utils.data import augment as aug

GREY = 114
COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255)]


def _canvas(h: int, w: int, box: tuple[int, int, int, int], colour=(0, 0, 255)) -> np.ndarray:
    """A plain grey (h, w, 3) image with a solid rectangle at xyxy box (x2, y2 exclusive)."""
    im = np.full((h, w, 3), GREY, np.uint8)
    x1, y1, x2, y2 = box
    im[y1:y2, x1:x2] = colour
    return im


def _pixel_box(im: np.ndarray, colour=(0, 0, 255)) -> np.ndarray | None:
    """xyxy box (x2, y2 exclusive) of pixels nearest to colour among the test colours and grey, or None."""
    palette = np.array([(GREY,) * 3, *COLOURS])
    nearest = np.abs(im.astype(np.int32)[..., None, :] - palette).sum(-1).argmin(-1)
    near = nearest == COLOURS.index(tuple(colour)) + 1
    ys, xs = np.nonzero(near)
    return None if len(xs) == 0 else np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def test_letterbox_exact_geometry():
    im = _canvas(100, 200, (50, 20, 150, 60))
    out, ratio, pad = aug.letterbox(im, 320, auto=False)
    assert out.shape == (320, 320, 3) and ratio == (1.6, 1.6) and pad == (0.0, 80.0)
    mapped = np.array([50, 20, 150, 60]) * 1.6 + [pad[0], pad[1]] * 2
    np.testing.assert_allclose(mapped, [80, 112, 240, 176])
    np.testing.assert_allclose(_pixel_box(out), mapped, atol=1)
    assert (out[:80] == GREY).all() and (out[240:] == GREY).all()


def test_letterbox_modes():
    im = np.zeros((110, 200, 3), np.uint8)
    out, _, pad = aug.letterbox(im, 320, auto=True, stride=32)  # minimum rectangle: 176 -> 192
    assert out.shape == (192, 320, 3) and pad == (0.0, 8.0)
    out, ratio, pad = aug.letterbox(im, 320, auto=False, scale_fill=True)
    assert out.shape == (320, 320, 3) and ratio == (1.6, 320 / 110) and pad == (0.0, 0.0)
    out, ratio, pad = aug.letterbox(np.zeros((100, 200, 3), np.uint8), 320, auto=False, scaleup=False)
    assert out.shape == (320, 320, 3) and ratio == (1.0, 1.0) and pad == (60.0, 110.0)
    out, _, pad = aug.letterbox(np.zeros((100, 200, 3), np.uint8), (160, 224), auto=False)
    assert out.shape == (160, 224, 3) and pad == (0.0, 24.0)
    assert isinstance(pad[0], float)


def test_flips_follow_pixels():
    im = _canvas(64, 64, (10, 30, 20, 50))
    labels = np.array([[3, 15 / 64, 40 / 64, 10 / 64, 20 / 64]])
    out, lb = aug.random_flip(im.copy(), labels.copy(), flipud=0.0, fliplr=1.0)
    np.testing.assert_allclose(lb[0], [3, 49 / 64, 40 / 64, 10 / 64, 20 / 64])
    np.testing.assert_allclose(_pixel_box(out), [44, 30, 54, 50])
    out, lb = aug.random_flip(im.copy(), labels.copy(), flipud=1.0, fliplr=0.0)
    np.testing.assert_allclose(lb[0, 2], 24 / 64)
    np.testing.assert_allclose(_pixel_box(out), [10, 14, 20, 34])


def _mosaic_inputs():
    """4 grey images of different sizes (long side <= 64), each with one coloured rectangle and its label."""
    sizes = [(64, 64), (48, 64), (64, 40), (56, 56)]
    images, labels = [], []
    for k, (h, w) in enumerate(sizes):
        box = (w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 3)
        images.append(_canvas(h, w, box, COLOURS[k]))
        x1, y1, x2, y2 = box
        labels.append(np.array([[k, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]]))
    return images, labels


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_and_perspective_keep_boxes_on_pixels(seed):
    rng = np.random.default_rng(seed)
    images, labels = _mosaic_inputs()
    canvas, targets = aug.build_mosaic(images, labels, 64, rng)
    assert canvas.shape == (128, 128, 3) and targets.shape == (4, 5)
    for cls, *box in targets:
        found = _pixel_box(canvas, COLOURS[int(cls)])
        if found is None:
            assert box[2] - box[0] == 0 or box[3] - box[1] == 0  # cut off by the canvas
        else:
            np.testing.assert_allclose(found, box, atol=1e-6)
    out, kept = aug.random_perspective(canvas, targets, degrees=0, translate=0.1, scale=0.5, shear=0,
                                       border=aug.mosaic_border(64), rng=rng)
    assert out.shape == (64, 64, 3)
    assert len(kept) and (kept[:, 1:] >= 0).all() and (kept[:, 1:] <= 64).all()
    for cls, *box in kept:
        np.testing.assert_allclose(_pixel_box(out, COLOURS[int(cls)]), box, atol=2)


@pytest.mark.parametrize("seed", range(4))
def test_rotation_shear_box_encloses_object(seed):
    im = _canvas(96, 128, (40, 30, 90, 60))
    targets = np.array([[1, 40, 30, 90, 60]], float)
    rng = np.random.default_rng(seed)
    out, kept = aug.random_perspective(im, targets, degrees=30, translate=0.05, scale=0.2, shear=5, rng=rng)
    assert out.shape == im.shape and len(kept) == 1
    assert 0 <= kept[0, 1] < kept[0, 3] <= 128 and 0 <= kept[0, 2] < kept[0, 4] <= 96
    np.testing.assert_allclose(_pixel_box(out), kept[0, 1:], atol=2)
    out, kept = aug.random_perspective(im, targets, degrees=0, translate=0, scale=0, shear=0, perspective=0.001,
                                       rng=rng)
    np.testing.assert_allclose(_pixel_box(out), kept[0, 1:], atol=2)


def test_box_candidates_filter():
    before = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 100], [0, 0, 300, 300]], float).T
    after = np.array([[0, 0, 2, 2], [0, 0, 9, 9], [0, 0, 30, 30], [0, 0, 300, 2.5]], float).T
    assert aug.box_candidates(before, after).tolist() == [False, True, False, False]
    im = _canvas(64, 64, (0, 0, 64, 64))
    targets = np.array([[0, 0, 0, 64, 64], [0, 1, 1, 2, 2]], float)  # the 1 px box cannot survive
    _, kept = aug.random_perspective(im, targets, degrees=0, translate=0, scale=0, shear=0)
    assert len(kept) == 1


def test_augment_hsv_in_place():
    rng = np.random.default_rng(0)
    im = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    ref = im.copy()
    aug.augment_hsv(im, 0, 0, 0, rng)
    assert (im == ref).all()
    aug.augment_hsv(im, 0.5, 0.5, 0.5, rng)
    assert im.dtype == np.uint8 and im.shape == ref.shape and not (im == ref).all()
    grey = np.full((8, 8, 3), 100, np.uint8)
    aug.augment_hsv(grey, 0.5, 0.0, 0.0, rng)  # hue cannot colour a grey image
    assert (grey == 100).all()


def test_mixup_blends_and_concatenates():
    im, im2 = np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 200, np.uint8)
    out, lb = aug.mixup(im, np.ones((2, 5)), im2, np.zeros((3, 5)), np.random.default_rng(0))
    assert lb.shape == (5, 5) and out.dtype == np.uint8
    assert 60 < out.mean() < 140 and out.std() == 0


def test_default_hyp_keys():
    assert {"hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective", "flipud", "fliplr",
            "mosaic", "mixup", "copy_paste"} == set(aug.DEFAULT_HYP)
