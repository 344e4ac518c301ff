"""Element-wise loss terms, their weights and reductions, each defined once with its formula and paper.

``utils.loss.ComputeLoss`` composes them as ``reduce(base * focal_factor * slide_weight * class_weight)``:

- ``bce_elementwise`` / ``ce_elementwise``: sigmoid BCE (multi-label) and softmax cross-entropy (exclusive classes).
- ``focal_factor_bce`` / ``focal_factor_ce``: Focal Loss, Lin et al. 2017 (RetinaNet), arXiv 1708.02002;
  ``focal_factor_quality``: Quality Focal Loss for soft targets, Li et al. 2020 (GFL), arXiv 2006.04388.
- ``slide_weight`` with ``slide_mu`` or ``SlideMuEMA``: Slide Loss, Yu et al. 2022 (YOLO-FaceV2), arXiv 2208.02019.
- ``class_balance_weights``: class-balanced weights, Cui et al. 2019, arXiv 1901.05555.
- ``reduce_loss``: the ``loss_norm`` rule (mean | pos | weighted) that turns a weighted element-wise loss into a scalar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

SLIDE_MU_FLOOR = 0.2  # mu is never below this (the paper's lower bound on the IoU threshold)
SLIDE_MU_EMPTY = 0.5  # mu for a level without matched targets
SLIDE_BAND = 0.1  # width of the band below mu that gets the constant weight e^(1 - mu)


def slide_weight(x: torch.Tensor, mu: float | torch.Tensor, ratio: float = 1.0) -> torch.Tensor:
    """Slide Loss weight (YOLO-FaceV2, arXiv 2208.02019, Eq. 4), blended by ratio; same shape as x.

    w(x, mu) = 1            for x <= mu - 0.1
             = e^(1 - mu)   for mu - 0.1 < x < mu
             = e^(1 - x)    for x >= mu
    with x a sample's IoU value and mu the mean IoU of the matched predictions at that level (floored at 0.2 by
    the caller, see ``slide_mu``). Returned: 1 + ratio * (w - 1), so ratio 0 gives 1 and ratio 1 the paper's w.
    No gradient flows through the weight.
    """
    x = x.detach()
    mu = torch.as_tensor(mu, dtype=x.dtype, device=x.device)
    w = torch.where(x <= mu - SLIDE_BAND, torch.ones_like(x),
                    torch.where(x < mu, torch.exp(1.0 - mu).expand_as(x), torch.exp(1.0 - x)))
    return 1.0 + ratio * (w - 1.0)


def slide_mu(iou: torch.Tensor) -> torch.Tensor:
    """Slide threshold mu of one level: mean matched CIoU (detached), floored at 0.2; 0.5 when nothing matched."""
    if iou.numel() == 0:
        return torch.tensor(SLIDE_MU_EMPTY, device=iou.device)
    return iou.detach().mean().clamp(min=SLIDE_MU_FLOOR)


def focal_factor_bce(logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Focal modulation of a sigmoid BCE (Lin et al. 2017, Eq. 5): alpha_t * (1 - p_t)^gamma, element-wise.

    p = sigmoid(logits); p_t = t * p + (1 - t) * (1 - p); alpha_t = t * alpha + (1 - t) * (1 - alpha), for (soft)
    targets t in [0, 1]. Shapes of logits and targets match; gradients flow through p_t, as in the paper.
    """
    p = torch.sigmoid(logits)
    p_t = targets * p + (1 - targets) * (1 - p)
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    return alpha_t * (1.0 - p_t) ** gamma


