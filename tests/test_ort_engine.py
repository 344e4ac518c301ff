"""The onnxruntime engine for .pt models: same outputs, detections and metrics as PyTorch, a cache, a clean fallback."""

from __future__ import annotations

import pytest
import torch

import detect
import val
from models.backend import DetectMultiBackend
from models.yolo import DetectionModel
from tests.conftest import OFFICIAL_WEIGHTS, SHARED, needs_shared
from utils.checkpoint import save_checkpoint
from utils.deploy import ort_engine
from utils.errors import ConfigError

COCO128 = SHARED / "data" / "coco128" / "coco128.yaml"
BUS = SHARED / "samples" / "bus.jpg"


def tiny_pt(folder, ce: bool = False):
    """A randomly initialised 3-class yolov5n saved as a checkpoint."""
    model = DetectionModel("yolov5n.yaml", nc=3)
    model.names = {0: "a", 1: "b", 2: "c"}
    if ce:
        model.hyp = {"cls_loss_type": "ce"}
    return save_checkpoint({"model": model}, folder / "m.pt")


def test_auto_picks_onnxruntime_on_cpu_and_torch_for_fp16():
    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    assert ort_engine.resolve_engine("auto", cpu, fp16=False) == "onnxruntime"
    assert ort_engine.resolve_engine("auto", gpu, fp16=True) == "torch"
    assert ort_engine.resolve_engine("torch", cpu, fp16=False) == "torch"
    with pytest.raises(ConfigError, match="--engine 'tensorrt'"):
        ort_engine.resolve_engine("tensorrt", cpu, fp16=False)


def test_cache_key_follows_the_weights_file(tmp_path):
    pt = tiny_pt(tmp_path)
    key = ort_engine.cache_key(pt)
    assert ort_engine.cache_key(pt) == key
    pt.write_bytes(pt.read_bytes() + b"\0")  # a retrained file: new size and time
    assert ort_engine.cache_key(pt) != key


@pytest.mark.parametrize("ce", [False, True], ids=["bce", "ce"])
def test_same_outputs_as_torch_at_any_size(tmp_path, ce):
    pt = tiny_pt(tmp_path, ce)
    fast, eager = DetectMultiBackend(pt, engine="auto"), DetectMultiBackend(pt, engine="torch")
    assert (fast.engine, eager.engine) == ("onnxruntime", "torch")
    assert fast.pt and fast.dynamic and fast.class_act == eager.class_act == ("softmax" if ce else "sigmoid")
    for shape in [(1, 3, 64, 96), (2, 3, 128, 64)]:  # dynamic: rect val batches and video frames
        im = torch.rand(shape)
        y, y0 = fast(im), eager(im)
        assert y.shape == y0.shape
        assert (y - y0).abs().max() < 1e-3
    if ce:
        assert torch.allclose(y[..., 5:].sum(-1), torch.ones(1), atol=1e-4)  # softmax inside the graph


def test_export_is_cached_per_weights_file(tmp_path):
    pt = tiny_pt(tmp_path)
    DetectMultiBackend(pt)
    files = sorted(ort_engine.cache_root().glob(f"m-{ort_engine.cache_key(pt)}.onnx"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    DetectMultiBackend(pt)  # second load reuses the file
    assert files[0].stat().st_mtime_ns == stamp


def test_falls_back_to_torch_with_the_reason(tmp_path, monkeypatch, logs):
    pt = tiny_pt(tmp_path)

    def broken(model, weights):
        raise RuntimeError("unsupported operator Foo")

    monkeypatch.setattr(ort_engine, "cached_onnx", broken)
    backend = DetectMultiBackend(pt)
    assert backend.engine == "torch" and backend.session is None
    assert any("onnxruntime engine unavailable" in m and "unsupported operator Foo" in m for m in logs)
    im = torch.rand(1, 3, 64, 64)
    assert torch.equal(backend(im), DetectMultiBackend(pt, engine="torch")(im))


@needs_shared(OFFICIAL_WEIGHTS)
def test_official_checkpoint_detections_match_torch(tmp_path):
    kw = {"weights": OFFICIAL_WEIGHTS, "source": BUS, "project": tmp_path, "nosave": True}
    fast = detect.run(**kw, engine="onnxruntime")["predictions"][0]["det"]
    eager = detect.run(**kw, engine="torch")["predictions"][0]["det"]
    assert fast.shape == eager.shape and len(fast) == 5  # 4 persons and a bus
    assert torch.equal(fast[:, 5], eager[:, 5])  # same classes, same order
    assert (fast[:, :5] - eager[:, :5]).abs().max() < 1e-2  # pixels and confidences


@pytest.mark.slow
@needs_shared(COCO128)
def test_official_checkpoint_metrics_match_torch(tmp_path):
    kw = {"data": COCO128, "weights": OFFICIAL_WEIGHTS, "imgsz": 320, "project": tmp_path, "plots": False}
    (p, r, map50, map_, *_), _, _ = val.run(**kw, engine="onnxruntime")
    (p0, r0, map50_0, map_0, *_), _, _ = val.run(**kw, engine="torch")
    for a, b in [(p, p0), (r, r0), (map50, map50_0), (map_, map_0)]:
        assert abs(a - b) < 1e-3
