"""Gaussian heatmap objectness: penalty-reduced pixel-wise focal loss with Gaussian heatmap targets.

The loss is Law & Deng 2018, "CornerNet" (arXiv 1808.01244, Eq. 1) as reused by Zhou et al. 2019, "Objects as
Points" (CenterNet, arXiv 1904.07850, Eq. 1); here it serves as a YOLO objectness target. With p = sigmoid(logit)
and y the heatmap value of a cell::

    L = -1/N * sum(  (1 - p)^alpha * log(p)                  where y == 1
                   + (1 - y)^beta * p^alpha * log(1 - p)     elsewhere  )

N is the number of positives (cells with y == 1). ``draw_heatmap`` builds y: a Gaussian around each object centre,
sigma from CenterNet's radius rule (``gaussian_radius``, after CornerNet Sec. 3.2), and exactly 1.0 at the cells
assigned positive, so the positives are found by exact equality ``y == 1``.
"""

from __future__ import annotations

import math

import torch

from utils.loss_terms import bce_elementwise, focal_factor_quality

PROB_EPS = 1e-4  # p is clamped to [PROB_EPS, 1 - PROB_EPS], as CenterNet's _sigmoid
REDUCTIONS = ("pos", "sum", "none")


def _clamped_probs(pred_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """p = sigmoid(logits) clamped to [1e-4, 1 - 1e-4], with log(p) and log(1 - p) of that clamped p.

    Both logs are taken of the clamped p, ``log(p)`` and ``log1p(-p)``, so they are finite for any logit (bounded
    by log(1e-4) ~ -9.21) and log(p) is exactly ``torch.log(sigmoid(x).clamp(1e-4, 1 - 1e-4))``; log1p only adds
    accuracy for small p over log(1 - p). Beyond the clamp (|logit| > log(9999) ~ 9.21) the gradient is zero, as
    with CenterNet's clamped sigmoid; inside it the gradient is exact.
    """
    p = torch.sigmoid(pred_logits).clamp(PROB_EPS, 1.0 - PROB_EPS)
    return p, torch.log(p), torch.log1p(-p)


def gaussian_focal_elementwise(pred_logits: torch.Tensor, heatmap: torch.Tensor, alpha: float = 2.0,
                               beta: float = 4.0, quality: torch.Tensor | None = None) -> torch.Tensor:
    """Per-element penalty-reduced focal loss (CornerNet Eq. 1 before the 1/N), >= 0, same shape as the inputs.

    loss = -(1 - p)^alpha * log(p)                 where heatmap == 1 (positives)
         = -(1 - y)^beta * p^alpha * log(1 - p)    elsewhere (negatives, down-weighted near a centre)
    With ``quality`` q (same shape, in [0, 1]) the positives take Quality Focal Loss instead, built from the pieces
    ``fl_type: quality`` uses (``utils.loss_terms``: ``focal_factor_quality`` x ``bce_elementwise``, GFL's beta =
    alpha here): -|q - p|^alpha * (q log(p) + (1 - q) log(1 - p)) with p unclamped, the positive term above when
    q = 1. Gradients flow into pred_logits only; heatmap and quality are targets.
    """
    if pred_logits.shape != heatmap.shape:
        raise ValueError(f"pred_logits {tuple(pred_logits.shape)} and heatmap {tuple(heatmap.shape)} differ in shape")
    y = heatmap.detach().to(pred_logits.dtype)
    p, log_p, log_1mp = _clamped_probs(pred_logits)
    if quality is None:
        pos = -(1.0 - p).pow(alpha) * log_p
    else:
        q = quality.detach().to(pred_logits.dtype)
        pos = focal_factor_quality(pred_logits, q, alpha) * bce_elementwise(pred_logits, q)
    neg = -(1.0 - y).pow(beta) * p.pow(alpha) * log_1mp
    return torch.where(y == 1.0, pos, neg)


def gaussian_focal_loss(pred_logits: torch.Tensor, heatmap: torch.Tensor, alpha: float = 2.0, beta: float = 4.0,
                        reduction: str = "pos") -> torch.Tensor:
    """Penalty-reduced focal loss (CornerNet Eq. 1, CenterNet Eq. 1); scalar unless reduction is "none".

    reduction "pos": sum / N with N = number of elements where heatmap == 1, and the plain sum when N == 0;
    "sum": the plain sum; "none": the element-wise loss of ``gaussian_focal_elementwise``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    loss = gaussian_focal_elementwise(pred_logits, heatmap, alpha, beta)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    n_pos = (heatmap == 1.0).sum().clamp(min=1)  # stays a tensor: no host sync on an accelerator
    return loss.sum() / n_pos


def gaussian_radius(h: torch.Tensor, w: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """Largest corner offset r that keeps IoU >= min_overlap with an h x w box, CenterNet's rule; >= 0.

    Three ways of moving the corners by r (CornerNet Sec. 3.2), each an inequality a r^2 + b r + c >= 0 (or <= 0)
    whose root gives the bound; the radius is the smallest of the three, with o = min_overlap:

    1. one corner inside, one outside (box shifted by r in x and y), IoU = (h-r)(w-r) / (2hw - (h-r)(w-r)):
       r^2 - (h+w) r + hw (1-o)/(1+o) >= 0, r1 = smaller root
    2. both corners inside (box shrunk by r on each side), IoU = (h-2r)(w-2r) / (hw):
       4 r^2 - 2(h+w) r + (1-o) hw >= 0, r2 = smaller root
    3. both corners outside (box grown by r on each side), IoU = hw / ((h+2r)(w+2r)):
       4o r^2 + 2o(h+w) r - (1-o) hw <= 0, r3 = positive root

    h and w are in grid cells and broadcast together; the roots are the quadratic formula's, written out.
    """
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    h = torch.as_tensor(h, dtype=torch.float32).clamp(min=0.0)
    w = torch.as_tensor(w, dtype=torch.float32, device=h.device).clamp(min=0.0)
    o = min_overlap
    s, area = h + w, h * w
    r1 = _smaller_root(1.0, -s, area * (1.0 - o) / (1.0 + o))
    r2 = _smaller_root(4.0, -2.0 * s, (1.0 - o) * area)
    r3 = _larger_root(4.0 * o, 2.0 * o * s, -(1.0 - o) * area)
    return torch.minimum(torch.minimum(r1, r2), r3).clamp(min=0.0)


def _smaller_root(a: float, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(-b - sqrt(b^2 - 4ac)) / 2a of a r^2 + b r + c = 0 (a > 0), the discriminant floored at 0."""
    return (-b - (b * b - 4.0 * a * c).clamp(min=0.0).sqrt()) / (2.0 * a)


def _larger_root(a: float, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(-b + sqrt(b^2 - 4ac)) / 2a of a r^2 + b r + c = 0 (a > 0), the discriminant floored at 0."""
    return (-b + (b * b - 4.0 * a * c).clamp(min=0.0).sqrt()) / (2.0 * a)


def gaussian_sigma(h: torch.Tensor, w: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """Gaussian sigma of an h x w box (CenterNet): diameter / 6 with diameter = 2 * floor(radius) + 1, so >= 1/6."""
    return (2.0 * gaussian_radius(h, w, min_overlap).floor() + 1.0) / 6.0


UNDERFLOW_SIGMAS = 14.5  # exp(-d^2 / (2 sigma^2)) is exactly 0 in float32 once d > 14.43 sigma (exp(-104) < 2^-150)


def _window(centre: torch.Tensor, half: int, n: int) -> torch.Tensor:
    """Cell indices (M, k) of a window of k = min(2 half + 1, n) cells around floor(centre), shifted inside 0..n-1."""
    k = min(2 * half + 1, n)
    start = (centre.floor().long() - half).clamp(0, n - k)
    return start[:, None] + torch.arange(k, device=centre.device)


@torch.no_grad()
def draw_heatmap(shape: tuple[int, int, int, int], b: torch.Tensor, a: torch.Tensor, centre_xy: torch.Tensor,
                 wh: torch.Tensor, gj: torch.Tensor, gi: torch.Tensor, min_overlap: float = 0.7,
                 peak: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian objectness targets of one level, (bs, na, ny, nx) float32, detached, on centre_xy's device.

    Match m draws exp(-(dx^2 + dy^2) / (2 sigma^2)) on heatmap[b[m], a[m]], dx = (column + 0.5) - cx,
    dy = (row + 0.5) - cy, with (cx, cy) = centre_xy[m] and sigma = gaussian_sigma(h, w) from wh[m] = (w, h),
    all in grid cells of this level; overlapping objects keep the element-wise maximum. Then the assigned cells
    heatmap[b, a, gj, gi] are set to exactly 1.0, the positives of ``gaussian_focal_loss``; ``peak``, a bool (M,),
    limits that to the matches it selects (the others keep their Gaussian value). Each Gaussian is
    evaluated in a square window of +-ceil(14.5 sigma_max) cells around its centre: outside it the value underflows
    to exactly 0 in float32, so the window changes no value and memory is M * window^2 floats, not M * ny * nx.
    """
    bs, na, ny, nx = shape
    device = centre_xy.device
    heatmap = torch.zeros(bs * na * ny * nx, dtype=torch.float32, device=device)
    m = b.numel()
    if m == 0:
        return heatmap.view(bs, na, ny, nx)
    centre = centre_xy.detach().to(device, torch.float32).view(m, 2)
    size = wh.detach().to(device, torch.float32).view(m, 2)
    sigma = gaussian_sigma(size[:, 1], size[:, 0], min_overlap)  # (M,)
    half = math.ceil(UNDERFLOW_SIGMAS * float(sigma.max()))
    cols, rows = _window(centre[:, 0], half, nx), _window(centre[:, 1], half, ny)  # (M, kx), (M, ky)
    dx2 = (cols.float() + 0.5 - centre[:, 0:1]).square()
    dy2 = (rows.float() + 0.5 - centre[:, 1:2]).square()
    two_sigma2 = (2.0 * sigma.square())[:, None, None]
    gauss = torch.exp(-(dy2[:, :, None] + dx2[:, None, :]) / two_sigma2)  # (M, ky, kx)
    image_anchor = b.to(device, torch.long).view(m) * na + a.to(device, torch.long).view(m)
    cell = (image_anchor[:, None, None] * ny + rows[:, :, None]) * nx + cols[:, None, :]  # flat index (M, ky, kx)
    heatmap.scatter_reduce_(0, cell.reshape(-1), gauss.reshape(-1), "amax")  # overlapping objects: the maximum
    heatmap = heatmap.view(bs * na, ny, nx)
    gj, gi = gj.to(device, torch.long).view(m), gi.to(device, torch.long).view(m)
    if peak is not None:
        keep = peak.to(device, torch.bool).view(m)
        image_anchor, gj, gi = image_anchor[keep], gj[keep], gi[keep]
    heatmap[image_anchor, gj, gi] = 1.0
    return heatmap.view(bs, na, ny, nx)
