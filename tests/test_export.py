"""Export: ONNX and TorchScript parity with PyTorch, dynamic axes, softmax rows, metadata, export.py CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from conftest import OFFICIAL_WEIGHTS, ROOT, SHARED, needs_shared, tiny_shapes_yaml

import export as export_cli
from models.yolo import DetectionModel
from utils.checkpoint import attempt_load, save_checkpoint
from utils.deploy.export import (
    check_onnx_parity,
    export_mode,
    export_onnx,
    export_torchscript,
    onnx_parity_detail,
    openvino_parity_detail,
    split_difference,
)
from utils.errors import CheckpointError, ConfigError

NAMES = {0: "cat", 1: "dog", 2: "bird"}


def tiny_model(ce: bool = False) -> DetectionModel:
    """A randomly initialised yolov5n with 3 named classes; softmax class scores when ce."""
    model = DetectionModel("yolov5n.yaml", nc=3)
    model.names = dict(NAMES)
    if ce:
        model.hyp = {"cls_loss_type": "ce"}
    return model.fuse().eval()


@pytest.fixture(scope="module")
def models() -> dict[str, DetectionModel]:
    """One tiny sigmoid (bce) and one tiny softmax (ce) model, shared by the tests of this module."""
    return {"bce": tiny_model(ce=False), "ce": tiny_model(ce=True)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny .pt checkpoint in its own folder."""
    folder = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint({"model": DetectionModel("yolov5n.yaml", nc=3)}, folder / "best.pt")


def ort_run(file, x: torch.Tensor) -> np.ndarray:
    """Run an ONNX file on CPU through onnxruntime."""
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x.numpy()})[0]


@pytest.mark.parametrize("kind", ["bce", "ce"])
def test_onnx_parity(tmp_path, models, kind):
    model, im = models[kind], torch.rand(1, 3, 96, 128)
    file = export_onnx(model, im, tmp_path / "m.onnx")
    onnx.checker.check_model(str(file))
    assert check_onnx_parity(model, file, im) < 1e-3
    detail = onnx_parity_detail(model, file, im)
    assert detail["scores"] < 1e-5 and detail["boxes"] < 1e-3


def test_split_difference_separates_box_pixels_from_scores():
    a = np.zeros((1, 2, 7), np.float32)
    b = a.copy()
    b[0, 1, 2], b[0, 0, 6] = 0.5, -0.01  # a box width off by half a pixel, a class score by 0.01
    assert split_difference(a, b) == pytest.approx({"boxes": 0.5, "scores": 0.01})


def test_export_restores_detect_flag_and_mode(tmp_path):
    model = tiny_model()
    model.train()
    export_onnx(model, torch.rand(1, 3, 64, 64), tmp_path / "m.onnx")
    assert model.training and model.model[-1].export is False


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated upstream, still supported
def test_torchscript_parity(tmp_path, models):
    model, im = models["ce"], torch.rand(2, 3, 64, 96)
    file = export_torchscript(model, im, tmp_path / "m.torchscript")
    extra = {"config.txt": ""}
    ts = torch.jit.load(str(file), _extra_files=extra)
    with export_mode(model), torch.no_grad():
        assert (ts(im) - model(im)).abs().max() < 1e-4
    meta = json.loads(extra["config.txt"])
    assert meta["class_act"] == "softmax" and meta["imgsz"] == [64, 96] and meta["stride"] == 32


def test_dynamic_onnx_accepts_batch_and_size(tmp_path, models):
    model = models["bce"]
    file = export_onnx(model, torch.zeros(1, 3, 64, 64), tmp_path / "dyn.onnx", dynamic=True)
    for shape in [(1, 3, 64, 64), (3, 3, 96, 160)]:
        x = torch.rand(shape)
        y = ort_run(file, x)
        with export_mode(model), torch.no_grad():
            ref = model(x).numpy()
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() < 1e-3


def test_static_onnx_has_fixed_input(tmp_path, models):
    file = export_onnx(models["bce"], torch.zeros(1, 3, 64, 64), tmp_path / "s.onnx")
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 64, 64]


def test_softmax_rows_sum_to_one_in_onnx(tmp_path, models):
    file = export_onnx(models["ce"], torch.zeros(1, 3, 64, 64), tmp_path / "ce.onnx", dynamic=True)
    y = ort_run(file, torch.rand(2, 3, 64, 96))
    np.testing.assert_allclose(y[..., 5:].sum(-1), 1.0, atol=1e-5)
    y_bce = ort_run(export_onnx(models["bce"], torch.zeros(1, 3, 64, 64), tmp_path / "bce.onnx"),
                    torch.rand(1, 3, 64, 64))
    assert np.abs(y_bce[..., 5:].sum(-1) - 1).max() > 0.1  # sigmoid scores are not normalised


