"""Gaussian heatmap objectness: focal loss by hand and by formula, CenterNet radius, heatmap drawing."""

from __future__ import annotations

import math

import pytest
import torch

from utils.heatmap import (
    draw_heatmap,
    gaussian_focal_elementwise,
    gaussian_focal_loss,
    gaussian_radius,
    gaussian_sigma,
)


def sigmoid(x: float) -> float:
    """Plain-float logistic function for hand-computed expectations."""
    return 1.0 / (1.0 + math.exp(-x))


def transcribed_loss(logits: torch.Tensor, y: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CornerNet Eq. 1 written out literally: -(sum pos + sum neg) / N, the sum alone when N == 0."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = ((1 - p) ** alpha * torch.log(p))[y == 1].sum()
    neg = ((1 - y) ** beta * p**alpha * torch.log(1 - p))[y != 1].sum()
    n = int((y == 1).sum())
    return -(pos + neg) / n if n > 0 else -neg


def random_case(with_positives: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits wide enough to reach the 1e-4 clamp, and a heatmap in [0, 1) plus optional exact 1.0 positives."""
    logits = torch.randn(2, 3, 8, 8) * 5
    heatmap = torch.rand(2, 3, 8, 8) * 0.999
    if with_positives:
        heatmap[torch.rand(2, 3, 8, 8) > 0.9] = 1.0
    return logits, heatmap


# ---- focal loss


def test_quality_targets_take_quality_focal_loss_at_the_positives():
    logits = torch.zeros(1, 3)  # p = 0.5 everywhere
    heatmap = torch.tensor([[1.0, 1.0, 0.5]])
    quality = torch.tensor([[0.6, 1.0, 0.0]])
    loss = gaussian_focal_elementwise(logits, heatmap, quality=quality)
    # QFL: -|q - p|^2 (q log p + (1 - q) log(1 - p)) = |q - 0.5|^2 ln 2 at p = 0.5; a negative ignores q
    assert loss[0, 0].item() == pytest.approx(0.01 * math.log(2), rel=1e-5)
    one = gaussian_focal_elementwise(logits, heatmap)
    assert loss[0, 1].item() == pytest.approx(one[0, 1].item())  # q = 1 is CornerNet's positive term
    assert loss[0, 2].item() == pytest.approx(one[0, 2].item())


def test_focal_loss_by_hand_on_a_3x3_heatmap():
    logits = [[-1.0, 0.0, -2.0], [0.5, 2.0, -3.0], [1.0, -0.5, 0.0]]
    heat = [[0.0, 0.5, 0.0], [0.8, 1.0, 0.3], [0.0, 0.6, 0.1]]
    p = [[sigmoid(v) for v in row] for row in logits]
    expected = -(1 - p[1][1]) ** 2 * math.log(p[1][1])  # the one positive, at the centre
    for r in range(3):
        for c in range(3):
            if (r, c) != (1, 1):
                expected -= (1 - heat[r][c]) ** 4 * p[r][c] ** 2 * math.log(1 - p[r][c])
    loss = gaussian_focal_loss(torch.tensor([[logits]]), torch.tensor([[heat]]))
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # N = 1


def test_focal_loss_matches_the_transcribed_formula_with_positives():
    logits, heatmap = random_case(with_positives=True)
    assert int((heatmap == 1).sum()) > 1
    torch.testing.assert_close(gaussian_focal_loss(logits, heatmap), transcribed_loss(logits, heatmap),
                               rtol=1e-6, atol=0.0)


def test_focal_loss_without_positives_is_the_negative_sum():
    logits, heatmap = random_case(with_positives=False)
    assert not (heatmap == 1).any()
    loss = gaussian_focal_loss(logits, heatmap, alpha=1.5, beta=3.0)
    torch.testing.assert_close(loss, transcribed_loss(logits, heatmap, 1.5, 3.0), rtol=1e-6, atol=0.0)
    assert loss > 0


def test_elementwise_sum_over_positives_is_the_loss():
    logits, heatmap = random_case(with_positives=True)
    elem = gaussian_focal_elementwise(logits, heatmap)
    assert elem.shape == logits.shape and (elem >= 0).all()
    n_pos = int((heatmap == 1).sum())
    torch.testing.assert_close(elem.sum() / n_pos, gaussian_focal_loss(logits, heatmap))
    torch.testing.assert_close(elem.sum(), gaussian_focal_loss(logits, heatmap, reduction="sum"))


def test_gradient_is_finite_for_extreme_logits():
    logits = torch.tensor([50.0, -50.0, 50.0, -50.0, 0.0, 0.0], requires_grad=True)
    heatmap = torch.tensor([1.0, 1.0, 0.0, 0.5, 1.0, 0.0])
    loss = gaussian_focal_loss(logits, heatmap)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[4] < 0 < logits.grad[5]  # in range: raise a positive's logit, lower a negative's


def test_focal_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="reduction"):
        gaussian_focal_loss(torch.zeros(3), torch.zeros(3), reduction="mean")
    with pytest.raises(ValueError, match="shape"):
        gaussian_focal_loss(torch.zeros(3), torch.zeros(4))


# ---- radius and sigma


def test_radius_of_one_box_is_the_smallest_quadratic_root():
    h, w, o = 4.0, 6.0, 0.7

    def roots(a: float, b: float, c: float) -> tuple[float, float]:
        d = math.sqrt(b * b - 4 * a * c)
        return (-b - d) / (2 * a), (-b + d) / (2 * a)

    r1 = roots(1, -(h + w), h * w * (1 - o) / (1 + o))[0]  # box shifted by (r, r)
    r2 = roots(4, -2 * (h + w), (1 - o) * h * w)[0]  # box shrunk by r per side
    r3 = roots(4 * o, 2 * o * (h + w), -(1 - o) * h * w)[1]  # box grown by r per side
    # each root is exactly where its case's IoU falls to min_overlap
    assert (h - r1) * (w - r1) / (2 * h * w - (h - r1) * (w - r1)) == pytest.approx(o)
    assert (h - 2 * r2) * (w - 2 * r2) / (h * w) == pytest.approx(o)
    assert h * w / ((h + 2 * r3) * (w + 2 * r3)) == pytest.approx(o)
    radius = gaussian_radius(torch.tensor(h), torch.tensor(w), o)
    assert radius.item() == pytest.approx(min(r1, r2, r3), rel=1e-6)
    assert radius.item() == pytest.approx(0.390, abs=1e-3)


def test_radius_grows_with_box_size_and_is_never_negative():
    side = torch.linspace(0.5, 64.0, 50)
    radius = gaussian_radius(side, side * 1.5)
    assert (radius.diff() > 0).all()
    torch.testing.assert_close(gaussian_radius(2 * side, 3 * side), 2 * radius)  # linear in scale
    assert (gaussian_radius(side, side, min_overlap=0.5) > gaussian_radius(side, side, min_overlap=0.9)).all()
    tiny = gaussian_radius(torch.tensor([0.0, 1e-6, 1e-3, 0.0]), torch.tensor([0.0, 1e-6, 1e-3, 5.0]))
    assert (tiny >= 0).all() and tiny[0] == 0 and tiny[3] == 0


def test_sigma_is_odd_diameter_over_six():
    sigma = gaussian_sigma(torch.tensor([0.1, 4.0, 12.0]), torch.tensor([0.1, 6.0, 16.0]))
    # radii 0.0..., 0.39, 1.12 -> diameters 1, 1, 3
    torch.testing.assert_close(sigma, torch.tensor([1 / 6, 1 / 6, 0.5]))


# ---- drawing


def draw_one(shape=(2, 3, 10, 10), b=0, a=0, cx=5.3, cy=4.6, w=16.0, h=12.0, cells=((4, 5),)) -> torch.Tensor:
    """One object, with each assigned cell (row, column) passed as a separate match, as YOLO's neighbours are."""
    m = len(cells)
    return draw_heatmap(shape, torch.full((m,), b), torch.full((m,), a), torch.tensor([[cx, cy]] * m),
                        torch.tensor([[w, h]] * m), torch.tensor([r for r, _ in cells]),
                        torch.tensor([c for _, c in cells]))


def test_draw_heatmap_of_one_object_with_two_neighbour_cells():
    cells = ((4, 5), (4, 4), (5, 5))  # centre cell, left neighbour, lower neighbour
    heatmap = draw_one(cells=cells)
    assert heatmap.shape == (2, 3, 10, 10) and heatmap.dtype == torch.float32
    level = heatmap[0, 0]
    for r, c in cells:
        assert level[r, c] == 1.0
    assert int((heatmap == 1.0).sum()) == 3
    # sigma 0.5 for a 16 x 12 box; cell (row 3, column 6) has its centre at (6.5, 3.5)
    expected = math.exp(-((6.5 - 5.3) ** 2 + (3.5 - 4.6) ** 2) / (2 * 0.5**2))
    assert level[3, 6].item() == pytest.approx(expected, rel=1e-5)  # float32 grid arithmetic
    window = level[2:7, 3:8].clone()
    window[[2, 2, 3], [2, 1, 2]] = 0.5  # mask out the three positives inside the 5 x 5 window
    assert ((window > 0) & (window < 1)).all()
    assert ((heatmap >= 0) & (heatmap <= 1)).all()


def test_peak_keeps_only_the_selected_matches_at_one():
    cells = ((4, 5), (4, 4), (5, 5))  # centre cell, left neighbour, lower neighbour
    every = draw_one(cells=cells)
    m = len(cells)
    centre_only = draw_heatmap((2, 3, 10, 10), torch.zeros(m, dtype=torch.long), torch.zeros(m, dtype=torch.long),
                               torch.tensor([[5.3, 4.6]] * m), torch.tensor([[16.0, 12.0]] * m),
                               torch.tensor([4, 4, 5]), torch.tensor([5, 4, 5]),
                               peak=torch.tensor([True, False, False]))
    assert int((centre_only == 1.0).sum()) == 1 and centre_only[0, 0, 4, 5] == 1.0
    # the neighbours keep the Gaussian: sigma 0.5, cell (4, 4) has its centre at (4.5, 4.5)
    expected = math.exp(-((4.5 - 5.3) ** 2 + (4.5 - 4.6) ** 2) / (2 * 0.5**2))
    assert centre_only[0, 0, 4, 4].item() == pytest.approx(expected, rel=1e-5)
    away = (every != 1.0)
    torch.testing.assert_close(centre_only[away], every[away], rtol=0.0, atol=0.0)  # nothing else moves


def test_overlapping_objects_keep_the_elementwise_maximum():
    first = draw_one(cx=4.5, cy=4.5, cells=((4, 4),))
    second = draw_one(cx=6.2, cy=5.1, w=20.0, h=20.0, cells=((5, 6),))
    m = torch.tensor([0, 0])
    both = draw_heatmap((2, 3, 10, 10), m, m, torch.tensor([[4.5, 4.5], [6.2, 5.1]]),
                        torch.tensor([[16.0, 12.0], [20.0, 20.0]]), torch.tensor([4, 5]), torch.tensor([4, 6]))
    assert not torch.equal(first, second)
    torch.testing.assert_close(both, torch.maximum(first, second), rtol=0.0, atol=0.0)


def test_images_and_anchors_do_not_leak_into_each_other():
    heatmap = draw_one(b=1, a=2)
    assert heatmap[1, 2].max() == 1.0
    assert heatmap[0].abs().sum() == 0 and heatmap[1, :2].abs().sum() == 0


def test_zero_matches_give_zeros_and_targets_are_detached():
    empty = torch.zeros(0, dtype=torch.long)
    heatmap = draw_heatmap((2, 3, 4, 5), empty, empty, torch.zeros(0, 2), torch.zeros(0, 2), empty, empty)
    assert heatmap.shape == (2, 3, 4, 5) and not heatmap.any()
    centre = torch.tensor([[1.5, 1.5]], requires_grad=True)
    one = torch.tensor([0])
    drawn = draw_heatmap((1, 1, 4, 4), one, one, centre, torch.tensor([[3.0, 3.0]]), torch.tensor([1]),
                         torch.tensor([1]))
    assert not drawn.requires_grad and drawn[0, 0, 1, 1] == 1.0


def full_grid_heatmap(shape, b, a, centre, wh, gj, gi) -> torch.Tensor:
    """The drawing rule transcribed without a window: every match evaluated on every cell, maximum kept."""
    bs, na, ny, nx = shape
    out = torch.zeros(bs * na, ny * nx)
    sigma = gaussian_sigma(wh[:, 1], wh[:, 0])
    xs, ys = torch.arange(nx) + 0.5, torch.arange(ny) + 0.5
    d2 = (ys[None, :, None] - centre[:, 1, None, None]) ** 2 + (xs[None, None, :] - centre[:, 0, None, None]) ** 2
    gauss = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))
    for k in range(len(b)):
        row = b[k] * na + a[k]
        out[row] = torch.maximum(out[row], gauss[k].reshape(-1))
    out = out.view(bs * na, ny, nx)
    out[b * na + a, gj, gi] = 1.0
    return out.view(bs, na, ny, nx)


@pytest.mark.parametrize("ny, nx, m", [(40, 40, 300), (10, 20, 50), (5, 5, 20), (80, 60, 200)])
def test_the_window_changes_no_value(ny, nx, m):
    torch.manual_seed(ny + nx)
    b, a = torch.randint(0, 4, (m,)), torch.randint(0, 3, (m,))
    centre = torch.rand(m, 2) * torch.tensor([nx, ny])  # near the edges too
    wh = torch.rand(m, 2) ** 3 * torch.tensor([nx, ny]) + 0.05  # mostly small, some as large as the grid
    gi, gj = centre[:, 0].long().clamp(0, nx - 1), centre[:, 1].long().clamp(0, ny - 1)
    drawn = draw_heatmap((4, 3, ny, nx), b, a, centre, wh, gj, gi)
    assert torch.equal(drawn, full_grid_heatmap((4, 3, ny, nx), b, a, centre, wh, gj, gi))
