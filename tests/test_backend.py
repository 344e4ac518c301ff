"""DetectMultiBackend: the same call and metadata for .pt, .torchscript and .onnx; clear errors."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from models.backend import SUPPORTED_SUFFIXES, DetectMultiBackend
from models.yolo import DetectionModel
from utils.checkpoint import attempt_load, save_checkpoint
from utils.deploy.export import export_onnx, export_torchscript
from utils.errors import CheckpointError, ConfigError

NAMES = {0: "with_mask", 1: "without_mask", 2: "mask_weared_incorrect"}


def make_weights(folder, ce: bool, imgsz=(64, 96), dynamic: bool = False) -> dict:
    """Save a tiny model as .pt and export it to .torchscript and .onnx; returns {suffix: path}."""
    model = DetectionModel("yolov5n.yaml", nc=3)
    model.names = dict(NAMES)
    if ce:
        model.hyp = {"cls_loss_type": "ce"}
    pt = save_checkpoint({"model": model}, folder / "m.pt")
    fused = attempt_load(pt)
    im = torch.zeros(1, 3, *imgsz)
    return {".pt": pt, ".torchscript": export_torchscript(fused, im, folder / "m.torchscript"),
            ".onnx": export_onnx(fused, im, folder / "m.onnx", dynamic=dynamic)}


@pytest.fixture(scope="module", params=[False, True], ids=["bce", "ce"])
def exported(request, tmp_path_factory):
    """Weights of one tiny model in all three formats (static ONNX)."""
    return request.param, make_weights(tmp_path_factory.mktemp("w"), ce=request.param)


def test_same_output_for_all_backends(exported):
    ce, files = exported
    torch.manual_seed(1)
    im = torch.rand(1, 3, 64, 96)
    outs = {k: DetectMultiBackend(f)(im) for k, f in files.items()}
    for k, y in outs.items():
        assert y.shape == (1, 3 * (8 * 12 + 4 * 6 + 2 * 3), 8) and y.dtype == torch.float32, k
        assert (y - outs[".pt"]).abs().max() < 1e-3, k


def test_metadata_round_trip(exported):
    ce, files = exported
    for suffix, f in files.items():
        b = DetectMultiBackend(f)
        assert b.names == NAMES and b.nc == 3 and b.stride == 32, suffix
        assert b.class_act == ("softmax" if ce else "sigmoid"), suffix
        assert (b.pt, b.jit, b.onnx) == (suffix == ".pt", suffix == ".torchscript", suffix == ".onnx")
    assert DetectMultiBackend(files[".onnx"]).imgsz == [64, 96]
    assert DetectMultiBackend(files[".torchscript"]).imgsz == [64, 96]
    assert DetectMultiBackend(files[".pt"]).dynamic and not DetectMultiBackend(files[".onnx"]).dynamic


def test_static_onnx_size_checks(exported):
    _, files = exported
    b = DetectMultiBackend(files[".onnx"])
    with pytest.raises(ConfigError, match="--dynamic"):
        b(torch.zeros(1, 3, 64, 64))
    assert b.input_size([640]) == [64, 96]
    b.warmup((1, 3, 64, 96))


def test_dynamic_onnx_backend(tmp_path, exported):
    _, files = exported
    onnx_file = export_onnx(attempt_load(files[".pt"]), torch.zeros(1, 3, 64, 64), tmp_path / "d.onnx", dynamic=True)
    b = DetectMultiBackend(onnx_file)
    assert b.dynamic and b.input_size([128, 160]) == [128, 160]
    assert b(torch.rand(2, 3, 128, 160)).shape == (2, 3 * (16 * 20 + 8 * 10 + 4 * 5), 8)


def test_unsupported_suffix_lists_supported(tmp_path):
    with pytest.raises(CheckpointError, match=r"\.pt, \.torchscript, \.onnx") as e:
        DetectMultiBackend(tmp_path / "model.tflite")
    assert "model.tflite" in str(e.value)
    assert SUPPORTED_SUFFIXES == (".pt", ".torchscript", ".onnx")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        DetectMultiBackend(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(CheckpointError, match="bad.onnx"):
        DetectMultiBackend(bad)
    bad_ts = tmp_path / "bad.torchscript"
    bad_ts.write_bytes(b"zip?")
    with pytest.raises(CheckpointError, match="bad.torchscript"):
        DetectMultiBackend(bad_ts)


def test_half_on_the_cpu_runs_in_fp32_with_a_warning(exported):
    _, files = exported
    b = DetectMultiBackend(files[".pt"], device="cpu", fp16=True)  # upstream's val.py does the same
    assert not b.fp16 and b(torch.rand(1, 3, 64, 96)).dtype == torch.float32


def test_upstream_style_metadata(tmp_path, exported):
    """ONNX files written by upstream YOLOv5 store Python literals under 'stride' and 'names'."""
    _, files = exported
    proto = onnx.load(str(files[".onnx"]))
    del proto.metadata_props[:]
    for k, v in {"stride": "32", "names": str(NAMES)}.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(proto, str(tmp_path / "up.onnx"))
    b = DetectMultiBackend(tmp_path / "up.onnx")
    assert b.names == NAMES and b.stride == 32 and b.class_act == "sigmoid" and b.nc == 3


def test_json_metadata_of_older_exports_is_still_read(tmp_path, exported):
    """This project's ONNX files before 2026-12-07 stored each value as JSON (names with string keys)."""
    _, files = exported
    proto = onnx.load(str(files[".onnx"]))
    del proto.metadata_props[:]
    for k, v in {"stride": 32, "names": {str(i): n for i, n in NAMES.items()}, "class_act": "softmax"}.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, json.dumps(v)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    b = DetectMultiBackend(tmp_path / "old.onnx")
    assert b.names == NAMES and b.stride == 32 and b.class_act == "softmax"