def test_onnx_metadata_props(tmp_path, models):
    from models.backend import _parse_value

    file = export_onnx(models["ce"], torch.zeros(1, 3, 64, 96), tmp_path / "m.onnx", dynamic=True)
    text = {p.key: p.value for p in onnx.load(str(file)).metadata_props}
    assert eval(text["names"]) == NAMES and int(text["stride"]) == 32  # as upstream YOLOv5's DetectMultiBackend reads
    meta = {k: _parse_value(v) for k, v in text.items()}  # as ours does
    assert meta["names"] == NAMES and meta["stride"] == 32 and meta["class_act"] == "softmax" and meta["nc"] == 3
    assert meta["imgsz"] == [64, 96] and meta["dynamic"] is True


def test_simplify_keeps_parity(tmp_path, models):
    model, im = models["bce"], torch.rand(1, 3, 64, 64)
    file = export_onnx(model, im, tmp_path / "slim.onnx", simplify=True)
    assert check_onnx_parity(model, file, im) < 1e-3
    assert any(p.key == "names" for p in onnx.load(str(file)).metadata_props)


def test_export_cli_writes_next_to_weights(checkpoint):
    opt = export_cli.parse_opt(["--weights", str(checkpoint), "--imgsz", "64", "--include", "torchscript", "onnx"])
    assert opt.imgsz == [64, 64] and opt.opset == 17
    files = export_cli.main(opt)
    folder = checkpoint.parent
    assert files == {"torchscript": folder / "best.torchscript", "onnx": folder / "best.onnx"}
    assert all(f.is_file() for f in files.values())


def test_export_cli_defaults_and_errors(tmp_path, checkpoint):
    opt = export_cli.parse_opt([])
    assert opt.include == ["torchscript"] and opt.imgsz == [640, 640] and opt.batch_size == 1
    assert opt.device == "cpu" and not opt.dynamic and not opt.half
    assert opt.weights.endswith("runs/train/exp/weights/best.pt")  # the default run's, as val.py and detect.py
    weights = checkpoint
    alone = tmp_path / "alone" / "best.pt"
    alone.parent.mkdir()
    alone.write_bytes(checkpoint.read_bytes())
    with pytest.raises(ConfigError, match="exported in FP32; export it without --half"):
        export_cli.run(weights=alone, imgsz=[64], include=["onnx", "openvino"], half=True)
    assert sorted(p.name for p in alone.parent.iterdir()) == ["best.pt"]  # refused before any export
    from models.backend import DetectMultiBackend

    rounded = export_cli.run(weights=weights, imgsz=[70, 64], include=["onnx"])["onnx"]  # up to the stride, as upstream
    assert DetectMultiBackend(rounded).imgsz == [96, 64]
    assert export_cli.parse_opt(["--include", "ONNX", "OpenVINO"]).include == ["onnx", "openvino"]
    with pytest.raises(CheckpointError, match="missing.pt"):
        export_cli.run(weights=tmp_path / "missing.pt", imgsz=[64])
    broken = (("empty.pt", b""), ("text.pt", b"not a checkpoint"), ("cut.pt", checkpoint.read_bytes()[:500]))
    for name, content in broken:
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"{name}: cannot be read as a PyTorch checkpoint"):
            export_cli.run(weights=bad, imgsz=[64])


def test_fp16_export_runs_on_the_cpu_and_matches_float32(tmp_path):
    """--half traces TorchScript and ONNX in FP16 without a GPU; both load in DetectMultiBackend (the ONNX input is
    cast to float16) and agree with the float32 model to FP16 precision."""
    from models.backend import DetectMultiBackend

    weights = save_checkpoint({"model": tiny_model(ce=True)}, tmp_path / "half.pt")
    files = export_cli.run(weights=weights, imgsz=[64, 96], include=["torchscript", "onnx"], half=True)
    graph = onnx.load(str(files["onnx"])).graph
    fp16 = onnx.TensorProto.FLOAT16
    assert graph.input[0].type.tensor_type.elem_type == fp16 and graph.output[0].type.tensor_type.elem_type == fp16
    im = torch.rand(1, 3, 64, 96)
    ref = DetectMultiBackend(weights, engine="torch")(im)
    for file in files.values():
        y = DetectMultiBackend(file)(im)
        assert y.dtype == torch.float32 and y.shape == ref.shape
        assert (y[..., :4] - ref[..., :4]).abs().max() < 0.5  # pixels: FP16 spacing is 1/16 px at 64-128
        assert (y[..., 4:] - ref[..., 4:]).abs().max() < 5e-3
        torch.testing.assert_close(y[..., 5:].sum(-1), torch.ones(y.shape[:2]), atol=5e-3, rtol=0)  # softmax


def test_export_cli_error_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        export_cli.cli(["--weights", str(tmp_path / "gone.pt")])
    assert str(e.value.code).startswith("export.py: weights ") and "gone.pt" in str(e.value.code)


def test_benchmark_script_runs(tmp_path, capsys):
    from benchmarks.infer_speed import parse_opt, run

    assert parse_opt([]).threads == 2 and parse_opt([]).imgsz == 640 and parse_opt([]).int8_data is None
    data = tiny_shapes_yaml(tmp_path, seed=6, n_train=2, n_val=1)
    result = run(imgsz=64, threads=1, warmup=0, runs=1, int8_data=data, int8_images=2)
    assert set(result) == {"PyTorch eager", "TorchScript", "onnxruntime", "OpenVINO", "OpenVINO INT8"}
    out = capsys.readouterr().out
    assert "| onnxruntime |" in out and "| OpenVINO |" in out and "| OpenVINO INT8 |" in out


@pytest.mark.parametrize("kind", ["bce", "ce"])
def test_openvino_export_parity_metadata_and_backend(tmp_path, kind):
    from models.backend import DetectMultiBackend

    model = tiny_model(ce=kind == "ce")
    weights = save_checkpoint({"model": model}, tmp_path / f"{kind}.pt")
    files = export_cli.run(weights=str(weights), imgsz=[64], include=["openvino"])
    folder = files["openvino"]
    assert folder.name == f"{kind}_openvino_model" and (folder / f"{kind}.xml").is_file()
    assert (folder / f"{kind}.bin").is_file()
    meta = yaml.safe_load((folder / f"{kind}.yaml").read_text())  # the file upstream YOLOv5 reads stride and names from
    assert meta["stride"] == 32 and meta["names"] == model.names
    if kind == "bce":  # this project's exports before 2026-12-07 named the file metadata.yaml: still read
        (folder / f"{kind}.yaml").rename(folder / "metadata.yaml")
        assert DetectMultiBackend(folder).names == model.names
        (folder / "metadata.yaml").rename(folder / f"{kind}.yaml")
    backend = DetectMultiBackend(folder)
    assert backend.openvino and backend.class_act == ("softmax" if kind == "ce" else "sigmoid")
    assert backend.imgsz == [64, 64] and not backend.dynamic and backend.names == model.names
    x = torch.rand(1, 3, 64, 64)
    ref = attempt_load(weights)
    with torch.no_grad():
        expected = ref(x)[0]
    got = backend(x)
    assert (got - expected).abs().max() < 1e-3
    if kind == "ce":
        torch.testing.assert_close(got[..., 5:].sum(-1), torch.ones(got.shape[:2]), atol=1e-4, rtol=0)
    detail = openvino_parity_detail(ref, folder, x)  # what export.py prints: boxes in pixels, scores
    assert set(detail) == {"boxes", "scores"} and detail["boxes"] < 1e-3 and detail["scores"] < 1e-4
    with pytest.raises(ConfigError, match=r"fixed input size 64x64 .* \(--imgsz 64\)"):
        backend(torch.rand(1, 3, 96, 96))


def test_dynamic_openvino_export_takes_any_batch(tmp_path):
    """A --dynamic IR runs batches of any size (the head's grids broadcast, so no batch of 1 is baked in)."""
    from models.backend import DetectMultiBackend

    weights = save_checkpoint({"model": tiny_model()}, tmp_path / "dyn.pt")
    folder = export_cli.run(weights=str(weights), imgsz=[64], include=["openvino"], dynamic=True)["openvino"]
    backend, x = DetectMultiBackend(folder), torch.rand(3, 3, 64, 96)
    with torch.no_grad():
        expected = attempt_load(weights)(x)[0]
    assert backend.dynamic and (backend(x) - expected).abs().max() < 1e-3


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_a_fixed_batch_export_takes_any_number_of_images(tmp_path, fmt):
    """A batch-3 export runs 1 or 4 images: runs of 3, the last one padded with blank images that are dropped."""
    from models.backend import DetectMultiBackend

    weights = save_checkpoint({"model": tiny_model()}, tmp_path / "b3.pt")
    files = export_cli.run(weights=str(weights), imgsz=[64], batch_size=3, include=[fmt])
    backend, ref = DetectMultiBackend(files[fmt]), attempt_load(weights)
    assert backend.batch == 3 and not backend.dynamic
    for n in (1, 4):
        x = torch.rand(n, 3, 64, 64)
        with torch.no_grad():
            expected = ref(x)[0]
        got = backend(x)
        assert got.shape == expected.shape and (got - expected).abs().max() < 1e-3


def test_export_summary_prints_commands_that_parse(tmp_path, logs):
    """The Detect and Validate lines export.py prints are commands detect.py and val.py accept."""
    import detect
    import val

    export_cli._summary({"onnx": tmp_path / "m.onnx"}, tmp_path / "m.pt", [320, 320], False, 1.0)
    export_cli._summary({"onnx": tmp_path / "r.onnx"}, tmp_path / "r.pt", [256, 320], False, 1.0)
    square, rect = (dict(x.split(": ", 1) for x in text.splitlines() if ": " in x) for text in logs)
    assert square["Validate"].endswith("m.onnx --imgsz 320") and rect["Detect"].endswith("r.onnx --imgsz 256 320")
    assert val.parse_opt(square["Validate"].split()[2:]).imgsz == 320
    assert detect.parse_opt(rect["Detect"].split()[2:]).imgsz == [256, 320]
    assert "--dynamic" in rect["Validate"]  # a fixed non-square export cannot be validated: says what to do


def test_export_validate_line_names_the_data_trained_on(tmp_path, logs):
    """A model trained on other data than val.py's default gets a Validate line with that data YAML, so it runs."""
    import val

    (tmp_path / "images" / "val").mkdir(parents=True)
    data = tmp_path / "mine.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "images/val", "val": "images/val",
                                    "names": dict(NAMES)}))
    weights = save_checkpoint({"model": DetectionModel("yolov5n.yaml", nc=3), "opt": {"data": str(data)}},
                              tmp_path / "best.pt")
    export_cli.run(weights=weights, imgsz=[64], include=["onnx"])
    validate = [x.split("Validate: ", 1)[1] for text in logs for x in text.splitlines() if "Validate: " in x]
    assert validate and f"--data {data}" in validate[0]
    assert Path(val.parse_opt(validate[0].split()[2:]).data) == data
    one = DetectionModel("yolov5n.yaml", nc=1)  # trained with --single-cls on the 3-class data: val.py needs it too
    single = save_checkpoint({"model": one, "opt": {"data": str(data), "single_cls": True}}, tmp_path / "one.pt")
    assert export_cli._trained_val_args(single, one) == f" --data {data} --single-cls"
    gone = save_checkpoint({"model": one, "opt": {"data": "/nowhere/theirs.yaml"}}, tmp_path / "gone.pt")
    assert export_cli._trained_val_args(gone, one) == " --data <its data.yaml>"  # not a command that would fail
    builtin = DetectionModel("yolov5n.yaml", nc=6)
    assert export_cli._trained_val_args(save_checkpoint({"model": builtin}, tmp_path / "b.pt"), builtin) == ""


def test_openvino_folder_runs_in_detect_and_val(tmp_path):
    import detect
    import val

    model = DetectionModel("yolov5n.yaml", nc=6)  # the six classes of the built-in data
    weights = save_checkpoint({"model": model}, tmp_path / "m.pt")
    folder = export_cli.run(weights=str(weights), imgsz=[64], include=["openvino"])["openvino"]
    out = detect.run(weights=folder, source=ROOT / "data" / "images", imgsz=(64, 64), project=tmp_path / "d")
    assert len(out["predictions"]) == 2
    data = tiny_shapes_yaml(tmp_path, seed=2, n_train=2, n_val=2)
    results, _, _ = val.run(data=data, weights=str(folder), imgsz=64, batch_size=1, project=tmp_path / "v")
    assert len(results) == 7


def test_formats_benchmark_exports_and_validates_every_format(tmp_path, capsys):
    from benchmarks import formats

    weights = save_checkpoint({"model": DetectionModel("yolov5n.yaml", nc=6)}, tmp_path / "m.pt")
    data = tiny_shapes_yaml(tmp_path, seed=2, n_train=2, n_val=3)
    rows = formats.main(["--weights", str(weights), "--data", data, "--imgsz", "64", "--threads", "1",
                         "--workers", "0", "--project", str(tmp_path / "fmt")])
    assert [r["format"] for r in rows] == list(formats.FORMATS) and all(r["status"] == "ok" for r in rows)
    assert {r["file"] for r in rows} == {"m.pt", "m.torchscript", "m.onnx", "m_openvino_model",
                                         "m_int8_openvino_model"}
    assert (tmp_path / "fmt" / "formats.csv").is_file() and "| onnx | m.onnx |" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="expected an existing .pt file"):
        formats.main(["--weights", str(tmp_path / "gone.pt")])


