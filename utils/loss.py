"""YOLOv5 detection loss with switchable Slide, Focal, cross-entropy, class-balanced and CenterNet-style options.

Every term is an element-wise loss composed multiplicatively and reduced once (as mmdetection's
``weight_reduce_loss``); the terms and weights are defined, with their formulas and papers, in ``utils.loss_terms``
and ``utils.heatmap``::

    term = reduce(base(logits, targets) * focal_factor * slide_weight * class_weight)

- ``base``: BCE with logits (sigmoid, multi-label; ``cls_loss_type: bce``) or softmax cross-entropy over class
  indices (mutually exclusive classes; ``cls_loss_type: ce``) for the class term; for objectness BCE
  (``obj_loss_type: bce``) or the penalty-reduced focal loss on Gaussian heatmap targets of CornerNet / CenterNet
  (``obj_loss_type: gaussian_focal``; Law & Deng 2018, arXiv 1808.01244; Zhou et al. 2019, arXiv 1904.07850),
  whose positives (value 1) are every YOLOv5-assigned cell (``heatmap_peak: assigned``) or only the cell holding
  each object's centre, CenterNet's single peak (``heatmap_peak: centre``); their target is 1 (``heatmap_target:
  one``, the papers) or their box's CIoU as YOLOv5's objectness, with Quality Focal Loss (``heatmap_target: iou``);
  CornerNet's exponents alpha and beta (Eq. 1; 2 and 4 in both papers) are ``heatmap_alpha`` / ``heatmap_beta``.
- ``focal_factor`` (``fl_gamma > 0``): Focal Loss, Lin et al. 2017, arXiv 1708.02002 (``fl_type: focal``, with
  ``fl_alpha``), or Quality Focal Loss, Li et al. 2020, arXiv 2006.04388 (``fl_type: quality``, for soft targets).
  It applies to the class term and the BCE objectness; the heatmap focal loss is already focal, so fl_gamma leaves
  it unchanged.
- ``slide_weight`` (``slide_ratio > 0``): Slide Loss, Yu et al. 2022 (YOLO-FaceV2), arXiv 2208.02019, with the
  threshold mu of each level from the batch (``slide_mu: batch``, the paper) or a moving average (``slide_mu: ema``).
- ``class_weight`` (``cls_weights: inverse | effective``): per class of the target, Cui et al. 2019,
  arXiv 1901.05555; the values (``cls_weights_values``) come from the training labels' class counts.
- ``reduce`` (``loss_norm``): mean over elements (YOLOv5), / the batch's positives over all levels (RetinaNet) or
  / sum of weights (weighted mean). The heatmap objectness keeps its own reduction, / positive cells, as in the
  papers.
- ``box_l1 > 0`` adds an L1 term on the positives' box regression (CenterNet's offset and size L1, YOLOX's extra L1).

With every option off (the defaults) the values equal YOLOv5's.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.boxes import bbox_iou, box_params
from utils.errors import ConfigError
from utils.heatmap import draw_heatmap, gaussian_focal_elementwise
from utils.loss_terms import (
    SlideMuEMA,
    bce_elementwise,
    ce_elementwise,
    focal_factor_bce,
    focal_factor_ce,
    focal_factor_quality,
    reduce_loss,
    slide_mu,
    slide_weight,
    smooth_bce_targets,
)
from utils.torch_utils import de_parallel
from utils.train.hyp import SCHEMA, check_hyp_for_classes, validate_hyp


def box_l1_loss(pxy: torch.Tensor, pwh: torch.Tensor, txy: torch.Tensor, twh: torch.Tensor,
                anchors: torch.Tensor) -> torch.Tensor:
    """L1 on the box regression of m positives, summed over 4 coordinates, mean over positives; all (m, 2).

    |pxy - txy| + |log(pwh / anchor) - log(twh / anchor)|, with pxy, txy the centre offsets in the cell and pwh, twh
    the predicted and target sizes, all in grid units (CenterNet's offset and size L1, Zhou et al. 2019; YOLOX's
    extra L1 term, Ge et al. 2021, arXiv 2107.08430). Sizes are clamped at 1e-9 before the log.
    """
    if pxy.shape[0] == 0:
        return pxy.sum() * 0.0
    eps = 1e-9
    dwh = torch.log(pwh.clamp(min=eps) / anchors) - torch.log(twh.clamp(min=eps) / anchors)
    return ((pxy - txy).abs().sum(1) + dwh.abs().sum(1)).mean()


def level_balance(nl: int) -> list[float]:
    """YOLOv5's objectness weight per level, P3 first: [4, 1, 0.4] for three levels, else [4, 1, 0.25, 0.06, 0.02]."""
    return {3: [4.0, 1.0, 0.4]}.get(nl, [4.0, 1.0, 0.25, 0.06, 0.02])


