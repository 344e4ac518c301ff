"""utils/deploy/quantize.py: INT8 OpenVINO export by NNCF, its calibration images and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, tiny_shapes_yaml
from test_export import NAMES, tiny_model

import export as export_cli
from models.backend import DetectMultiBackend
from utils.checkpoint import attempt_load, save_checkpoint
from utils.deploy.quantize import calibration_files, trained_data
from utils.errors import ConfigError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny .pt checkpoint with no training options."""
    return save_checkpoint({"model": tiny_model()}, tmp_path_factory.mktemp("ckpt") / "best.pt")


def conv_inputs(xml) -> dict[str, tuple[str, str]]:
    """{convolution name: (what feeds its activations, the element type its weights are stored in)} of an IR file."""
    import openvino as ov

    def stored(node) -> str:  # through the dequantization (Multiply by a scale, Convert) to the Constant
        while node.get_type_name() != "Constant":
            node = node.input(0).get_source_output().get_node()
        return node.get_output_element_type(0).get_type_name()

    out = {}
    for op in ov.Core().read_model(str(xml)).get_ordered_ops():
        if op.get_type_name() == "Convolution":
            feed = op.input(0).get_source_output().get_node().get_type_name()
            out[op.get_friendly_name()] = (feed, stored(op.input(1).get_source_output().get_node()))
    return out


def float_decode_ops(xml, head: str) -> list[str]:
    """Names of the Detect head's operations after its convolutions that take a FakeQuantize output (none wanted)."""
    import openvino as ov

    return [op.get_friendly_name() for op in ov.Core().read_model(str(xml)).get_ordered_ops()
            if op.get_friendly_name().startswith(head) and op.get_type_name() != "Convolution"
            and any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())]


@pytest.mark.parametrize("kind", ["ce"])  # sigmoid (bce) models are quantized in the formats benchmark tests
def test_int8_openvino_export_quantizes_convolutions_and_keeps_the_decode_in_float(tmp_path, kind):
    model = tiny_model(ce=kind == "ce")
    weights = save_checkpoint({"model": model}, tmp_path / f"{kind}.pt")
    data = tiny_shapes_yaml(tmp_path, seed=3, n_train=5, n_val=1)
    folder = export_cli.run(weights=str(weights), imgsz=[64], include=["openvino"], int8=True, data=data,
                            int8_images=3)["openvino"]
    assert folder.name == f"{kind}_int8_openvino_model" and (folder / f"{kind}.xml").is_file()
    meta = yaml.safe_load((folder / f"{kind}.yaml").read_text())
    assert meta["int8"] is True and meta["calibration_images"] == 3 and meta["class_act"] == model.class_act
    convs = conv_inputs(folder / f"{kind}.xml")  # 8-bit activations (quantized before a Concat) and weights
    assert len(convs) == 60 and set(convs.values()) <= {("FakeQuantize", "i8"), ("Concat", "i8")}
    assert not float_decode_ops(folder / f"{kind}.xml", head=f"/model.{len(model.model) - 1}/")
    backend, x = DetectMultiBackend(folder), torch.rand(2, 3, 64, 64)
    got = backend(x)
    with torch.no_grad():
        expected = attempt_load(weights)(x)[0]
    assert backend.openvino and backend.names == NAMES and got.shape == expected.shape
    assert (got[..., 4:] - expected[..., 4:]).abs().max() < 0.1  # rounded, not broken
    if kind == "ce":
        torch.testing.assert_close(got[..., 5:].sum(-1), torch.ones(got.shape[:2]), atol=1e-4, rtol=0)


def test_int8_calibration_images_come_from_the_train_split(tmp_path):
    data = tiny_shapes_yaml(tmp_path, seed=4, n_train=6, n_val=2)
    files = calibration_files(data, 4)
    assert len(files) == 4 and files == sorted(files) and all("/train/" in f for f in files)
    assert calibration_files(data, 4) == files  # the same draw each time
    assert len(calibration_files(data, 100)) == 6
    with pytest.raises(ConfigError, match="--int8-images 0: must be at least 1"):
        calibration_files(data, 0)


def test_int8_needs_openvino_and_calibration_data(tmp_path, checkpoint):
    with pytest.raises(ConfigError, match="--int8 quantizes the OpenVINO IR: add --include openvino"):
        export_cli.run(weights=str(checkpoint), imgsz=[64], include=["onnx"], int8=True)
    with pytest.raises(ConfigError, match=r"--int8 needs calibration images: give --data"):
        export_cli.run(weights=str(checkpoint), imgsz=[64], include=["openvino"], int8=True)
    gone = save_checkpoint({"model": tiny_model(), "opt": {"data": str(tmp_path / "gone.yaml")}}, tmp_path / "g.pt")
    with pytest.raises(ConfigError, match=r"g.pt was trained on .*gone.yaml, which is not here"):
        export_cli.run(weights=str(gone), imgsz=[64], include=["openvino"], int8=True)


def test_int8_calibrates_on_the_data_the_checkpoint_was_trained_on(tmp_path, monkeypatch):
    data = tiny_shapes_yaml(tmp_path, seed=5, n_train=2, n_val=1)
    assert trained_data({"data": data}, tmp_path / "best.pt") == str(Path(data).resolve())
    monkeypatch.chdir(tmp_path)  # train.py's default, data/shapes.yaml, is found as --data finds it: from anywhere
    assert trained_data({"data": "data/shapes.yaml"}, tmp_path / "best.pt") == str(ROOT / "data" / "shapes.yaml")


def test_unreadable_calibration_images_are_left_out_before_any_export_work(tmp_path, logs):
    data = tiny_shapes_yaml(tmp_path, seed=8, n_train=3, n_val=1)
    bad = tmp_path / "shapes" / "images" / "train" / "zzz.jpg"
    bad.write_text("not an image")
    files = calibration_files(data, 10)
    assert len(files) == 3 and str(bad) not in files
    assert any("1 calibration image(s) cannot be read" in m and "zzz.jpg" in m for m in logs)


def test_a_folder_where_the_ir_goes_is_a_one_line_error(tmp_path):
    weights = save_checkpoint({"model": tiny_model()}, tmp_path / "m.pt")
    (tmp_path / "m_openvino_model" / "m.xml").mkdir(parents=True)  # something in the way of the IR file
    with pytest.raises(ConfigError, match=r"m.xml: cannot write the OpenVINO IR"):
        export_cli.run(weights=str(weights), imgsz=[64], include=["openvino"])


def test_calibration_data_of_other_classes_is_used_but_not_offered_for_validation(tmp_path, logs):
    """Calibration reads images only, so data naming 6 classes calibrates a 3-class model; the Validate line,
    which would fail on the class count, leaves that data out and a warning says why."""
    weights = save_checkpoint({"model": tiny_model()}, tmp_path / "m.pt")
    data = tiny_shapes_yaml(tmp_path, seed=9, n_train=2, n_val=1)  # the built-in data's 6 classes
    export_cli.run(weights=str(weights), imgsz=[64], include=["openvino"], int8=True, data=data, int8_images=2)
    assert any("names 6 classes and m.pt predicts 3" in m for m in logs)
    validate = [m for m in logs if "Validate:" in m]
    assert validate and "--data" not in validate[-1]