def focal_factor_quality(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Quality Focal Loss modulation (Li et al. 2020, Generalized Focal Loss, arXiv 2006.04388, Eq. 5): |t - p|^gamma.

    p = sigmoid(logits), t the (soft) target in [0, 1], element-wise. For the IoU-valued objectness targets of YOLOv5
    it vanishes where the prediction equals its target, which the RetinaNet factor alpha_t (1 - p_t)^gamma does not
    do for 0 < t < 1; for hard targets it is (1 - p_t)^gamma without alpha. Gradients flow through p, as in the paper.
    """
    return (targets - torch.sigmoid(logits)).abs().pow(gamma)


def focal_factor_ce(logits: torch.Tensor, target_idx: torch.Tensor, gamma: float) -> torch.Tensor:
    """Focal modulation of softmax CE: (1 - p_t)^gamma, p_t = softmax(logits)[target]; (n, nc) -> (n,)."""
    p_t = logits.softmax(-1).gather(1, target_idx.view(-1, 1)).squeeze(1)
    return (1.0 - p_t) ** gamma


def bce_elementwise(logits: torch.Tensor, targets: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """Sigmoid binary cross-entropy per element: -(pw * t * log(p) + (1 - t) * log(1 - p)), p = sigmoid(logits)."""
    pw = torch.tensor([pos_weight], device=logits.device, dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pw, reduction="none")


def ce_elementwise(logits: torch.Tensor, target_idx: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy per row: -sum_c q_c log softmax(logits)_c, q the (smoothed) one-hot; (n, nc) -> (n,).

    Label smoothing is torch's: q = (1 - eps) * one_hot + eps / nc.
    """
    return F.cross_entropy(logits, target_idx, label_smoothing=label_smoothing, reduction="none")


def smooth_bce_targets(eps: float = 0.0) -> tuple[float, float]:
    """Positive and negative BCE targets with label smoothing eps: (1 - eps / 2, eps / 2)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


LOSS_NORMS = ("mean", "pos", "weighted")


def reduce_loss(loss: torch.Tensor, weight: torch.Tensor | None, norm: str, n_pos: int) -> torch.Tensor:
    """Reduce an element-wise loss already multiplied by its weights to a scalar, by the ``loss_norm`` rule.

    mean:      sum(w * l) / n_elements               (YOLOv5: the mean over every cell or class column)
    pos:       sum(w * l) / max(n_pos, 1)            (RetinaNet, Lin et al. 2017: divide by the positive anchors)
    weighted:  sum(w * l) / sum(w)                   (a weighted mean: reweighting moves the emphasis between
                                                      examples, not the term's scale; w detached in the denominator)
    ``weight`` is the product of the weights broadcastable to loss, or None when nothing reweights (then weighted
    equals mean). n_pos: the number of matched positives behind the term.
    """
    if norm == "pos":
        return loss.sum() / max(n_pos, 1)
    if norm == "weighted" and weight is not None:
        return loss.sum() / weight.detach().expand_as(loss).sum().clamp(min=1e-12)
    return loss.mean()


def class_counts(labels: Sequence, nc: int) -> list[int]:
    """Boxes per class in a list of YOLO label arrays (k, 5+) whose first column is the class id; (nc,)."""
    counts = [0] * nc
    for lb in labels:
        for c in lb[:, 0].astype(int).tolist() if len(lb) else []:
            if 0 <= c < nc:
                counts[c] += 1
    return counts


def class_balance_weights(counts: Sequence[int], rule: str, beta: float = 0.999) -> list[float]:
    """Per-class loss weights from the training boxes per class, normalised to mean 1 over the classes.

    inverse:    w_c proportional to 1 / n_c
    effective:  w_c proportional to (1 - beta) / (1 - beta^n_c), the inverse "effective number of samples"
                (Cui et al. 2019, class-balanced loss, arXiv 1901.05555, Eq. 3); beta -> 0 gives equal weights,
                beta -> 1 gives inverse
    none:       all 1
    A class with no boxes is counted as one box, so its weight stays finite.
    """
    n = [max(int(c), 1) for c in counts]
    if rule == "none":
        w = [1.0] * len(n)
    elif rule == "inverse":
        w = [1.0 / c for c in n]
    elif rule == "effective":
        w = [(1.0 - beta) / (1.0 - beta ** c) for c in n]
    else:
        raise ValueError(f"unknown class weight rule {rule!r} (none, inverse, effective)")
    mean = sum(w) / len(w)
    return [x / mean for x in w]


class SlideMuEMA:
    """Per-level moving average of the matched mean CIoU, the Slide threshold for ``slide_mu: ema``.

    mu_l <- d * mu_l + (1 - d) * mean_CIoU_l(batch), with d = 0.999 * (1 - exp(-updates / 2000)) (the ramp of
    YOLOv5's ModelEMA: the first batches set mu almost alone, later ones move it slowly). A level with no match in a
    batch keeps its value. The floor of 0.2 applies to the returned mu, not to the average. ``state_dict`` goes into
    the checkpoint, so ``--resume`` continues the average instead of restarting it.
    """

    def __init__(self, nl: int, decay: float = 0.999, tau: float = 2000.0):
        self.mu = [SLIDE_MU_EMPTY] * nl
        self.updates, self.decay, self.tau = 0, decay, tau

    def step(self) -> float:
        """Count one training batch; return its decay d."""
        self.updates += 1
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    def update(self, level: int, iou: torch.Tensor, d: float) -> None:
        """Fold one level's matched CIoU of this batch into the average (no-op without matches)."""
        if iou.numel():
            self.mu[level] = d * self.mu[level] + (1.0 - d) * float(iou.detach().mean())

    def value(self, level: int, device: torch.device) -> torch.Tensor:
        """The level's threshold mu: the average, floored at 0.2."""
        return torch.tensor(max(self.mu[level], SLIDE_MU_FLOOR), device=device)

    def state_dict(self) -> dict:
        """What a checkpoint keeps."""
        return {"mu": list(self.mu), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint's state_dict (a different level count is an error)."""
        if len(state["mu"]) != len(self.mu):
            raise ValueError(f"slide_mu state has {len(state['mu'])} levels, the model has {len(self.mu)}")
        self.mu, self.updates = [float(x) for x in state["mu"]], int(state["updates"])