def describe_loss(hyp: dict) -> str:
    """One line naming the active loss options, e.g. 'box loss: CIoU | obj loss: bce + slide(ratio=1) | ...'."""
    gamma, alpha, ratio = hyp.get("fl_gamma", 0.0), hyp.get("fl_alpha", 0.25), hyp.get("slide_ratio", 0.0)
    kind, norm = hyp.get("cls_loss_type", "bce"), hyp.get("loss_norm", "mean")
    heat = hyp.get("obj_loss_type", "bce") == "gaussian_focal"
    box = ["CIoU"] + ([f"L1(gain={hyp['box_l1']:g})"] if hyp.get("box_l1", 0) > 0 else [])
    cls = ["ce (softmax, mutually exclusive)" if kind == "ce" else "bce (sigmoid, multi-label)"]
    peaks = ", peaks at centres" if hyp.get("heatmap_peak", "assigned") == "centre" else ""
    peaks += ", IoU-valued peaks" if hyp.get("heatmap_target", "one") == "iou" else ""
    exponents = {k: SCHEMA[k].default for k in ("heatmap_alpha", "heatmap_beta")}  # CornerNet's 2 and 4
    if {k: hyp.get(k, v) for k, v in exponents.items()} != exponents:
        peaks += f", alpha={hyp['heatmap_alpha']:g}, beta={hyp['heatmap_beta']:g}"
    obj = [f"gaussian heatmap focal (CenterNet{peaks})" if heat else "bce"]
    if gamma > 0:
        quality = hyp.get("fl_type", "focal") == "quality"
        sig = f"quality focal(gamma={gamma:g})" if quality else f"focal(gamma={gamma:g}, alpha={alpha:g})"
        cls.append(f"focal(gamma={gamma:g})" if kind == "ce" else sig)
        if not heat:
            obj.append(sig)
    if ratio > 0:
        mu = ", mu=ema" if hyp.get("slide_mu", "batch") == "ema" else ""
        cls.append(f"slide(ratio={ratio:g}{mu})")
        obj.append(f"slide(ratio={ratio:g}{mu})")
    if hyp.get("cls_weights", "none") != "none":
        cls.append(f"class weights({hyp['cls_weights']})")
    norm_txt = "" if norm == "mean" else f" | reduction: {norm}"
    return f"box loss: {' + '.join(box)} | obj loss: {' + '.join(obj)} | cls loss: {' + '.join(cls)}{norm_txt}"


