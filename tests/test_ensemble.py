"""models/ensemble.py: several .pt models as one backend whose predictions go to one NMS (YOLOv5's NMS ensemble)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hubconf
from models.backend import DetectMultiBackend
from models.ensemble import Ensemble, load_backend, weights_list
from models.yolo import DetectionModel
from utils.checkpoint import save_checkpoint
from utils.errors import ConfigError
from utils.nms import non_max_suppression

NAMES = {0: "circle", 1: "square", 2: "star"}


def tiny_pt(path, nc: int = 3, seed: int = 0, names: dict | None = None, ce: bool = False):
    """Save a random yolov5n (nc classes, the given seed and names; softmax scores if ce). Its convolutions are
    Kaiming-initialised so that every box scores differently: with the default init the signal fades to nothing and
    boxes score alike per anchor, ties that greedy NMS breaks by their order."""
    torch.manual_seed(seed)
    model = DetectionModel("yolov5n.yaml", nc=nc)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    model.names = dict(names or {i: NAMES.get(i, f"c{i}") for i in range(nc)})
    if ce:
        model.hyp = {"cls_loss_type": "ce"}
    return save_checkpoint({"model": model}, path)


@pytest.fixture(scope="module")
def pts(tmp_path_factory) -> dict:
    """Two different 3-class models (a sigmoid, b softmax) and a 2-class one."""
    folder = tmp_path_factory.mktemp("ens")
    return {"a": tiny_pt(folder / "a.pt", seed=1), "b": tiny_pt(folder / "b.pt", seed=2, ce=True),
            "two": tiny_pt(folder / "two.pt", nc=2, seed=3)}


def nms(y: torch.Tensor) -> list[torch.Tensor]:
    """val.py's NMS settings: every class above 0.001 is a candidate."""
    return non_max_suppression(y, 0.001, 0.6, multi_label=True, max_det=300)


def test_one_path_is_a_plain_backend_several_an_ensemble(pts):
    assert weights_list(str(pts["a"])) == weights_list([pts["a"]]) == [pts["a"]]
    assert isinstance(load_backend([pts["a"]], engine="torch"), DetectMultiBackend)
    ens = load_backend([pts["a"], pts["b"]], engine="torch")
    assert isinstance(ens, Ensemble) and ens.describe() == f"Ensemble of 2 models: {pts['a']}, {pts['b']}"
    assert (ens.nc, ens.names, ens.stride, ens.engine, ens.dynamic) == (3, NAMES, 32, "torch", True)
    assert ens.class_act == "sigmoid"  # softmax only when every member is
    assert load_backend([pts["b"], pts["b"]], engine="torch").class_act == "softmax"


def test_a_model_with_itself_gives_the_single_models_detections(pts):
    single, ens = load_backend(pts["a"], engine="torch"), load_backend([pts["a"], pts["a"]], engine="torch")
    im = torch.rand(2, 3, 64, 96)
    y1, y2 = single(im), ens(im)
    assert y2.shape == (2, 2 * y1.shape[1], 8) and torch.equal(y2, torch.cat([y1, y1], 1))
    for d1, d2 in zip(nms(y1), nms(y2)):
        assert len(d1) > 0 and torch.equal(d1, d2)  # every duplicate box suppressed by its twin


def test_two_models_equal_nms_over_their_concatenated_outputs(pts):
    a, b = (load_backend(pts[k], engine="torch") for k in "ab")
    ens = load_backend([pts["a"], pts["b"]], engine="torch")
    im = torch.rand(2, 3, 64, 64)
    ya, yb, y = a(im), b(im), ens(im)
    assert torch.equal(y, torch.cat([ya, yb], 1))
    dets = nms(y)
    assert all(len(d) > 0 for d in dets)
    assert all(torch.equal(d, e) for d, e in zip(dets, nms(torch.cat([ya, yb], 1))))
    assert not all(torch.equal(d, e) for d, e in zip(dets, nms(ya)))  # b's boxes take part


def test_mismatched_class_counts_are_a_clear_error(pts):
    with pytest.raises(ConfigError, match=r"a\.pt predicts 3 classes but .*two\.pt predicts 2; .*share") as e:
        load_backend([pts["a"], pts["two"]], engine="torch")
    assert "\n" not in str(e.value)


def test_different_names_warn_and_the_first_models_are_used(pts, tmp_path, logs):
    other = tiny_pt(tmp_path / "other.pt", names={0: "x", 1: "y", 2: "z"})
    ens = load_backend([pts["a"], other], engine="torch")
    assert ens.names == NAMES
    assert any("other.pt names its classes differently from" in m and "a.pt" in m for m in logs)


def test_stride_is_the_largest_members_and_exports_are_refused(pts):
    a, b = (load_backend(pts[k], engine="torch") for k in "ab")
    b.stride = 64  # as a P6 model's
    assert Ensemble([a, b]).stride == 64
    with pytest.raises(ConfigError, match=r"m\.onnx: an ensemble \(several --weights\) takes \.pt files only"):
        load_backend([pts["a"], pts["a"].with_name("m.onnx")])
    with pytest.raises(ConfigError, match="at least 2 models"):
        Ensemble([a])


def test_augment_runs_tta_in_each_member(pts):
    a, b = (load_backend(pts[k], engine="torch") for k in "ab")
    ens = load_backend([pts["a"], pts["b"]], engine="torch")
    im = torch.rand(1, 3, 64, 64)
    assert torch.equal(ens(im, augment=True), torch.cat([a(im, augment=True), b(im, augment=True)], 1))


def test_members_run_on_onnxruntime_with_the_same_output(pts):
    eager = load_backend([pts["a"], pts["b"]], engine="torch")
    fast = load_backend([pts["a"], pts["b"]], engine="auto")  # onnxruntime on a CPU, one cached export per member
    assert fast.engine == "onnxruntime"
    im = torch.rand(1, 3, 64, 64)
    assert (fast(im) - eager(im)).abs().max() < 1e-3


def test_hub_custom_takes_a_list_of_weights(pts):
    model = hubconf.custom([pts["a"], pts["b"]])
    results = model(np.zeros((48, 64, 3), np.uint8), size=64)
    assert isinstance(model.model, Ensemble) and model.names == NAMES and len(results.xyxy) == 1
