"""torch.hub and the Python API: images of every kind in, result tables out, for .pt, .onnx and softmax models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import OFFICIAL_WEIGHTS, ROOT, SHARED, needs_shared
from PIL import Image

from models.yolo import DetectionModel
from utils.checkpoint import save_checkpoint
from utils.deploy.autoshape import AutoShape, Detections, inference_shape, to_uint8
from utils.deploy.detection_writer import crop_box
from utils.errors import CheckpointError, ConfigError

DEMO = [ROOT / "data" / "images" / "shapes1.jpg", ROOT / "data" / "images" / "shapes2.jpg"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random 3-class yolov5n checkpoint, and its ce (softmax) twin."""
    folder = tmp_path_factory.mktemp("hub")
    out = {}
    for kind in ("bce", "ce"):
        torch.manual_seed(0)
        model = DetectionModel("yolov5n.yaml", nc=3)
        model.names = {0: "circle", 1: "square", 2: "star"}
        model.hyp = {"cls_loss_type": kind}
        out[kind] = save_checkpoint({"model": model}, folder / f"{kind}.pt")
    return out


def low_threshold(model: AutoShape) -> AutoShape:
    """An untrained model scores low: keep its 20 best boxes so the tables are not empty."""
    model.conf, model.max_det = 0.0001, 20
    return model


def test_hub_load_untrained_model_by_name_offline():
    model = torch.hub.load(str(ROOT), "yolov5n", pretrained=False, classes=3, source="local")
    assert isinstance(model, AutoShape) and model.names == {0: "class0", 1: "class1", 2: "class2"}
    results = low_threshold(model)(str(DEMO[0]), size=320)
    assert isinstance(results, Detections) and len(results) == 1 and results.xyxy[0].shape[1] == 6


def test_pretrained_without_a_local_file_names_it(monkeypatch):
    with pytest.raises(CheckpointError, match=r"yolov5x\.pt: not found .* never downloads"):
        torch.hub.load(str(ROOT), "yolov5x", source="local")
    monkeypatch.chdir(ROOT)  # the working folder is the project's: named once
    with pytest.raises(CheckpointError, match=rf"yolov5x\.pt: not found in {ROOT}; this project never downloads"):
        torch.hub.load(str(ROOT), "yolov5x", source="local")


