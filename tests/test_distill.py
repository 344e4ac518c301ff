"""Knowledge distillation (``train.py --teacher``): divergences, head checks, a tiny teacher -> student run."""

from __future__ import annotations

import math
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_shapes_yaml

import train
from models.yolo import DetectionModel
from utils.boxes import box_params
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError
from utils.train.distill import (
    Distiller,
    adopt_anchors,
    bernoulli_kl,
    check_compatible,
    class_divergence,
    reference_gains,
    teacher_class_probs,
)
from utils.train.hyp import load_hyp
from utils.train.transfer import scale_loss_gains

TINY = {"imgsz": 64, "batch_size": 4, "workers": 0, "seed": 0, "noplots": True}


def model(cfg: str = "yolov5n.yaml", nc: int = 6, **hyp) -> DetectionModel:
    """A model with scratch-low hyperparameters (plus overrides) attached, as training attaches them."""
    m = DetectionModel(cfg, nc=nc)
    m.hyp = {**load_hyp("data/hyps/hyp.scratch-low.yaml"), **hyp}
    return m


def raw_outputs(m: DetectionModel, seed: int = 0) -> list[torch.Tensor]:
    """The training-mode head outputs of m on a random 64 px batch of two."""
    torch.manual_seed(seed)
    return m.train()(torch.rand(2, 3, 64, 64))


def test_bernoulli_kl_by_hand():
    t = torch.tensor([math.log(0.8 / 0.2)])  # teacher probability 0.8
    expected = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)  # against a student at 0.5
    assert float(bernoulli_kl(torch.zeros(1), t)) == pytest.approx(expected, rel=1e-5)
    assert float(bernoulli_kl(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_box_params_are_yolov5s_decoding_in_grid_cells_and_anchor_multiples():
    raw = torch.zeros(1, 4)  # sigmoid 0.5: centre offset 0.5 cell, size 1 anchor
    assert box_params(raw).tolist() == [[0.5, 0.5, 1.0, 1.0]]


def test_class_divergence_is_zero_at_the_teacher_and_positive_elsewhere():
    t = torch.tensor([[2.0, -1.0, 0.5]])
    for kind in ("bce", "ce"):
        q = teacher_class_probs(t, "sigmoid", kind)
        match = t if kind == "bce" else q.log()  # ce: logits whose softmax is q
        assert float(class_divergence(match, q, kind)) == pytest.approx(0.0, abs=1e-6)
        assert float(class_divergence(torch.zeros_like(t), q, kind)) > 0.01
    assert float(teacher_class_probs(t, "softmax", "ce").sum()) == pytest.approx(1.0)


def test_a_student_equal_to_its_teacher_has_zero_loss_and_a_different_one_gets_gradients():
    teacher = model()
    distiller = Distiller(deepcopy(teacher), teacher)
    pred = raw_outputs(teacher)
    loss, items = distiller.loss(pred, [p.detach() for p in pred])
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-5) and items.shape == (3,)

    student = model("yolov5-mobilenetv3s.yaml")
    adopt_anchors(teacher, student)
    distiller = Distiller(teacher, student, weight=2.0)
    loss, items = distiller.loss(raw_outputs(student), [p.detach() for p in raw_outputs(teacher.eval().train())])
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert loss.item() > 0 and (items > 0).all() and grads and all(torch.isfinite(g).all() for g in grads)
    half, _ = Distiller(teacher, student, weight=1.0).loss(raw_outputs(student), raw_outputs(teacher))
    full, _ = distiller.loss(raw_outputs(student), raw_outputs(teacher))
    assert full.item() == pytest.approx(2 * half.item(), rel=1e-5)  # the weight scales every term


def test_teacher_outputs_are_the_eval_models_raw_maps_without_decoding():
    teacher = model()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        _, expected = deepcopy(teacher).eval()(x)  # the full eval path: decoded boxes and the raw maps
    distiller = Distiller(teacher, deepcopy(teacher))
    got = distiller.teacher_outputs(x)
    norms = [m for m in distiller.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)  # BatchNorm keeps its running statistics
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(got, expected))


def test_heads_must_match_and_a_fresh_student_takes_the_teachers_anchors():
    teacher = model()
    teacher.model[-1].anchors.mul_(1.5)  # as AutoAnchor might have left them
    student = model("yolov5-mobilenetv3s.yaml")
    with pytest.raises(ConfigError, match=r"--teacher t\.pt: .*anchors differ"):
        check_compatible(teacher, student, "t.pt")
    adopt_anchors(teacher, student)
    check_compatible(teacher, student, "t.pt")
    with pytest.raises(ConfigError, match=r"--teacher t\.pt: .*classes 6 \(teacher\) vs 3 \(student\)"):
        check_compatible(teacher, model(nc=3), "t.pt")


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> tuple[str, Path]:
    """(data YAML, best.pt) of a 1-epoch yolov5n teacher on a tiny generated set."""
    folder = tmp_path_factory.mktemp("distill")
    data = tiny_shapes_yaml(folder, seed=5, n_train=8, n_val=4)
    train.run(data=data, project=str(folder), name="teacher", epochs=1, **TINY)
    return data, folder / "teacher" / "weights" / "best.pt"


