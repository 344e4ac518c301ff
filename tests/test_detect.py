"""detect.py: options, outputs (images, mp4, txt, csv, crops), errors, and real detections of the official model."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import OFFICIAL_WEIGHTS, ROOT, SHARED, needs_shared

import detect
from models.backend import DetectMultiBackend
from models.yolo import DetectionModel
from utils.checkpoint import attempt_load, load_checkpoint, save_checkpoint
from utils.deploy.export import export_onnx
from utils.deploy.sources import LoadImages
from utils.errors import CheckpointError
from utils.nms import non_max_suppression

SAMPLES = SHARED / "samples"
COCO_PERSON, COCO_BUS, COCO_TIE = 0, 5, 27


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A randomly initialised 2-class yolov5n checkpoint (softmax scores, to exercise exclusive NMS)."""
    model = DetectionModel("yolov5n.yaml", nc=2)
    model.names = {0: "square", 1: "circle"}
    model.hyp = {"cls_loss_type": "ce"}
    return save_checkpoint({"model": model}, tmp_path_factory.mktemp("w") / "tiny.pt")


@pytest.fixture
def images(tmp_path):
    """A folder with two random images."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("one.jpg", (90, 120, 3)), ("two.png", (100, 70, 3))):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, shape, dtype=np.uint8))
    return folder


def counts(det: torch.Tensor) -> dict[int, int]:
    """{class id: number of boxes} of (n, 6) detections."""
    return {int(c): int((det[:, 5] == c).sum()) for c in det[:, 5].unique()}


def test_parse_opt_defaults(capsys):
    opt = detect.parse_opt([])
    assert opt.imgsz == [640, 640] and opt.conf_thres == 0.25 and opt.iou_thres == 0.45 and opt.max_det == 1000
    assert opt.line_thickness == 3 and opt.vid_stride == 1 and opt.name == "exp"
    assert Path(opt.weights) == ROOT / "runs" / "train" / "exp" / "weights" / "best.pt"  # what train.py leaves
    assert opt.project.endswith("runs/detect") and opt.classes is None
    opt = detect.parse_opt(["--imgsz", "320", "480", "--classes", "0", "2", "--save-txt", "--hide-conf"])
    assert opt.imgsz == [320, 480] and opt.classes == [0, 2] and opt.save_txt and opt.hide_conf
    with pytest.raises(SystemExit):  # argparse's one-line usage error
        detect.parse_opt(["--imgsz", "128", "128", "128"])
    assert "--imgsz takes one size or two (h w), got 3" in capsys.readouterr().err


def test_missing_default_weights_error(tmp_path, images):
    with pytest.raises(CheckpointError, match="--weights"):
        detect.run(weights=tmp_path / "yolov5s.pt", source=images, project=tmp_path)


def test_cli_error_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        detect.cli(["--weights", str(tmp_path / "none.pt"), "--source", str(tmp_path)])
    message = str(e.value.code)
    assert message.startswith("detect.py: weights ") and "none.pt" in message and "--weights" in message
    assert "\n" not in message


def test_images_txt_csv_crops(tiny_weights, images, tmp_path):
    out = detect.run(weights=tiny_weights, source=images, imgsz=[64], conf_thres=0.0, max_det=3, device="cpu",
                     save_txt=True, save_conf=True, save_csv=True, save_crop=True, project=tmp_path / "runs")
    save_dir = out["save_dir"]
    assert save_dir == tmp_path / "runs" / "exp"
    assert [p["path"].rsplit("/", 1)[-1] for p in out["predictions"]] == ["one.jpg", "two.png"]
    assert (save_dir / "one.jpg").is_file() and (save_dir / "two.png").is_file()
    for pred in out["predictions"]:
        det = pred["det"]
        assert det.shape == (3, 6) and pred["frame"] == 0
        rows = (save_dir / "labels" / f"{pred['path'].rsplit('/', 1)[-1].split('.')[0]}.txt").read_text().split("\n")
        values = np.array([r.split() for r in rows if r], dtype=float)
        assert values.shape == (3, 6) and ((values[:, 1:5] >= 0) & (values[:, 1:5] <= 1)).all()
        np.testing.assert_allclose(values[:, 5], det[:, 4].numpy(), atol=1e-5)
    with open(save_dir / "predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and set(table[0]) >= {"Image Name", "Prediction", "Confidence", "x1", "y2"}
    assert {r["Prediction"] for r in table} <= {"square", "circle"}
    assert len(list((save_dir / "crops").rglob("*.jpg"))) == 6
    assert len(out["speed"]) == 3
    again = detect.run(weights=tiny_weights, source=images / "one.jpg", imgsz=[64], nosave=True, device="cpu",
                       project=tmp_path / "runs")
    assert again["save_dir"].name == "exp2" and not list(again["save_dir"].iterdir())


def test_update_strips_the_optimizer_after_detecting(tiny_weights, images, tmp_path):
    import torch.optim

    model = DetectionModel("yolov5n.yaml", nc=2)
    last = save_checkpoint({"model": model, "epoch": 3, "optimizer": torch.optim.SGD(model.parameters()).state_dict()},
                           tmp_path / "last.pt")
    before = last.stat().st_size
    detect.main(detect.parse_opt(["--weights", str(last), str(tiny_weights), "--source", str(images / "one.jpg"),
                                  "--imgsz", "64", "--project", str(tmp_path / "runs"), "--nosave", "--update"]))
    ckpt = load_checkpoint(last)
    assert ckpt["optimizer"] is None and ckpt["epoch"] == -1 and last.stat().st_size < before  # the FP16 model alone
    assert next(ckpt["model"].parameters()).dtype == torch.float16


def test_unreadable_source_says_so(tiny_weights, tmp_path, logs):
    (tmp_path / "broken.jpg").write_text("not an image")
    out = detect.run(weights=tiny_weights, source=tmp_path / "broken.jpg", imgsz=[64], device="cpu",
                     project=tmp_path / "runs")
    assert out["predictions"] == []
    assert any("broken.jpg: no image or frame could be read" in m for m in logs)
    assert not any(m.startswith("Speed:") for m in logs)


def test_softmax_model_uses_exclusive_nms(tiny_weights, images, tmp_path, monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return non_max_suppression(*args, **kwargs)

    monkeypatch.setattr(detect, "non_max_suppression", spy)
    detect.run(weights=tiny_weights, source=images / "one.jpg", imgsz=[64], device="cpu", nosave=True,
               project=tmp_path, classes=[1], agnostic_nms=True, max_det=7)
    assert calls[0]["exclusive"] is True and calls[0]["max_det"] == 7


def test_several_weights_run_as_one_ensemble(tiny_weights, images, tmp_path, monkeypatch, logs):
    other = save_checkpoint({"model": DetectionModel("yolov5n.yaml", nc=2)}, tmp_path / "other.pt")  # sigmoid
    seen = []  # (predictions per image, exclusive) of each NMS call
    monkeypatch.setattr(detect, "non_max_suppression",
                        lambda y, *a, **k: seen.append((y.shape[1], k["exclusive"])) or non_max_suppression(y, *a, **k))
    argv = ["--source", str(images / "one.jpg"), "--imgsz", "64", "--device", "cpu", "--engine", "torch",
            "--project", str(tmp_path / "runs")]
    detect.main(detect.parse_opt(["--weights", str(tiny_weights), *argv]))
    out = detect.main(detect.parse_opt(["--weights", str(tiny_weights), str(other), *argv]))
    (n, single_exclusive), (n2, ensemble_exclusive) = seen
    assert n2 == 2 * n and single_exclusive and not ensemble_exclusive  # softmax + sigmoid members: not exclusive
    assert len(out["predictions"]) == 1 and (out["save_dir"] / "one.jpg").is_file()
    assert any(m.startswith(f"Ensemble of 2 models: {tiny_weights}, {other}") for m in logs)
    assert any("other.pt names its classes differently" in m for m in logs)
    with pytest.raises(SystemExit) as e:
        detect.cli(["--weights", str(tiny_weights), str(tmp_path / "none.pt"), *argv])
    assert "none.pt: file not found" in str(e.value.code) and "\n" not in str(e.value.code)


@needs_shared(SAMPLES / "vtest_30f.mp4")
def test_video_gives_30_frame_mp4(tiny_weights, tmp_path):
    out = detect.run(weights=tiny_weights, source=SAMPLES / "vtest_30f.mp4", imgsz=[64], device="cpu",
                     project=tmp_path)
    assert [p["frame"] for p in out["predictions"]] == list(range(1, 31))
    cap = cv2.VideoCapture(str(out["save_dir"] / "vtest_30f.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    size = (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    assert n == 30 and size == (768, 576)


@pytest.fixture(scope="module")
def official_onnx(tmp_path_factory) -> dict[str, object]:
    """The official checkpoint exported once with dynamic axes and once at the fixed size 640x640."""
    folder = tmp_path_factory.mktemp("official")
    model = attempt_load(OFFICIAL_WEIGHTS)
    im = torch.zeros(1, 3, 640, 640)
    return {"dynamic": export_onnx(model, im, folder / "dynamic.onnx", dynamic=True),
            "static": export_onnx(model, im, folder / "static.onnx")}


@pytest.mark.slow
@needs_shared(OFFICIAL_WEIGHTS)
def test_official_checkpoint_detections_pt_and_onnx(tmp_path, official_onnx):
    """4 persons + 1 bus on bus.jpg and 2 persons + 1 tie on zidane.jpg, from the .pt and its (dynamic) ONNX export,
    in onnxruntime and in OpenCV DNN (--dnn)."""
    expected = {"bus.jpg": {COCO_PERSON: 4, COCO_BUS: 1}, "zidane.jpg": {COCO_PERSON: 2, COCO_TIE: 1}}
    for w, dnn in ((OFFICIAL_WEIGHTS, False), (official_onnx["dynamic"], False), (official_onnx["dynamic"], True)):
        out = detect.run(weights=w, source=[SAMPLES / "bus.jpg", SAMPLES / "zidane.jpg"], imgsz=[640],
                         conf_thres=0.25, device="cpu", project=tmp_path / "runs", dnn=dnn)
        got = {p["path"].rsplit("/", 1)[-1]: counts(p["det"]) for p in out["predictions"]}
        assert got == expected, (w.suffix, dnn)
        assert DetectMultiBackend(w).names[COCO_TIE] == "tie"


@pytest.mark.slow
@needs_shared(OFFICIAL_WEIGHTS)
def test_official_static_onnx_matches_pt_on_same_input(official_onnx):
    """A fixed-size export letterboxes to the full 640x640 square; on that same input it equals the .pt model."""
    pt, ort = DetectMultiBackend(OFFICIAL_WEIGHTS), DetectMultiBackend(official_onnx["static"])
    assert not ort.dynamic and ort.imgsz == [640, 640]
    for _, im, *_ in LoadImages(SAMPLES / "bus.jpg", img_size=640, auto=False):
        x = torch.from_numpy(im).float().div(255)[None]
        a, b = (non_max_suppression(backend(x), 0.25, 0.45)[0] for backend in (pt, ort))
        assert a.shape == b.shape and (a - b).abs().max() < 1e-2


def test_default_source_is_the_shipped_demo_images(tiny_weights, tmp_path):
    assert Path(detect.parse_opt([]).source) == ROOT / "data" / "images"
    out = detect.run(weights=tiny_weights, project=tmp_path, imgsz=(320, 320))  # no source given
    assert sorted(p.name for p in out["save_dir"].glob("*.jpg")) == ["shapes1.jpg", "shapes2.jpg"]