def test_formats_benchmark_reports_a_failing_format_in_its_row(tmp_path, monkeypatch):
    from benchmarks import formats

    def broken(**kwargs):
        raise ValueError("exporter bug")

    weights = save_checkpoint({"model": DetectionModel("yolov5n.yaml", nc=6)}, tmp_path / "m.pt")
    data = tiny_shapes_yaml(tmp_path, seed=2, n_train=2, n_val=2)
    monkeypatch.setattr(formats.export, "run", broken)
    rows = formats.main(["--weights", str(weights), "--data", data, "--imgsz", "64", "--threads", "1", "--workers",
                         "0", "--formats", "pytorch", "onnx", "--project", str(tmp_path / "fmt")])
    assert [r["status"] for r in rows] == ["ok", "failed: ValueError: exporter bug"]


@needs_shared(OFFICIAL_WEIGHTS)
def test_formats_benchmark_dynamic_exports_score_exactly_as_the_pt(tmp_path):
    """On a trained model (the official yolov5n, 12 coco128 images at 320) dynamic ONNX and OpenVINO match the .pt,
    and INT8 (calibrated on 24 other images) stays close."""
    from benchmarks import formats

    images = sorted((SHARED / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))
    (tmp_path / "val.txt").write_text("".join(f"{f}\n" for f in images[:12]))
    (tmp_path / "train.txt").write_text("".join(f"{f}\n" for f in images[12:36]))
    names = yaml.safe_load((SHARED / "data" / "coco128" / "coco128.yaml").read_text())["names"]
    data = tmp_path / "coco12.yaml"
    data.write_text(yaml.safe_dump({"train": str(tmp_path / "train.txt"), "val": str(tmp_path / "val.txt"),
                                    "names": names}))
    rows = formats.main(["--weights", str(OFFICIAL_WEIGHTS), "--data", str(data), "--imgsz", "320", "--dynamic",
                         "--formats", "pytorch", "onnx", "openvino", "openvino-int8", "--threads", "2",
                         "--workers", "0", "--project", str(tmp_path / "fmt")])
    scores = {r["format"]: (float(r["mAP50"]), float(r["mAP50-95"])) for r in rows}
    assert scores["pytorch"][0] > 0.2  # a real detector, so equal scores are a real check
    assert scores["onnx"] == pytest.approx(scores["pytorch"], abs=1e-3)
    assert scores["openvino"] == pytest.approx(scores["pytorch"], abs=1e-3)
    assert scores["openvino-int8"] == pytest.approx(scores["pytorch"], abs=0.05), scores  # rounded, not broken


@pytest.mark.filterwarnings("ignore:.*opset version ?8:UserWarning")  # torch's own notes on the old opset
def test_opsets_torch_cannot_write_or_this_model_cannot_use_are_one_line_errors(checkpoint):
    with pytest.raises(ConfigError, match=r"--opset 30: torch .* writes ONNX opsets 7 to \d+ \(default 17\)"):
        export_cli.run(weights=str(checkpoint), imgsz=[64], include=["onnx"], opset=30)
    with pytest.raises(ConfigError, match=r"--opset 8: this model cannot be exported at that opset \(.*upsample"):
        export_cli.run(weights=str(checkpoint), imgsz=[64], include=["onnx"], opset=8)


def test_a_folder_that_cannot_take_the_export_is_named(tmp_path, monkeypatch):
    weights = save_checkpoint({"model": tiny_model()}, tmp_path / "m.pt")
    (tmp_path / "m.onnx").mkdir()  # something in the way of the file
    with pytest.raises(ConfigError, match=r"m.onnx: cannot write the ONNX export \(Is a directory\)"):
        export_cli.run(weights=str(weights), imgsz=[64], include=["onnx"])
    monkeypatch.setattr(export_cli.os, "access", lambda path, mode: False)  # a read-only mount, as for ../shared
    with pytest.raises(ConfigError, match=rf"{tmp_path}: not writable, .*copy m.pt into a folder"):
        export_cli.run(weights=str(weights), imgsz=[64], include=["onnx"])
