"""Test-time augmentation: three scales, one flipped, mapped back to the original pixels and merged before NMS."""

from __future__ import annotations

import pytest
import torch
from conftest import OFFICIAL_WEIGHTS, SHARED, needs_shared

import detect
from models.backend import DetectMultiBackend
from models.tta import PAD_VALUE, augmented_inference, level_sizes, scale_image
from models.yolo import DetectionModel
from utils.checkpoint import attempt_load, save_checkpoint
from utils.deploy.export import export_onnx
from utils.errors import ConfigError

STRIDES = (8.0, 16.0, 32.0)


def bright_spot_predictor(im: torch.Tensor) -> torch.Tensor:
    """A stand-in model: every prediction is a 10 px box at the bright spot's centre, column 5 names its level."""
    bs, _, h, w = im.shape
    spot = (im[:, 0] > 0.75).float()  # the spot is 1.0, the padding 0.447, the rest 0
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    y, x = ((spot * (g + 0.5)).sum((1, 2)) / spot.sum((1, 2)) for g in (ys, xs))  # pixel i spans [i, i + 1)
    sizes = level_sizes((h, w), STRIDES, 3)
    level = torch.cat([torch.full((n,), float(i)) for i, n in enumerate(sizes)])
    out = torch.zeros(bs, sum(sizes), 6)
    out[..., 0], out[..., 1] = x[:, None], y[:, None]
    out[..., 2:4], out[..., 4], out[..., 5] = 10.0, 0.9, level
    return out


def test_scale_image_resizes_and_pads_to_the_stride():
    im = torch.rand(2, 3, 320, 416)
    assert scale_image(im, 1.0, 32) is im
    x = scale_image(im, 0.83, 32)
    assert x.shape == (2, 3, 288, 352)  # 265 x 345 resized, padded up to multiples of 32
    assert (x[:, :, 265:] == PAD_VALUE).all() and (x[:, :, :, 345:] == PAD_VALUE).all()


def test_level_sizes_count_a_models_predictions():
    model = DetectionModel("yolov5n.yaml", nc=2).eval()
    y, _ = model(torch.zeros(1, 3, 96, 160))
    assert level_sizes((96, 160), model.stride.tolist(), 3) == [3 * 12 * 20, 3 * 6 * 10, 3 * 3 * 5]
    assert y.shape[1] == sum(level_sizes((96, 160), model.stride.tolist(), 3))


def test_boxes_come_back_to_original_pixels_and_edge_levels_are_cut():
    im = torch.zeros(1, 3, 320, 416)
    im[0, 0, 96:105, 296:305] = 1.0  # a spot centred at x 300.5, y 100.5: off-centre, so a lost un-flip would show
    y = augmented_inference(bright_spot_predictor, im, STRIDES, 3)
    full, mid, small = (level_sizes(scale_image(im, r, 32).shape[-2:], STRIDES, 3) for r in (1.0, 0.83, 0.67))
    assert y.shape == (1, sum(full[:2]) + sum(mid) + sum(small[1:]), 6)
    assert (y[0, :, 0] - 300.5).abs().max() < 1 and (y[0, :, 1] - 100.5).abs().max() < 1  # resize rounding
    assert y[0, :, 2].min() >= 10.0 and y[0, :, 2].max() == pytest.approx(10 / 0.67)  # sizes scaled back
    first, last = y[0, : sum(full[:2]), 5], y[0, -sum(small[1:]):, 5]
    assert 2.0 not in first.tolist() and 0.0 not in last.tolist()  # no coarsest level at 1.0, no finest at 0.67


def test_model_augment_returns_merged_predictions_in_eval_mode_only():
    model = DetectionModel("yolov5n.yaml", nc=2)
    with pytest.raises(ValueError, match="eval mode"):
        model(torch.zeros(1, 3, 64, 64), augment=True)
    y, raw = model.eval()(torch.rand(1, 3, 320, 416), augment=True)
    assert y.shape == (1, 7800 + 6237 + 945, 7) and raw is None  # the level counts worked out in the docstring


def test_backend_augments_pt_on_both_engines_and_refuses_exports(tmp_path):
    model = DetectionModel("yolov5n.yaml", nc=2)
    pt = save_checkpoint({"model": model}, tmp_path / "m.pt")
    im = torch.rand(1, 3, 96, 128)
    by_engine = {e: DetectMultiBackend(pt, engine=e)(im, augment=True) for e in ("torch", "onnxruntime")}
    assert by_engine["torch"].shape[1] > DetectMultiBackend(pt)(im).shape[1]
    assert (by_engine["torch"] - by_engine["onnxruntime"]).abs().max() < 1e-3
    onnx_file = export_onnx(attempt_load(pt), im, tmp_path / "m.onnx", dynamic=True)
    with pytest.raises(ConfigError, match=r"m\.onnx: --augment .* needs \.pt weights"):
        DetectMultiBackend(onnx_file)(im, augment=True)


@needs_shared(OFFICIAL_WEIGHTS)
def test_official_model_finds_the_same_objects_with_tta(tmp_path):
    bus = SHARED / "samples" / "bus.jpg"
    runs = {a: detect.run(weights=OFFICIAL_WEIGHTS, source=bus, imgsz=[320], nosave=True, augment=a, device="cpu",
                          project=tmp_path, name=str(a)) for a in (False, True)}
    classes = {a: set(r["predictions"][0]["det"][:, 5].int().tolist()) for a, r in runs.items()}
    assert {0, 5} <= classes[False] and {0, 5} <= classes[True]  # people and the bus, with and without TTA
