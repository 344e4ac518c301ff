"""YOLOv5 detection loss with switchable Slide, Focal and cross-entropy options.

Every term is an element-wise loss composed multiplicatively and reduced once (as mmdetection's
``weight_reduce_loss``)::

    loss_elem = base(logits, targets) * focal_factor * slide_weight      then   mean over elements

- ``base``: BCE with logits (sigmoid, multi-label; ``cls_loss_type: bce``) or softmax cross-entropy over class
  indices (mutually exclusive classes; ``cls_loss_type: ce``) for the class term; BCE for objectness.
- ``focal_factor`` (``fl_gamma > 0``): Focal Loss, Lin et al. 2017, arXiv 1708.02002.
- ``slide_weight`` (``slide_ratio > 0``): Slide Loss, Yu et al. 2022 (YOLO-FaceV2), arXiv 2208.02019.

With every option off (``slide_ratio: 0``, ``fl_gamma: 0``, ``cls_loss_type: bce``) the values equal YOLOv5's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.boxes import bbox_iou
from utils.errors import ConfigError
from utils.hyp import validate_hyp
from utils.torch_utils import de_parallel

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


def describe_loss(hyp: dict) -> str:
    """One line naming the active loss options, e.g. 'cls loss: ce + focal(gamma=1.5) + slide(ratio=1)'."""
    gamma, alpha, ratio = hyp.get("fl_gamma", 0.0), hyp.get("fl_alpha", 0.25), hyp.get("slide_ratio", 0.0)
    kind = hyp.get("cls_loss_type", "bce")
    cls = ["ce (softmax, mutually exclusive)" if kind == "ce" else "bce (sigmoid, multi-label)"]
    obj = ["bce"]
    if gamma > 0:
        cls.append(f"focal(gamma={gamma:g})" if kind == "ce" else f"focal(gamma={gamma:g}, alpha={alpha:g})")
        obj.append(f"focal(gamma={gamma:g}, alpha={alpha:g})")
    if ratio > 0:
        cls.append(f"slide(ratio={ratio:g})")
        obj.append(f"slide(ratio={ratio:g})")
    return f"box loss: CIoU | obj loss: {' + '.join(obj)} | cls loss: {' + '.join(cls)}"


class ComputeLoss:
    """YOLOv5 loss for a DetectionModel, configured by ``model.hyp``.

    Call: ``loss(p, targets)`` with p the training output (list of (bs, na, ny, nx, 5 + nc) logits) and targets
    (n, 6) = image index, class, cx, cy, w, h normalized. Returns ``(total * bs, tensor([box, obj, cls]).detach())``
    where total = box_gain * mean(1 - CIoU) + obj_gain * sum_levels(balance_l * obj_l) + cls_gain * sum_levels(cls_l).
    """

    def __init__(self, model: nn.Module, autobalance: bool = False):
        m = de_parallel(model)
        det = m.model[-1]
        self.hyp = h = validate_hyp(dict(m.hyp), source="model.hyp", require_all=False)
        for key in ("box", "obj", "cls", "cls_pw", "obj_pw", "anchor_t", "fl_gamma"):
            if key not in h:
                raise ConfigError(f"model.hyp: missing required key '{key}' for the loss")
        self.nc, self.na, self.nl = det.nc, det.na, det.nl
        self.anchors = det.anchors  # (nl, na, 2) in grid units
        self.device = next(m.parameters()).device
        if h["cls_loss_type"] == "ce" and self.nc < 2:
            raise ConfigError("hyp 'cls_loss_type': ce needs at least 2 classes (with nc=1 the softmax "
                              "cross-entropy is identically zero); use bce for single-class data")
        self.balance = {3: [4.0, 1.0, 0.4]}.get(self.nl, [4.0, 1.0, 0.25, 0.06, 0.02])
        self.ssi = list(det.stride).index(16) if autobalance else 0
        self.autobalance, self.gr = autobalance, 1.0
        self.cp, self.cn = smooth_bce_targets(h["label_smoothing"])
        self.kind, self.gamma, self.alpha = h["cls_loss_type"], h["fl_gamma"], h["fl_alpha"]
        self.slide_ratio = h["slide_ratio"]

    def __call__(self, p: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Total loss times batch size, and the detached (box, obj, cls) components."""
        dev = p[0].device
        lbox, lobj, lcls = (torch.zeros(1, device=dev) for _ in range(3))
        tcls, tbox, indices, anchors = self.build_targets(p, targets)
        for i, pi in enumerate(p):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=dev)
            iou = torch.zeros(0, device=dev)
            if b.shape[0]:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pbox = torch.cat((pxy.sigmoid() * 2 - 0.5, (pwh.sigmoid() * 2) ** 2 * anchors[i]), 1)
                iou = bbox_iou(pbox, tbox[i], CIoU=True).squeeze(-1)
                lbox += (1.0 - iou).mean()
                tobj[b, a, gj, gi] = ((1.0 - self.gr) + self.gr * iou.detach().clamp(0)).to(tobj.dtype)
            mu = slide_mu(iou)
            if b.shape[0] and self.nc > 1:
                lcls += self.class_loss(pcls, tcls[i], iou.detach(), mu)
            obji = self.obj_loss(pi[..., 4], tobj, mu)
            lobj += obji * self.balance[i]
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()
        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox *= self.hyp["box"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        bs = p[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def obj_loss(self, logits: torch.Tensor, tobj: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Objectness: mean over all cells of BCE x focal x slide(x = tobj, mu); logits and tobj (bs, na, ny, nx)."""
        loss = bce_elementwise(logits, tobj, self.hyp["obj_pw"])
        if self.gamma > 0:
            loss = loss * focal_factor_bce(logits, tobj, self.gamma, self.alpha)
        if self.slide_ratio > 0:
            loss = loss * slide_weight(tobj, mu, self.slide_ratio)
        return loss.mean()

    def class_loss(self, logits: torch.Tensor, tcls: torch.Tensor, iou: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Class term of the positives: logits (n, nc), class indices (n,), their CIoU (n,) for the slide weight.

        bce: mean over (n, nc) of BCE(logits, smoothed one-hot) x focal x slide.
        ce:  mean over n of CE(logits, class) x (1 - p_t)^gamma x slide, divided by nc. The 1/nc puts the softmax
             term on BCE's per-column scale: at initialisation (all logits equal) CE = ln(nc) per positive while
             the BCE mean is about (ln(nc) + 0.6) / nc, so CE / nc is within a factor of 2 of BCE for nc = 3..80.
        """
        if self.kind == "ce":
            loss = ce_elementwise(logits, tcls, self.hyp["label_smoothing"])
            if self.gamma > 0:
                loss = loss * focal_factor_ce(logits, tcls, self.gamma)
            if self.slide_ratio > 0:
                loss = loss * slide_weight(iou, mu, self.slide_ratio)
            return loss.mean() / self.nc
        t = torch.full_like(logits, self.cn)
        t[range(tcls.shape[0]), tcls] = self.cp
        loss = bce_elementwise(logits, t, self.hyp["cls_pw"])
        if self.gamma > 0:
            loss = loss * focal_factor_bce(logits, t, self.gamma, self.alpha)
        if self.slide_ratio > 0:
            loss = loss * slide_weight(iou, mu, self.slide_ratio).unsqueeze(1)
        return loss.mean()

    def build_targets(self, p: list[torch.Tensor], targets: torch.Tensor):
        """Assign targets to anchors and cells (YOLOv5 rule).

        A target matches an anchor when max(r, 1/r) < anchor_t for both its w and h ratios r to the anchor; each
        match is also given to the two neighbouring cells nearest its centre (offset 0.5) in x and y, except at the
        grid border. Returns per level: classes (m,), boxes (m, 4) = (cx - gx, cy - gy, w, h) in grid units,
        indices (image, anchor, gy, gx) and the matched anchors (m, 2).
        """
        nt, dev = targets.shape[0], targets.device
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=dev)
        anchor_idx = torch.arange(self.na, device=dev).float().view(self.na, 1).repeat(1, nt)
        t_all = torch.cat((targets.repeat(self.na, 1, 1), anchor_idx[..., None]), 2)  # (na, nt, 7)
        g = 0.5
        offsets_all = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=dev).float() * g
        for i in range(self.nl):
            anchors, shape = self.anchors[i], p[i].shape
            gain[2:6] = torch.tensor(shape, device=dev)[[3, 2, 3, 2]].float()
            t = t_all * gain
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                t = t[torch.max(r, 1 / r).max(2)[0] < self.hyp["anchor_t"]]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                left, up = ((gxy % 1 < g) & (gxy > 1)).T
                right, down = ((gxi % 1 < g) & (gxi > 1)).T
                keep = torch.stack((torch.ones_like(left), left, up, right, down))
                t = t.repeat((5, 1, 1))[keep]
                offsets = (torch.zeros_like(gxy)[None] + offsets_all[:, None])[keep]
            else:
                t = t_all[0]
                offsets = 0
            bc, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gij[:, 0].clamp_(0, shape[3] - 1)  # a centre exactly on the far border stays in the last cell
            gij[:, 1].clamp_(0, shape[2] - 1)
            gi, gj = gij.T
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch

