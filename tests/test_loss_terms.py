"""The loss reductions, class-balanced weights and the Slide moving average, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from utils.loss_terms import SlideMuEMA, class_balance_weights, reduce_loss


def test_reduce_loss_mean_pos_weighted_by_hand():
    base = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([0.5, 0.5, 1.0, 2.0])
    lw = base * w  # 0.5 + 1 + 3 + 8 = 12.5
    assert reduce_loss(lw, w, "mean", n_pos=2).item() == pytest.approx(12.5 / 4)
    assert reduce_loss(lw, w, "pos", n_pos=2).item() == pytest.approx(12.5 / 2)
    assert reduce_loss(lw, w, "weighted", n_pos=2).item() == pytest.approx(12.5 / 4.0)  # sum w = 4
    assert reduce_loss(lw, w * 2, "weighted", n_pos=2).item() == pytest.approx(12.5 / 8.0)
    assert reduce_loss(base, None, "weighted", n_pos=2).item() == pytest.approx(2.5)  # no weights: the mean
    assert reduce_loss(base, None, "pos", n_pos=0).item() == pytest.approx(10.0)  # no positives: the sum


def test_weighted_reduction_broadcasts_row_weights_and_detaches_them():
    base = torch.ones(2, 3)
    w = torch.tensor([[1.0], [3.0]], requires_grad=True)
    out = reduce_loss(base * w, w, "weighted", n_pos=2)  # (3 * 1 + 3 * 3) / (3 + 9) = 1
    assert out.item() == pytest.approx(1.0)
    out.backward()
    torch.testing.assert_close(w.grad, torch.tensor([[3 / 12], [3 / 12]]))  # only through the numerator


def test_class_balance_weights_three_class_toy_count():
    counts = [100, 10, 1]
    inv = class_balance_weights(counts, "inverse")
    raw = [0.01, 0.1, 1.0]
    assert inv == pytest.approx([x / (sum(raw) / 3) for x in raw])
    eff = class_balance_weights(counts, "effective", beta=0.9)
    raw = [(1 - 0.9) / (1 - 0.9 ** n) for n in counts]  # 0.1000027, 0.1535, 1.0
    assert eff == pytest.approx([x / (sum(raw) / 3) for x in raw])
    assert sum(eff) / 3 == pytest.approx(1.0) and eff[2] > eff[1] > eff[0]
    assert class_balance_weights(counts, "none") == [1.0, 1.0, 1.0]


def test_class_balance_weights_limits_and_empty_classes():
    counts = [500, 50, 5]
    near_zero = class_balance_weights(counts, "effective", beta=1e-6)
    assert near_zero == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)  # beta -> 0: equal weights
    near_one = class_balance_weights(counts, "effective", beta=1 - 1e-9)
    assert near_one == pytest.approx(class_balance_weights(counts, "inverse"), rel=1e-3)  # beta -> 1: inverse
    with_empty = class_balance_weights([10, 0, 3], "inverse")
    assert all(math.isfinite(x) and x > 0 for x in with_empty) and with_empty[1] == max(with_empty)
    with pytest.raises(ValueError, match="unknown class weight rule"):
        class_balance_weights(counts, "sqrt")


def test_slide_mu_ema_update_by_hand():
    ema = SlideMuEMA(nl=2)
    assert ema.value(0, torch.device("cpu")).item() == pytest.approx(0.5)  # nothing seen yet
    d1 = ema.step()
    assert d1 == pytest.approx(0.999 * (1 - math.exp(-1 / 2000)))
    ema.update(0, torch.tensor([0.6, 0.8]), d1)
    ema.update(1, torch.zeros(0), d1)  # no match on level 1: unchanged
    assert ema.mu[0] == pytest.approx(d1 * 0.5 + (1 - d1) * 0.7) and ema.mu[1] == 0.5
    d2 = ema.step()
    ema.update(0, torch.tensor([0.1]), d2)
    assert ema.mu[0] == pytest.approx(d2 * (d1 * 0.5 + (1 - d1) * 0.7) + (1 - d2) * 0.1)
    ema.mu[1] = 0.05
    assert ema.value(1, torch.device("cpu")).item() == pytest.approx(0.2)  # floored when used


def test_slide_mu_ema_state_round_trip_and_level_check():
    ema = SlideMuEMA(nl=3)
    for _ in range(5):
        d = ema.step()
        ema.update(0, torch.tensor([0.9]), d)
    other = SlideMuEMA(nl=3)
    other.load_state_dict(ema.state_dict())
    assert other.state_dict() == ema.state_dict() and other.updates == 5
    with pytest.raises(ValueError, match="3 levels, the model has 4"):
        SlideMuEMA(nl=4).load_state_dict(ema.state_dict())


def test_quality_focal_factor_by_hand_and_its_zero_at_the_target():
    from utils.loss_terms import focal_factor_quality

    logits = torch.tensor([0.0, 0.0, math.log(0.6 / 0.4)])  # p = 0.5, 0.5, 0.6
    targets = torch.tensor([1.0, 0.2, 0.6])
    expected = torch.tensor([0.5 ** 2, 0.3 ** 2, 0.0])
    torch.testing.assert_close(focal_factor_quality(logits, targets, 2.0), expected, atol=1e-7, rtol=1e-6)


def test_quality_focal_bce_is_minimal_at_the_soft_target_where_retinanet_focal_is_not():
    from utils.loss_terms import bce_elementwise, focal_factor_bce, focal_factor_quality

    t = torch.full((999,), 0.6)
    p = torch.linspace(0.001, 0.999, 999)
    logits = torch.log(p / (1 - p))
    quality = bce_elementwise(logits, t) * focal_factor_quality(logits, t, 2.0)
    retina = bce_elementwise(logits, t) * focal_factor_bce(logits, t, 2.0, 0.25)
    assert abs(p[quality.argmin()].item() - 0.6) < 0.002  # QFL keeps the IoU target as the optimum
    assert abs(p[retina.argmin()].item() - 0.6) > 0.05  # RetinaNet's factor moves it away from a soft target
