"""ComputeLoss and its terms: hand-computed values, YOLOv5 parity, every option combination, edge cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.yolo import DetectionModel
from utils.errors import ConfigError
from utils.loss import ComputeLoss, box_l1_loss, describe_loss
from utils.loss_terms import (
    bce_elementwise,
    ce_elementwise,
    focal_factor_bce,
    focal_factor_ce,
    slide_mu,
    slide_weight,
)
from utils.train.hyp import load_hyp

LN2 = math.log(2.0)


def base_hyp(**overrides) -> dict:
    """scratch-low hyperparameters with overrides (validated, optional keys filled)."""
    return {**load_hyp("data/hyps/hyp.scratch-low.yaml"), **overrides}


# ---- Slide weight


def test_slide_weight_three_intervals():
    mu = 0.5
    x = torch.tensor([0.2, 0.4, 0.45, 0.5, 0.7, 1.0])
    expected = [1.0, 1.0, math.exp(0.5), math.exp(0.5), math.exp(0.3), 1.0]
    torch.testing.assert_close(slide_weight(x, mu), torch.tensor(expected))


def test_slide_weight_blend_ratio():
    x, mu = torch.tensor([0.45, 0.8]), 0.5
    w = torch.tensor([math.exp(0.5), math.exp(0.2)])
    torch.testing.assert_close(slide_weight(x, mu, ratio=0.0), torch.ones(2))
    torch.testing.assert_close(slide_weight(x, mu, ratio=0.5), 1 + 0.5 * (w - 1))
    torch.testing.assert_close(slide_weight(x, mu, ratio=1.0), w)


def test_slide_mu_floor_and_empty_level():
    assert slide_mu(torch.tensor([0.05, 0.15])).item() == pytest.approx(0.2)  # mean 0.1 floored at 0.2
    assert slide_mu(torch.tensor([0.5, 0.7])).item() == pytest.approx(0.6)
    assert slide_mu(torch.tensor([-0.3, 0.1])).item() == pytest.approx(0.2)  # CIoU can be negative: still 0.2
    assert slide_mu(torch.zeros(0)).item() == pytest.approx(0.5)


def test_slide_weight_carries_no_gradient():
    x = torch.tensor([0.7], requires_grad=True)
    assert not slide_weight(x, 0.5).requires_grad


# ---- Focal and base terms


def test_focal_factor_bce_by_hand():
    logits = torch.tensor([0.0, 2.0])
    targets = torch.tensor([1.0, 0.0])
    p1 = 1 / (1 + math.exp(-2.0))  # the second sample: p = sigmoid(2), t = 0 -> p_t = 1 - p
    expected = torch.tensor([0.25 * 0.5 ** 2, 0.75 * p1 ** 2])
    torch.testing.assert_close(focal_factor_bce(logits, targets, gamma=2.0, alpha=0.25), expected)


def test_focal_factor_gamma_zero_is_alpha_t():
    logits, t = torch.randn(5), torch.tensor([1.0, 0.0, 1.0, 0.0, 0.3])
    torch.testing.assert_close(focal_factor_bce(logits, t, 0.0, 0.25), t * 0.25 + (1 - t) * 0.75)


def test_focal_factor_ce_and_ce_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax [0.25, 0.75]
    target = torch.tensor([1])
    torch.testing.assert_close(focal_factor_ce(logits, target, gamma=2.0), torch.tensor([0.25 ** 2]))
    torch.testing.assert_close(ce_elementwise(logits, target), torch.tensor([-math.log(0.75)]))
    smoothed = 0.9 * -math.log(0.75) + 0.1 * 0.5 * (-math.log(0.25) - math.log(0.75))
    torch.testing.assert_close(ce_elementwise(logits, target, label_smoothing=0.1), torch.tensor([smoothed]))


def test_bce_elementwise_pos_weight_by_hand():
    out = bce_elementwise(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), pos_weight=2.0)
    torch.testing.assert_close(out, torch.tensor([2 * LN2, LN2]))


# ---- ComputeLoss on a hand-made example


def one_level_model(nc: int = 2, **hyp) -> DetectionModel:
    """A single-level model (stride 32, one 32x32 px anchor = 1x1 grid cell) with unit loss gains."""
    cfg = {"nc": nc, "anchors": [[32, 32]], "backbone": [[-1, 1, "Conv", [8, 32, 32, 0]]],
           "head": [[[0], 1, "Detect", ["nc", "anchors"]]]}
    model = DetectionModel(cfg)
    model.hyp = base_hyp(box=1.0, obj=1.0, cls=1.0, **hyp)
    return model


def hand_example(nc: int = 2) -> tuple[list[torch.Tensor], torch.Tensor, float]:
    """A 64x64 image (2x2 grid), one target of class 1 at (0.25, 0.25, 0.5, 0.5): the 1x1 box centred in cell (0, 0).

    All logits are 0 except x at that cell, set so sigmoid(x) * 2 - 0.5 = 0.25: the predicted 1x1 box is shifted by
    0.25 cells. By hand: IoU = 0.75 / 1.25 = 0.6, enclosing box 1.25 x 1, CIoU = 0.6 - 0.0625 / 2.5625.
    """
    p = torch.zeros(1, 1, 2, 2, 5 + nc)
    p[0, 0, 0, 0, 0] = math.log(0.375 / 0.625)  # sigmoid = 0.375
    targets = torch.tensor([[0.0, 1.0, 0.25, 0.25, 0.5, 0.5]])
    ciou = 0.6 - 0.0625 / 2.5625
    return [p], targets, ciou


def test_baseline_loss_by_hand():
    model = one_level_model()
    p, targets, ciou = hand_example()
    total, items = ComputeLoss(model)(p, targets)
    # box: 1 - CIoU; obj: logits 0 give BCE = ln 2 whatever the target, x balance 4.0; cls: BCE(0, [0, 1]) = ln 2
    torch.testing.assert_close(items, torch.tensor([1 - ciou, 4 * LN2, LN2]))
    torch.testing.assert_close(total, items.sum().view(1))  # batch size 1


def test_slide_loss_by_hand():
    model = one_level_model(slide_ratio=1.0)
    p, targets, ciou = hand_example()
    _, items = ComputeLoss(model)(p, targets)
    w = math.exp(1 - ciou)  # mu = ciou (one match), the positive sits at x = mu -> e^(1 - mu); negatives x = 0 -> 1
    torch.testing.assert_close(items, torch.tensor([1 - ciou, 4 * LN2 * (3 + w) / 4, LN2 * w]))


def test_focal_loss_by_hand():
    model = one_level_model(fl_gamma=2.0, fl_alpha=0.25)
    p, targets, ciou = hand_example()
    _, items = ComputeLoss(model)(p, targets)
    # p = 0.5 everywhere so (1 - p_t)^2 = 0.25; alpha_t = 0.75 for t = 0 and 0.25 t + 0.75 (1 - t) for soft t
    obj = LN2 * 0.25 * (3 * 0.75 + (0.25 * ciou + 0.75 * (1 - ciou))) / 4
    cls = LN2 * 0.25 * (0.75 + 0.25) / 2
    torch.testing.assert_close(items, torch.tensor([1 - ciou, 4 * obj, cls]))


def test_cross_entropy_loss_by_hand():
    model = one_level_model(cls_loss_type="ce")
    p, targets, ciou = hand_example()
    _, items = ComputeLoss(model)(p, targets)
    torch.testing.assert_close(items, torch.tensor([1 - ciou, 4 * LN2, LN2 / 2]))  # CE = ln 2, divided by nc = 2


def test_slide_focal_ce_together_by_hand():
    model = one_level_model(cls_loss_type="ce", fl_gamma=2.0, slide_ratio=0.5)
    p, targets, ciou = hand_example()
    _, items = ComputeLoss(model)(p, targets)
    w = 1 + 0.5 * (math.exp(1 - ciou) - 1)
    obj = LN2 * 0.25 * (3 * 0.75 + (0.25 * ciou + 0.75 * (1 - ciou)) * w) / 4
    cls = LN2 * 0.5 ** 2 * w / 2  # CE x (1 - p_t)^2 x slide, / nc
    torch.testing.assert_close(items, torch.tensor([1 - ciou, 4 * obj, cls]))


# ---- Parity with YOLOv5


def deterministic_inputs() -> tuple[list[torch.Tensor], torch.Tensor]:
    """Fixed raw outputs for a 128x96 input to a 3-class yolov5n (sin pattern) and five targets, one on the border."""
    shapes = [(2, 3, 16, 12, 8), (2, 3, 8, 6, 8), (2, 3, 4, 3, 8)]
    p, start = [], 0
    for s in shapes:
        n = math.prod(s)
        p.append((torch.sin(torch.arange(start, start + n, dtype=torch.float64) * 0.37) * 2).float().view(s))
        start += n
    t = torch.tensor([[0, 0, 0.30, 0.40, 0.20, 0.30], [0, 2, 0.71, 0.22, 0.05, 0.08], [1, 1, 0.50, 0.50, 0.60, 0.45],
                      [1, 2, 0.12, 0.88, 0.10, 0.30], [1, 0, 1.00, 0.66, 0.33, 0.10]])
    return p, t


@pytest.mark.parametrize("hyp_file, expected_total, expected_items", [
    # Golden values computed with upstream YOLOv5 v7.0 ComputeLoss (and its FocalLoss) on the same inputs.
    ("hyp.scratch-low.yaml", 12.886528968811035, [0.1405615657567978, 4.943144798278809, 1.35955810546875]),
    ("upstream focal", 5.865520000457764, [0.1405615657567978, 2.333667755126953, 0.4585306942462921]),
])
def test_options_off_equal_yolov5(hyp_file, expected_total, expected_items):
    model = DetectionModel("yolov5n.yaml", nc=3)
    # "upstream focal": YOLOv5's FocalLoss is scratch-low with fl_gamma 1.5 and the default mean reduction
    hyp = base_hyp(fl_gamma=1.5) if hyp_file == "upstream focal" else load_hyp(f"data/hyps/{hyp_file}")
    model.hyp = {**hyp, "label_smoothing": 0.05}
    p, t = deterministic_inputs()
    total, items = ComputeLoss(model)(p, t)
    assert total.item() == pytest.approx(expected_total, rel=1e-5)
    assert items.tolist() == pytest.approx(expected_items, rel=1e-5)


def test_slide_ratio_zero_and_gamma_zero_are_the_baseline():
    model = DetectionModel("yolov5n.yaml", nc=3)
    p, t = deterministic_inputs()
    model.hyp = base_hyp()
    reference = ComputeLoss(model)(p, t)[1]
    model.hyp = base_hyp(slide_ratio=0.0, fl_gamma=0.0, fl_alpha=0.9)  # alpha unused while gamma is 0
    assert torch.equal(ComputeLoss(model)(p, t)[1], reference)
    model.hyp = base_hyp(slide_ratio=1e-9)  # the blend is continuous at 0
    torch.testing.assert_close(ComputeLoss(model)(p, t)[1], reference)


# ---- Combinations and edge cases


@pytest.mark.parametrize("slide, gamma, kind", list(itertools.product([0.0, 1.0], [0.0, 1.5], ["bce", "ce"])))
def test_every_option_combination_trains(slide, gamma, kind):
    model = DetectionModel("yolov5n.yaml", nc=4)
    model.hyp = base_hyp(slide_ratio=slide, fl_gamma=gamma, cls_loss_type=kind)
    p = model(torch.rand(2, 3, 64, 64))
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.3], [1, 3, 0.3, 0.6, 0.2, 0.5], [1, 0, 0.8, 0.2, 0.1, 0.1]])
    total, items = ComputeLoss(model)(p, targets)
    total.backward()
    assert torch.isfinite(total).all() and torch.isfinite(items).all() and (items > 0).all()
    grads = [q.grad for q in model.parameters() if q.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.class_act == ("softmax" if kind == "ce" else "sigmoid")


def test_options_change_the_loss():
    model = DetectionModel("yolov5n.yaml", nc=3)
    p, t = deterministic_inputs()
    values = []
    for overrides in ({}, {"slide_ratio": 1.0}, {"fl_gamma": 1.5}, {"cls_loss_type": "ce"}):
        model.hyp = base_hyp(**overrides)
        values.append(ComputeLoss(model)(p, t)[1])
    assert all(not torch.equal(values[0], v) for v in values[1:])


def test_empty_targets():
    model = DetectionModel("yolov5n.yaml", nc=3)
    for kind in ("bce", "ce"):
        model.hyp = base_hyp(cls_loss_type=kind, slide_ratio=1.0, fl_gamma=1.5)
        p = model(torch.rand(2, 3, 64, 64))
        total, items = ComputeLoss(model)(p, torch.zeros(0, 6))
        total.backward()
        assert items[0] == 0 and items[2] == 0 and items[1] > 0 and torch.isfinite(total).all()


def test_ce_scale_is_within_factor_two_of_bce_at_init():
    for nc in (3, 80):
        model = DetectionModel("yolov5n.yaml", nc=nc)
        p = model(torch.rand(2, 3, 128, 128))
        targets = torch.tensor([[0, 0, 0.5, 0.5, 0.4, 0.3], [1, nc - 1, 0.3, 0.6, 0.2, 0.5]])
        model.hyp = base_hyp()
        bce = ComputeLoss(model)(p, targets)[1][2]
        model.hyp = base_hyp(cls_loss_type="ce")
        ce = ComputeLoss(model)(p, targets)[1][2]
        assert 0.5 < (ce / bce).item() < 2.0, (nc, ce, bce)


def test_ce_with_one_class_is_a_startup_error():
    model = DetectionModel("yolov5n.yaml", nc=1)
    model.hyp = base_hyp(cls_loss_type="ce")
    with pytest.raises(ConfigError, match="at least 2 classes"):
        ComputeLoss(model)


def test_single_class_bce_has_no_class_term():
    model = DetectionModel("yolov5n.yaml", nc=1)
    model.hyp = base_hyp()
    p = model(torch.rand(1, 3, 64, 64))
    _, items = ComputeLoss(model)(p, torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.3]]))
    assert items[2] == 0 and items[0] > 0


def test_describe_loss_names_the_options():
    assert describe_loss(base_hyp()) == "box loss: CIoU | obj loss: bce | cls loss: bce (sigmoid, multi-label)"
    line = describe_loss(base_hyp(cls_loss_type="ce", fl_gamma=1.5, slide_ratio=1.0))
    assert "cls loss: ce (softmax, mutually exclusive) + focal(gamma=1.5) + slide(ratio=1)" in line
    assert "obj loss: bce + focal(gamma=1.5, alpha=0.25) + slide(ratio=1)" in line


# ---- Phase 2 keys: loss_norm, class weights, slide_mu ema, heatmap objectness, box L1

NEW_KEYS_OFF = {"loss_norm": "mean", "cls_weights": "none", "slide_mu": "batch", "obj_loss_type": "bce", "box_l1": 0.0,
                "heatmap_peak": "centre", "heatmap_target": "iou"}  # both act only with obj_loss_type gaussian_focal


def test_new_keys_off_are_bit_identical_to_the_baseline():
    model = DetectionModel("yolov5n.yaml", nc=3)
    p, t = deterministic_inputs()
    for extra in ({}, {"slide_ratio": 1.0}, {"fl_gamma": 1.5}, {"cls_loss_type": "ce"}):
        model.hyp = base_hyp(**extra)
        reference = ComputeLoss(model)(p, t)
        model.hyp = base_hyp(**extra, **NEW_KEYS_OFF)
        total, items = ComputeLoss(model)(p, t)
        assert torch.equal(total, reference[0]) and torch.equal(items, reference[1])


def test_weighted_norm_without_weights_is_the_mean():
    model = DetectionModel("yolov5n.yaml", nc=3)
    p, t = deterministic_inputs()
    model.hyp = base_hyp()
    reference = ComputeLoss(model)(p, t)[1]
    model.hyp = base_hyp(loss_norm="weighted")  # nothing reweights: sum(l) / n = mean
    torch.testing.assert_close(ComputeLoss(model)(p, t)[1], reference)


def test_loss_norm_by_hand():
    p, targets, ciou = hand_example()
    # focal gamma 2 at p = 0.5: factor 0.25 * alpha_t; four obj cells, one of them the positive (soft target ciou)
    f_neg, f_pos = 0.25 * 0.75, 0.25 * (0.25 * ciou + 0.75 * (1 - ciou))
    for norm, obj_div, cls_div in (("pos", 1.0, 1.0), ("weighted", 3 * f_neg + f_pos, 0.25 * (0.75 + 0.25))):
        model = one_level_model(fl_gamma=2.0, fl_alpha=0.25, loss_norm=norm)
        _, items = ComputeLoss(model)(p, targets)
        obj = LN2 * (3 * f_neg + f_pos) / obj_div  # sum of focal x BCE, each BCE = ln 2 at logit 0
        cls = LN2 * 0.25 * (0.75 + 0.25) / cls_div  # two class columns of the one positive
        torch.testing.assert_close(items, torch.tensor([1 - ciou, 4 * obj, cls]))


def test_pos_norm_divides_every_level_by_the_positives_of_all_levels(monkeypatch):
    """RetinaNet's rule: a level with no positives of its own is divided by the batch's positives, not by 1."""
    model = DetectionModel("yolov5n.yaml", nc=3)
    model.hyp = base_hyp(loss_norm="pos", fl_gamma=1.5)
    loss = ComputeLoss(model)
    empty = (torch.zeros(0, dtype=torch.long),) * 4
    logits, tobj = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)  # 12 negatives at p = 0.5
    alone = loss.obj_loss(logits, tobj, torch.tensor(0.5), empty, torch.zeros(0, 4))
    shared = loss.obj_loss(logits, tobj, torch.tensor(0.5), empty, torch.zeros(0, 4), n_pos=4)
    per_cell = LN2 * 0.75 * 0.5 ** 1.5  # BCE ln 2 x alpha_t (1 - alpha for negatives) x (1 - p_t)^gamma
    torch.testing.assert_close(alone, torch.tensor(12 * per_cell))
    torch.testing.assert_close(shared, torch.tensor(12 * per_cell / 4))

    p, t = deterministic_inputs()
    total = sum(len(ix[0]) for ix in loss.build_targets(p, t)[2])
    seen = []
    original = loss.obj_loss
    monkeypatch.setattr(loss, "obj_loss", lambda *a: seen.append(a[-1]) or original(*a))
    loss(p, t)
    assert seen == [total] * 3 and total > 0


def test_class_weights_ce_weighted_equals_torch_weighted_cross_entropy():
    model = DetectionModel("yolov5n.yaml", nc=3)
    model.hyp = base_hyp(cls_loss_type="ce", cls_weights="inverse", cls_weights_values=[0.5, 1.0, 1.5],
                         loss_norm="weighted")
    loss = ComputeLoss(model)
    logits, tcls = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 0, 1])
    expected = torch.nn.functional.cross_entropy(logits, tcls, weight=torch.tensor([0.5, 1.0, 1.5])) / 3
    torch.testing.assert_close(loss.class_loss(logits, tcls, torch.zeros(6), torch.tensor(0.5)), expected)


def test_class_weights_scale_each_positive_by_its_class():
    model = one_level_model(cls_weights="inverse", cls_weights_values=[0.5, 3.0])
    p, targets, ciou = hand_example()  # the one target is class 1
    _, items = ComputeLoss(model)(p, targets)
    torch.testing.assert_close(items, torch.tensor([1 - ciou, 4 * LN2, 3.0 * LN2]))


def test_class_weights_need_values_of_the_right_length():
    model = DetectionModel("yolov5n.yaml", nc=3)
    model.hyp = base_hyp(cls_weights="effective")
    with pytest.raises(ConfigError, match="cls_weights_values"):
        ComputeLoss(model)
    model.hyp = base_hyp(cls_weights="effective", cls_weights_values=[1.0, 2.0])
    with pytest.raises(ConfigError, match=r"model.hyp: .cls_weights_values. has 2 values, .* this run has 3 classes"):
        ComputeLoss(model)


def test_slide_mu_ema_follows_training_batches_only():
    model = DetectionModel("yolov5n.yaml", nc=3)
    model.hyp = base_hyp(slide_ratio=1.0, slide_mu="ema")
    loss = ComputeLoss(model)
    p, t = deterministic_inputs()
    loss(p, t)  # predictions without grad (validation): the average stays untouched
    assert loss.state_dict()["slide_mu"]["updates"] == 0
    loss([x.clone().requires_grad_(True) for x in p], t)
    state = loss.state_dict()["slide_mu"]
    assert state["updates"] == 1 and all(0.0 < mu < 1.0 and mu != 0.5 for mu in state["mu"])
    fresh = ComputeLoss(model)
    fresh.load_state_dict(loss.state_dict())
    assert fresh.state_dict() == loss.state_dict()


def test_slide_mu_ema_equals_batch_mu_on_the_first_batch():
    model = DetectionModel("yolov5n.yaml", nc=3)
    p, t = deterministic_inputs()
    leaves = [x.clone().requires_grad_(True) for x in p]
    model.hyp = base_hyp(slide_ratio=1.0)
    batch = ComputeLoss(model)(leaves, t)[1]
    model.hyp = base_hyp(slide_ratio=1.0, slide_mu="ema")
    ema = ComputeLoss(model)(leaves, t)[1]  # d = 0.999 (1 - e^(-1/2000)) ~ 5e-4: mu is almost the batch's
    torch.testing.assert_close(ema, batch, rtol=2e-3, atol=1e-6)


def test_box_l1_by_hand():
    pxy, txy = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.25, 0.75]])
    anchors = torch.tensor([[2.0, 1.0]])
    pwh, twh = torch.tensor([[2.0, 2.0]]), torch.tensor([[4.0, 1.0]])
    expected = 0.25 + 0.25 + abs(math.log(1.0) - math.log(2.0)) + abs(math.log(2.0) - math.log(1.0))
    assert box_l1_loss(pxy, pwh, txy, twh, anchors).item() == pytest.approx(expected)
    assert box_l1_loss(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0, 2),
                       torch.zeros(0, 2)).item() == 0.0


def test_box_l1_adds_to_the_box_item():
    p, targets, ciou = hand_example()
    model = one_level_model(box_l1=2.0)
    _, items = ComputeLoss(model)(p, targets)
    # predicted offset (0.25, 0.5) against (0.5, 0.5), size 1x1 against 1x1 (sigmoid(0) * 2)^2 * anchor 1
    torch.testing.assert_close(items[0], torch.tensor(1 - ciou + 2.0 * 0.25))


def test_gaussian_focal_objectness_targets_and_value():
    model = one_level_model(obj_loss_type="gaussian_focal")
    p, targets, ciou = hand_example()
    loss = ComputeLoss(model)
    _, tbox, indices, _ = loss.build_targets(p, targets)
    heat = loss.heatmap_targets(p[0].shape[:4], indices[0], tbox[0])
    assert heat[0, 0, 0, 0] == 1.0 and (heat[0, 0].flatten()[1:] < 1.0).all()
    _, items = loss(p, targets)
    # logits 0: p = 0.5; positive (1 - p)^2 log p, negatives (1 - y)^4 p^2 log(1 - p); one positive cell
    neg = sum((1 - float(y)) ** 4 * 0.25 * LN2 for y in heat[0, 0].flatten()[1:])
    assert items[1].item() == pytest.approx(4 * (0.25 * LN2 + neg), rel=1e-4)


def test_heatmap_peak_centre_keeps_one_at_the_centre_cell_only():
    model = one_level_model(obj_loss_type="gaussian_focal", heatmap_peak="centre")
    p = [torch.zeros(1, 1, 4, 4, 7)]
    targets = torch.tensor([[0.0, 1.0, 0.3, 0.3, 0.25, 0.25]])  # centre (1.2, 1.2) cells: in cell (1, 1), left half
    loss = ComputeLoss(model)
    _, tbox, indices, _ = loss.build_targets(p, targets)
    _, _, gj, gi = indices[0]
    assigned = loss.heatmap_targets(p[0].shape[:4], indices[0], tbox[0])
    centre = loss.heatmap_targets(p[0].shape[:4], indices[0], tbox[0], centre_only=True)
    assert len(gj) == 3 and int((assigned == 1).sum()) == 3  # YOLOv5's centre cell and its two nearest neighbours
    assert int((centre == 1).sum()) == 1 and centre[0, 0, 1, 1] == 1.0
    assert torch.equal(centre[assigned != 1], assigned[assigned != 1])
    _, items = loss(p, targets)
    # all logits 0 (p = 0.5): one positive, every other cell a negative at its Gaussian value
    neg = sum((1 - float(y)) ** 4 * 0.25 * LN2 for y in centre.flatten() if y != 1.0)
    assert items[1].item() == pytest.approx(4 * (0.25 * LN2 + neg), rel=1e-4)
    assert "gaussian heatmap focal (CenterNet, peaks at centres)" in describe_loss(model.hyp)


def test_heatmap_target_iou_scores_each_positive_against_its_ciou():
    model = one_level_model(obj_loss_type="gaussian_focal", heatmap_target="iou")
    p, targets, ciou = hand_example()
    loss = ComputeLoss(model)
    _, tbox, indices, _ = loss.build_targets(p, targets)
    heat = loss.heatmap_targets(p[0].shape[:4], indices[0], tbox[0])
    _, items = loss(p, targets)
    # the one positive: objectness logit 0 (p = 0.5), q = its CIoU; QFL -|q - p|^2 (q log p + (1 - q) log(1 - p))
    # = (q - 0.5)^2 ln 2; the negatives as CornerNet's
    pos = (ciou - 0.5) ** 2 * LN2
    neg = sum((1 - float(y)) ** 4 * 0.25 * LN2 for y in heat[0, 0].flatten()[1:])
    assert items[1].item() == pytest.approx(4 * (pos + neg), rel=1e-4)
    assert "IoU-valued peaks" in describe_loss(model.hyp)


def test_heatmap_alpha_and_beta_are_cornernets_exponents():
    model = one_level_model(obj_loss_type="gaussian_focal", heatmap_alpha=1.0, heatmap_beta=2.0)
    p, targets, _ = hand_example()
    loss = ComputeLoss(model)
    _, tbox, indices, _ = loss.build_targets(p, targets)
    heat = loss.heatmap_targets(p[0].shape[:4], indices[0], tbox[0])
    _, items = loss(p, targets)
    # logits 0 (p = 0.5): positive (1 - p)^1 log p, negatives (1 - y)^2 p^1 log(1 - p); one positive cell
    neg = sum((1 - float(y)) ** 2 * 0.5 * LN2 for y in heat[0, 0].flatten()[1:])
    assert items[1].item() == pytest.approx(4 * (0.5 * LN2 + neg), rel=1e-4)
    assert "alpha=1, beta=2" in describe_loss(model.hyp)
    assert "alpha=" not in describe_loss(one_level_model(obj_loss_type="gaussian_focal").hyp)


@pytest.mark.parametrize("norm, weights, mu, obj, slide, gamma, kind", list(itertools.product(
    ["mean", "pos", "weighted"], ["none", "effective"], ["batch", "ema"], ["bce", "gaussian_focal", "centre", "iou"],
    [0.0, 1.0], [0.0, 1.5], ["bce", "ce"])))
def test_every_new_key_combination_gives_finite_loss_and_gradients(norm, weights, mu, obj, slide, gamma, kind):
    model = DetectionModel("yolov5n.yaml", nc=3)
    model.hyp = base_hyp(loss_norm=norm, cls_weights=weights, cls_weights_values=[0.6, 0.9, 1.5], slide_mu=mu,
                         obj_loss_type="bce" if obj == "bce" else "gaussian_focal", slide_ratio=slide, fl_gamma=gamma,
                         heatmap_peak="centre" if obj == "centre" else "assigned",
                         heatmap_target="iou" if obj == "iou" else "one", cls_loss_type=kind, box_l1=0.01)
    p, t = deterministic_inputs()
    leaves = [x.clone().requires_grad_(True) for x in p]
    total, items = ComputeLoss(model)(leaves, t)
    grads = torch.autograd.grad(total.sum(), leaves)
    assert torch.isfinite(total).all() and torch.isfinite(items).all() and (items > 0).all()
    assert all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_describe_loss_names_the_new_options():
    line = describe_loss(base_hyp(slide_ratio=1.0, slide_mu="ema", obj_loss_type="gaussian_focal", box_l1=0.01,
                                  cls_weights="effective", loss_norm="weighted", fl_gamma=1.5))
    assert "box loss: CIoU + L1(gain=0.01)" in line and "obj loss: gaussian heatmap focal (CenterNet)" in line
    assert "slide(ratio=1, mu=ema)" in line and "class weights(effective)" in line and "reduction: weighted" in line
    assert "obj loss: gaussian heatmap focal (CenterNet) + slide" in line  # fl_gamma leaves the heatmap loss alone


def test_quality_focal_loss_by_hand():
    model = one_level_model(fl_gamma=2.0, fl_type="quality")
    p, targets, ciou = hand_example()
    _, items = ComputeLoss(model)(p, targets)
    # p = 0.5 everywhere: |t - p|^2 = 0.25 for the three background cells and both class columns (t = 0 or 1),
    # (ciou - 0.5)^2 for the positive's objectness (soft target ciou); each BCE = ln 2
    obj = LN2 * (3 * 0.25 + (ciou - 0.5) ** 2) / 4
    torch.testing.assert_close(items, torch.tensor([1 - ciou, 4 * obj, LN2 * 0.25]))


@pytest.mark.parametrize("norm, kind, slide", list(itertools.product(["mean", "pos", "weighted"], ["bce", "ce"],
                                                                      [0.0, 1.0])))
def test_quality_focal_composes_with_every_norm(norm, kind, slide):
    model = DetectionModel("yolov5n.yaml", nc=3)
    model.hyp = base_hyp(fl_gamma=2.0, fl_type="quality", loss_norm=norm, cls_loss_type=kind, slide_ratio=slide)
    p, t = deterministic_inputs()
    leaves = [x.clone().requires_grad_(True) for x in p]
    total, items = ComputeLoss(model)(leaves, t)
    grads = torch.autograd.grad(total.sum(), leaves)
    assert torch.isfinite(total).all() and (items > 0).all() and all(torch.isfinite(g).all() for g in grads)
    assert "quality focal(gamma=2)" in describe_loss(model.hyp)