class ComputeLoss:
    """YOLOv5 loss for a DetectionModel, configured by ``model.hyp``.

    Call: ``loss(p, targets)`` with p the training output (list of (bs, na, ny, nx, 5 + nc) logits) and targets
    (n, 6) = image index, class, cx, cy, w, h normalized. Returns ``(total * bs, tensor([box, obj, cls]).detach())``
    where total = box_gain * sum_levels(mean(1 - CIoU)) + box_l1 * sum_levels(L1) + obj_gain * sum_levels(balance_l *
    obj_l) + cls_gain * sum_levels(cls_l). A call on predictions that need no gradient (validation) leaves the Slide
    moving average alone.
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
        check_hyp_for_classes(h, self.nc, source="model.hyp")
        self.balance = level_balance(self.nl)
        self.ssi = list(det.stride).index(16) if autobalance else 0
        self.autobalance, self.gr = autobalance, 1.0
        self.cp, self.cn = smooth_bce_targets(h["label_smoothing"])
        self.kind, self.gamma, self.alpha = h["cls_loss_type"], h["fl_gamma"], h["fl_alpha"]
        self.slide_ratio, self.norm = h["slide_ratio"], h["loss_norm"]
        self.heatmap_obj = h["obj_loss_type"] == "gaussian_focal"
        self.mu_ema = SlideMuEMA(self.nl) if h["slide_mu"] == "ema" else None
        self.class_w = self._class_weights(h)

    def _class_weights(self, h: dict) -> torch.Tensor | None:
        """The per-class weight tensor (nc,) for cls_weights inverse/effective, else None."""
        if h["cls_weights"] == "none":
            return None
        values = h.get("cls_weights_values")
        if values is None:
            raise ConfigError(f"hyp 'cls_weights': {h['cls_weights']} needs 'cls_weights_values' (one weight per "
                              "class); train.py computes them from the training labels")
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def state_dict(self) -> dict:
        """Training state a checkpoint must keep (the Slide moving average); empty when there is none."""
        return {"slide_mu": self.mu_ema.state_dict()} if self.mu_ema is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned (a checkpoint without it leaves the state fresh)."""
        if self.mu_ema is not None and state and state.get("slide_mu"):
            self.mu_ema.load_state_dict(state["slide_mu"])

    def __call__(self, p: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Total loss times batch size, and the detached (box, obj, cls) components."""
        dev = p[0].device
        lbox, lobj, lcls, ll1 = (torch.zeros(1, device=dev) for _ in range(4))
        tcls, tbox, indices, anchors = self.build_targets(p, targets)
        decay = self.mu_ema.step() if self.mu_ema is not None and p[0].requires_grad else None
        n_pos = sum(int(ix[0].shape[0]) for ix in indices)  # positives of the batch over all levels (loss_norm pos)
        for i, pi in enumerate(p):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=dev)
            iou = torch.zeros(0, device=dev)
            if b.shape[0]:
                pbox, _, pcls = pi[b, a, gj, gi].split((4, 1, self.nc), 1)
                pxy, pwh = box_params(pbox).split(2, 1)
                pwh = pwh * anchors[i]
                iou = bbox_iou(torch.cat((pxy, pwh), 1), tbox[i], CIoU=True).squeeze(-1)
                lbox += (1.0 - iou).mean()
                if self.hyp["box_l1"] > 0:
                    ll1 += box_l1_loss(pxy, pwh, tbox[i][:, :2], tbox[i][:, 2:], anchors[i])
                tobj[b, a, gj, gi] = ((1.0 - self.gr) + self.gr * iou.detach().clamp(0)).to(tobj.dtype)
            mu = self.level_mu(i, iou, decay)
            if b.shape[0] and self.nc > 1:
                lcls += self.class_loss(pcls, tcls[i], iou.detach(), mu, n_pos)
            obji = self.obj_loss(pi[..., 4], tobj, mu, indices[i], tbox[i], n_pos)
            lobj += obji * self.balance[i]
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obji.detach().item()
        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox = lbox * self.hyp["box"] + ll1 * self.hyp["box_l1"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        bs = p[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def level_mu(self, level: int, iou: torch.Tensor, decay: float | None) -> torch.Tensor:
        """Slide threshold of a level: this batch's (slide_mu batch) or the moving average, updated when training."""
        if self.mu_ema is None:
            return slide_mu(iou)
        if decay is not None:
            self.mu_ema.update(level, iou, decay)
        return self.mu_ema.value(level, iou.device)

    def obj_loss(self, logits: torch.Tensor, tobj: torch.Tensor, mu: torch.Tensor, index: tuple,
                 tbox: torch.Tensor, n_pos: int | None = None) -> torch.Tensor:
        """Objectness of one level; logits and tobj (bs, na, ny, nx), index and tbox the level's matches.

        n_pos: the batch's positives over all levels, the denominator of loss_norm pos (default: this level's). As in
        RetinaNet it counts every level: a level with few or no positives of its own would otherwise divide the sum
        over all its cells by 1, and its objectness gradient would swing by orders of magnitude between batches.

        bce:             reduce(BCE(logits, tobj) x focal x slide(x = tobj, mu)) by loss_norm.
        gaussian_focal:  sum(heatmap focal x slide) / positive cells, targets from ``heatmap_targets``.
        """
        w = slide_weight(tobj, mu, self.slide_ratio) if self.slide_ratio > 0 else None
        if self.heatmap_obj:
            heat = self.heatmap_targets(tobj.shape, index, tbox, self.hyp["heatmap_peak"] == "centre")
            quality = tobj if self.hyp["heatmap_target"] == "iou" else None  # tobj: each positive's CIoU
            alpha, beta = self.hyp["heatmap_alpha"], self.hyp["heatmap_beta"]
            loss = gaussian_focal_elementwise(logits, heat, alpha, beta, quality)
            loss = loss * w if w is not None else loss
            return loss.sum() / max(int((heat == 1).sum()), 1)
        loss = bce_elementwise(logits, tobj, self.hyp["obj_pw"])
        if self.gamma > 0:
            f = self.focal_factor(logits, tobj)
            w = f if w is None else w * f
        loss = loss * w if w is not None else loss
        return reduce_loss(loss, w, self.norm, index[0].shape[0] if n_pos is None else n_pos)

    def focal_factor(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The sigmoid focal factor of fl_type: RetinaNet's alpha_t (1 - p_t)^gamma or GFL's |t - p|^gamma."""
        if self.hyp["fl_type"] == "quality":
            return focal_factor_quality(logits, targets, self.gamma)
        return focal_factor_bce(logits, targets, self.gamma, self.alpha)

    @staticmethod
    def heatmap_targets(shape: torch.Size, index: tuple, tbox: torch.Tensor, centre_only: bool = False
                        ) -> torch.Tensor:
        """Gaussian heatmap (bs, na, ny, nx): a Gaussian around each object centre, 1 at the YOLOv5-assigned cells.

        centre_only (``heatmap_peak: centre``): 1 only at the assigned cells that hold the object's centre (offset
        within [0, 1) in both axes, CenterNet's single peak); YOLOv5's two neighbour cells keep their Gaussian value.
        """
        b, a, gj, gi = index
        centre = tbox[:, :2] + torch.stack((gi, gj), 1).to(tbox.dtype)
        peak = ((tbox[:, :2] >= 0) & (tbox[:, :2] < 1)).all(1) if centre_only else None
        return draw_heatmap(tuple(shape), b, a, centre, tbox[:, 2:4], gj, gi, peak=peak)

    def class_loss(self, logits: torch.Tensor, tcls: torch.Tensor, iou: torch.Tensor, mu: torch.Tensor,
                   n_pos: int | None = None) -> torch.Tensor:
        """Class term of the positives: logits (n, nc), class indices (n,), their CIoU (n,) for the slide weight.

        bce: reduce over (n, nc) of BCE(logits, smoothed one-hot) x focal x slide x class weight.
        ce:  reduce over n of CE(logits, class) x (1 - p_t)^gamma x slide x class weight, divided by nc. The 1/nc
             puts the softmax term on BCE's per-column scale: at initialisation (all logits equal) CE = ln(nc) per
             positive while the BCE mean is about (ln(nc) + 0.6) / nc, so CE / nc is within a factor of 2 of BCE.
        The class weight is that of each positive's target class (Cui et al. 2019 weight the whole loss of a sample
        by its ground-truth class), so a rare class's examples count more in every column.
        """
        n = tcls.shape[0]
        n_pos = n if n_pos is None else n_pos  # loss_norm pos: the batch's positives over all levels
        w = slide_weight(iou, mu, self.slide_ratio) if self.slide_ratio > 0 else None
        if self.class_w is not None:
            cw = self.class_w[tcls].to(logits.dtype)
            w = cw if w is None else w * cw
        if self.kind == "ce":
            loss = ce_elementwise(logits, tcls, self.hyp["label_smoothing"])
            if self.gamma > 0:
                f = focal_factor_ce(logits, tcls, self.gamma)
                w = f if w is None else w * f
            loss = loss * w if w is not None else loss
            return reduce_loss(loss, w, self.norm, n_pos) / self.nc
        t = torch.full_like(logits, self.cn)
        t[range(n), tcls] = self.cp
        loss = bce_elementwise(logits, t, self.hyp["cls_pw"])
        w = w.unsqueeze(1) if w is not None else None
        if self.gamma > 0:
            f = self.focal_factor(logits, t)
            w = f if w is None else w * f
        loss = loss * w if w is not None else loss
        return reduce_loss(loss, w, self.norm, n_pos)

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