def test_onnx_without_metadata_infers_nc(tmp_path, exported):
    _, files = exported
    proto = onnx.load(str(files[".onnx"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    b = DetectMultiBackend(tmp_path / "bare.onnx")
    assert b.nc == 3 and b.names == {0: "class0", 1: "class1", 2: "class2"} and b.imgsz == [64, 96]


def test_opencv_dnn_runs_an_onnx_file_as_onnxruntime_does(tmp_path, exported):
    """--dnn: the same file through cv2.dnn gives onnxruntime's output, metadata and size checks."""
    ce, files = exported
    dnn, ort = DetectMultiBackend(files[".onnx"], dnn=True), DetectMultiBackend(files[".onnx"])
    assert dnn.engine == "opencv-dnn" and ort.engine == "onnx" and dnn.onnx
    for key in ("names", "nc", "stride", "class_act", "imgsz", "batch", "dynamic"):
        assert getattr(dnn, key) == getattr(ort, key), key
    im = torch.rand(2, 3, 64, 96)  # two images through a batch-1 file: one at a time
    assert (dnn(im) - ort(im)).abs().max() < 1e-4
    with pytest.raises(ConfigError, match="--dynamic"):
        dnn(torch.zeros(1, 3, 64, 64))
    dynamic = export_onnx(attempt_load(files[".pt"]), torch.zeros(1, 3, 64, 64), tmp_path / "d.onnx", dynamic=True)
    b = DetectMultiBackend(dynamic, dnn=True)
    assert b.dynamic and b(torch.rand(2, 3, 128, 160)).shape == (2, 3 * (16 * 20 + 8 * 10 + 4 * 5), 8)


def test_dnn_needs_an_onnx_file(exported):
    _, files = exported
    with pytest.raises(ConfigError, match=r"m.pt: --dnn runs .onnx files through OpenCV DNN; .*export.py"):
        DetectMultiBackend(files[".pt"], dnn=True)