def test_custom_takes_paths_arrays_pil_and_lists(weights):
    model = low_threshold(torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local"))
    rgb = np.asarray(Image.open(DEMO[1]).convert("RGB"))
    results = model([str(DEMO[0]), rgb, Image.open(DEMO[1]), DEMO[0]], size=320)
    assert len(results) == 4 and results.files == ["shapes1.jpg", "image1.jpg", "shapes2.jpg", "shapes1.jpg"]
    torch.testing.assert_close(results.xyxy[1], results.xyxy[2])  # the same picture as array and as PIL image
    torch.testing.assert_close(results.xyxy[0], results.xyxy[3])  # str and Path
    h, w = rgb.shape[:2]
    boxes = results.xyxy[1]
    assert boxes.shape == (20, 6) and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
    assert ((results.xywhn[1][:, :4] >= 0) & (results.xywhn[1][:, :4] <= 1)).all()
    torch.testing.assert_close(results.xyxyn[1][:, 0] * w, boxes[:, 0])


def test_float_and_16_bit_arrays_give_the_detections_of_the_uint8_image_and_size_may_be_a_float(weights):
    model = low_threshold(torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local"))
    rgb = np.asarray(Image.open(DEMO[1]).convert("RGB"))
    results = model([rgb, rgb / 255.0, rgb.astype(np.float32), rgb.astype(np.uint16) * 257], size=320.0)
    for i in (1, 2, 3):  # [0, 1] floats (skimage, torchvision), 0-255 floats, 16-bit
        torch.testing.assert_close(results.xyxy[i], results.xyxy[0])
    overshoot = to_uint8(np.array([[[0.0, 0.5, 1.02]]]))  # a bicubic resize of a [0, 1] image overshoots 1
    assert overshoot.dtype == np.uint8 and overshoot.tolist() == [[[0, 128, 255]]]


def test_pandas_print_save_and_crop(weights, tmp_path, capsys):
    model = low_threshold(torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local"))
    model.max_det = 3
    results = model(str(DEMO[0]), size=320)
    frame = results.pandas().xyxy[0]
    assert list(frame.columns) == ["xmin", "ymin", "xmax", "ymax", "confidence", "class", "name"]
    assert len(frame) == 3 and set(frame["name"]) <= {"circle", "square", "star"}
    assert list(results.pandas().xywhn[0].columns)[:4] == ["xcenter", "ycenter", "width", "height"]
    results.print()
    out = capsys.readouterr().out
    assert out.startswith("image 1/1: 320x320 ") and "Speed:" in out
    folder = results.save(save_dir=tmp_path / "exp")
    assert (folder / "shapes1.jpg").is_file()
    crops = results.crop(save_dir=tmp_path / "exp")
    assert len(crops) == 3 and all(c["file"].is_file() and c["im"].ndim == 3 for c in crops)


def test_tolist_and_show(weights, monkeypatch):
    from PIL import Image

    model = low_threshold(torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local"))
    results = model([str(f) for f in DEMO], size=320)
    parts = results.tolist()
    assert len(parts) == len(DEMO) == 2 and all(len(r) == 1 for r in parts)
    assert all(torch.equal(r.xyxy[0], results.xyxy[i]) and r.files == [results.files[i]] for i, r in enumerate(parts))
    shown = []
    monkeypatch.setattr(Image.Image, "show", lambda im, *a, **k: shown.append(im.size))
    results.show()
    assert shown == [(im.shape[1], im.shape[0]) for im in results.ims]


def test_settings_classes_and_softmax_models(weights):
    model = low_threshold(torch.hub.load(str(ROOT), "custom", path=str(weights["ce"]), source="local"))
    assert model.class_act == "softmax"
    model.classes = [2]
    det = model(str(DEMO[0]), size=320).xyxy[0]
    assert len(det) and (det[:, 5] == 2).all()


def test_onnx_file_gives_the_same_detections_as_its_pt(weights, tmp_path):
    import export as export_cli

    onnx_file = export_cli.run(weights=str(weights["bce"]), imgsz=(320, 320), include=("onnx",))["onnx"]
    pt = low_threshold(torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local"))
    ox = low_threshold(torch.hub.load(str(ROOT), "custom", path=str(onnx_file), source="local"))
    a, b = pt(str(DEMO[0]), size=320).xyxy[0], ox(str(DEMO[0]), size=320).xyxy[0]
    assert a.shape == b.shape and (a - b).abs().max() < 1e-2


def test_tensor_input_gives_raw_predictions(weights):
    model = torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local")
    y = model(torch.zeros(1, 3, 64, 64))
    assert y.shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 8)


def test_augment_merges_three_passes(weights):
    model = torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local")
    plain, tta = model(torch.zeros(1, 3, 64, 64)), model(torch.zeros(1, 3, 64, 64), augment=True)
    assert tta.shape[1] > plain.shape[1] and tta.shape[2] == plain.shape[2]
    results = low_threshold(model)(str(DEMO[0]), size=320, augment=True)
    assert results.xyxy[0].shape == (20, 6)


def test_bad_inputs_are_named(weights, tmp_path):
    model = torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local")
    with pytest.raises(ConfigError, match="never downloads"):
        model("https://ultralytics.com/images/zidane.jpg")
    with pytest.raises(ConfigError, match=r"missing\.jpg: file not found"):
        model(str(tmp_path / "missing.jpg"))
    with pytest.raises(ConfigError, match=r"input 0: expected an HWC \(or CHW\) image array"):
        model(np.zeros((4, 4, 4, 4)))
    with pytest.raises(ConfigError, match="an empty list"):
        model([])
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"broken\.pt: cannot be read"):
        torch.hub.load(str(ROOT), "custom", path=str(bad), source="local")


def test_a_batch_runs_at_the_smallest_shape_that_holds_its_images_as_upstream(weights):
    assert inference_shape([(1080, 810)], (640, 640), 32) == [640, 480]  # bus.jpg: longest side to 640
    assert inference_shape([(1080, 810), (720, 1280)], (640, 640), 32) == [640, 640]  # the largest of the batch
    assert inference_shape([(100, 50)], (32, 64), 32) == [32, 32]  # (h, w): the image fits in 32x64 (32x16)
    model = low_threshold(torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local"))
    tall = np.zeros((100, 50, 3), np.uint8)
    assert model(tall, size=64).s == (1, 3, 64, 32)
    assert model([tall, tall.transpose(1, 0, 2)], size=64).s == (2, 3, 64, 64)


def test_chw_arrays_and_exif_rotated_pil_images_are_read_upright(weights, tmp_path):
    model = low_threshold(torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local"))
    rgb = np.asarray(Image.open(DEMO[1]).convert("RGB"))
    results = model([rgb, rgb.transpose(2, 0, 1)], size=320)
    torch.testing.assert_close(results.xyxy[1], results.xyxy[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown rotated 90 degrees clockwise
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "turned.jpg", exif=exif)
    turned = model([Image.open(tmp_path / "turned.jpg"), str(tmp_path / "turned.jpg")], size=64)
    assert [im.shape for im in turned.ims] == [(40, 20, 3), (40, 20, 3)] and turned.files == ["turned.jpg"] * 2


def test_summary_repr_timings_and_amp_as_upstream(weights):
    model = low_threshold(torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local"))
    assert model.amp is False
    results = model([str(DEMO[0])] * 2, size=320)
    model.amp = True  # autocast on CUDA only: the same detections on the CPU
    torch.testing.assert_close(model(str(DEMO[0]), size=320).xyxy[0], results.xyxy[0])
    plural = [f"{int((p[:, 5] == c).sum())} {results.names[int(c)]}s" for p in results.pred for c in p[:, 5].unique()
              if (p[:, 5] == c).sum() > 1]
    assert plural and all(word in str(results) for word in plural)  # '17 circles', as upstream
    assert repr(results).startswith("Detections: 2 images\nimage 1/2: 320x320 ")
    assert len(results.t) == 3 and results.t == results.times and all(t >= 0 for t in results.t)


def test_render_draws_into_ims_as_upstream_and_save_crop_still_use_the_originals(weights, tmp_path):
    model = low_threshold(torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local"))
    model.max_det = 2
    results = model(str(DEMO[0]), size=320)
    original = results.ims[0].copy()
    drawn = results.render()
    assert drawn is results.ims and not np.array_equal(results.ims[0], original)
    assert np.array_equal(results.originals[0], original)
    again = results.render()[0].copy()
    assert np.array_equal(again, drawn[0])  # drawn on the original again, not twice
    crop = results.crop(save=False)[0]
    x1, y1, x2, y2 = crop_box(results.xyxy[0][0, :4], original.shape)
    assert np.array_equal(crop["im"], original[y1:y2, x1:x2])  # cut from the original, not the drawing
    assert cv2.imread(str(results.save(save_dir=tmp_path / "exp") / "shapes1.jpg")) is not None


def test_crop_dicts_hold_tensors_and_number_their_files_as_upstream(weights, tmp_path):
    model = low_threshold(torch.hub.load(str(ROOT), "custom", path=str(weights["bce"]), source="local"))
    model.max_det, model.classes = 3, [0]
    results = model(str(DEMO[0]), size=320)
    crops = results.crop(save_dir=tmp_path / "exp")
    assert [c["file"].name for c in crops] == ["shapes1.jpg", "shapes1-2.jpg", "shapes1-3.jpg"]
    first = crops[0]
    assert len(first["box"]) == 4 and all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in first["box"])
    assert first["conf"].item() == results.xyxy[0][0, 4].item() and int(first["cls"]) == 0
    assert first["label"] == f"circle {first['conf'].item():.2f}"
    unsaved = results.crop(save=False, save_dir=tmp_path / "none")
    assert not (tmp_path / "none").exists() and all(c["file"] is None for c in unsaved)
    assert all(np.array_equal(a["im"], b["im"]) for a, b in zip(crops, unsaved))


def test_named_entries_take_verbose_and_pick_the_device_as_upstream(weights, logs):
    pair = [str(weights["bce"])] * 2  # an ensemble: its load logs a line
    quiet = torch.hub.load(str(ROOT), "custom", path=pair, source="local", _verbose=False)
    assert logs == [] and quiet._device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    torch.hub.load(str(ROOT), "custom", path=pair, source="local")
    assert any("NMS runs over all their predictions" in line for line in logs)
    model = torch.hub.load(str(ROOT), "yolov5n", pretrained=False, classes=3, _verbose=False, device="cpu",
                           source="local")
    assert model._device().type == "cpu"


def test_pretrained_with_other_classes_takes_the_matching_weights(weights, tmp_path, monkeypatch):
    from utils.checkpoint import attempt_load

    torch.manual_seed(1)
    official = DetectionModel("yolov5n.yaml", nc=80)
    save_checkpoint({"model": official}, tmp_path / "yolov5n.pt")
    monkeypatch.chdir(tmp_path)
    model = torch.hub.load(str(ROOT), "yolov5n", classes=3, source="local")
    src = attempt_load(tmp_path / "yolov5n.pt", fuse=False).state_dict()
    own = model.model.state_dict()
    assert model.model.yaml["nc"] == 3 and model.names == {0: "class0", 1: "class1", 2: "class2"}
    torch.testing.assert_close(own["model.0.conv.weight"], src["model.0.conv.weight"])  # the backbone's first conv
    assert own["model.24.m.0.weight"].shape[0] == 3 * 8 != src["model.24.m.0.weight"].shape[0]  # a new head


@needs_shared(OFFICIAL_WEIGHTS)
def test_official_model_finds_upstreams_objects_on_each_sample_alone():
    model = torch.hub.load(str(ROOT), "custom", path=str(OFFICIAL_WEIGHTS), source="local", _verbose=False)
    bus, zidane = model(str(SHARED / "samples" / "bus.jpg")), model(SHARED / "samples" / "zidane.jpg")
    assert bus.s == (1, 3, 640, 480) and str(bus).startswith("image 1/1: 1080x810 4 persons, 1 bus\n")
    assert zidane.s == (1, 3, 384, 640) and str(zidane).startswith("image 1/1: 720x1280 2 persons, 1 tie\n")