def test_train_with_a_teacher_logs_saves_and_resumes_with_it(teacher_run, tmp_path, logs):
    data, best = teacher_run
    train.run(data=data, project=str(tmp_path), cfg="yolov5-mobilenetv3s.yaml", teacher=str(best),
              distill_weight=0.5, epochs=2, stop_after=1, noval=True, **TINY)
    run_dir = tmp_path / "exp"
    opt = yaml.safe_load((run_dir / "opt.yaml").read_text())
    assert opt["teacher"] == str(best) and opt["distill_weight"] == 0.5
    assert any("distillation:" in m for m in logs)
    assert any("AutoAnchor skipped" in m for m in logs)
    student = load_checkpoint(run_dir / "weights" / "last.pt")["model"]
    assert torch.equal(student.model[-1].anchors, load_checkpoint(best)["model"].model[-1].anchors.float())
    logs.clear()
    train.run(resume=str(run_dir / "weights" / "last.pt"))
    assert any("distillation:" in m for m in logs)  # the resumed run distils from the same teacher
    assert load_checkpoint(run_dir / "weights" / "last.pt")["epoch"] == -1  # finished and stripped


def test_a_teacher_with_other_classes_or_a_zero_weight_is_a_clear_error(teacher_run, tmp_path):
    data, best = teacher_run
    with pytest.raises(ConfigError, match="classes 6 \\(teacher\\) vs 1 \\(student\\)"):
        train.run(data=data, project=str(tmp_path), teacher=str(best), single_cls=True, epochs=1, **TINY)
    with pytest.raises(ConfigError, match="--distill-weight 0"):
        train.run(data=data, project=str(tmp_path), teacher=str(best), distill_weight=0.0, epochs=1, **TINY)


def test_ce_class_term_is_divided_by_nc_and_one_class_has_no_class_term():
    teacher, student = model(), model(cls_loss_type="ce")
    distiller = Distiller(teacher, student)
    pred, tpred = raw_outputs(student, 1), [p.detach() for p in raw_outputs(teacher, 2)]
    _, items = distiller.loss(pred, tpred)
    by_hand = sum((t[..., 4].sigmoid() * class_divergence(s[..., 5:], teacher_class_probs(t[..., 5:], "sigmoid", "ce"),
                                                          "ce")).sum() / t[..., 4].sigmoid().sum()
                  for s, t in zip(pred, tpred))
    assert float(items[2]) == pytest.approx(float(by_hand.detach()) / 6 * distiller.gains[2], rel=1e-5)
    single = model(nc=1)
    _, items = Distiller(model(nc=1), single).loss(raw_outputs(single, 1), raw_outputs(single, 2))
    assert float(items[2]) == 0.0 and float(items[1]) > 0  # as ComputeLoss: one class, no class loss


def test_distillation_gains_are_the_reference_ones_whatever_the_recipe():
    low = scale_loss_gains(load_hyp("data/hyps/hyp.scratch-low.yaml"), 3, 6, 64)
    assert reference_gains(3, 6, 64) == pytest.approx((low["box"], low["obj"], low["cls"]))
    focal = scale_loss_gains(load_hyp("data/hyps/hyp.focal.yaml"), 3, 6, 64)
    assert focal["obj"] < reference_gains(3, 6, 64)[1] / 30  # what the student's own gain would have been


def test_a_teacher_must_be_a_detector_with_the_same_class_names():
    student = model()
    with pytest.raises(ConfigError, match=r"--teacher x\.pt: not a YOLOv5 detector"):
        check_compatible(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), student, "x.pt")
    teacher = model()
    teacher.names, student.names = {i: f"c{i}" for i in range(6)}, {i: f"d{i}" for i in range(6)}
    with pytest.raises(ConfigError, match=r"class names \['c0'.*\(teacher\) vs \['d0'.*\(student\)"):
        check_compatible(teacher, student, "t.pt")


def test_a_missing_teacher_names_the_flag_and_a_relative_one_is_saved_absolute(teacher_run, tmp_path, monkeypatch):
    data, best = teacher_run
    with pytest.raises(ConfigError, match=r"--distill-weight 0\.5 needs --teacher"):
        train.run(data=data, project=str(tmp_path), distill_weight=0.5, epochs=1, **TINY)
    with pytest.raises(ConfigError, match=r"--teacher nope\.pt: file not found"):
        train.run(data=data, project=str(tmp_path), teacher="nope.pt", epochs=1, **TINY)
    monkeypatch.chdir(best.parent)
    train.run(data=data, project=str(tmp_path), cfg="yolov5-mobilenetv3s.yaml", teacher=best.name, epochs=1,
              noval=True, **TINY)
    assert yaml.safe_load((tmp_path / "exp" / "opt.yaml").read_text())["teacher"] == str(best.resolve())
