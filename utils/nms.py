"""Non-maximum suppression on the detector's eval output.

Input contract (docs/ARCHITECTURE.md, "Model output"): (bs, N, 5 + nc) with columns cx, cy, w, h in input pixels,
objectness (sigmoid) and nc class scores (sigmoid, or softmax rows summing to 1). Output: one (n, 6) tensor per image,
columns x1, y1, x2, y2 (input pixels), conf, cls, sorted by conf descending. The suppression itself is
torchvision's NMS kernel (``utils.tv_ops.batched_nms``, the semantics of ``torchvision.ops.batched_nms``).
"""

from __future__ import annotations

import time
from typing import Optional, Sequence, Union

import torch

from utils import tv_ops
from utils.boxes import xywh2xyxy
from utils.errors import ConfigError
from utils.log import get_logger

MAX_NMS_CANDIDATES = 30000  # per image, highest scores first, before batched_nms
_state = {"warned_slow": False}  # the time-limit warning is logged once per process


def _candidates(x: torch.Tensor, conf_thres: float, multi_label: bool) -> torch.Tensor:
    """Turn (k, 5 + nc) rows that passed the objectness filter into (c, 6) candidates x1, y1, x2, y2, score, cls."""
    boxes = xywh2xyxy(x[:, :4])
    nc = x.shape[1] - 5
    if nc == 0:  # objectness-only model: every box is class 0
        scores = x[:, 4:5]
    else:
        scores = x[:, 5:] * x[:, 4:5]  # score = objectness x class score
    if multi_label:
        i, j = (scores > conf_thres).nonzero(as_tuple=True)
        return torch.cat((boxes[i], scores[i, j, None], j[:, None].to(x.dtype)), 1)
    conf, j = scores.max(1, keepdim=True)
    keep = conf.view(-1) > conf_thres
    return torch.cat((boxes, conf, j.to(x.dtype)), 1)[keep]


def _nms_one(x: torch.Tensor, conf_thres: float, iou_thres: float, classes: Optional[torch.Tensor],
             agnostic: bool, multi_label: bool, max_det: int, prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NMS for one image: (N, 5 + nc) raw rows -> (n, 6) detections x1, y1, x2, y2, conf, cls; ``prior`` (k, 5)
    cls, cx, cy, w, h rows in input pixels join the candidates with confidence 1 (val.py --save-hybrid)."""
    x = x[x[:, 4] > conf_thres].float()  # objectness filter first: cheap and removes most rows
    if not x.shape[0] and prior is None:
        return x.new_zeros((0, 6))
    det = _candidates(x, conf_thres, multi_label)
    if prior is not None:
        p = prior.float().to(det.device)
        det = torch.cat((torch.cat((xywh2xyxy(p[:, 1:5]), torch.ones_like(p[:, :1]), p[:, :1]), 1), det))
    if classes is not None:
        det = det[(det[:, 5:6] == classes.to(det.device)).any(1)]
    if not det.shape[0]:
        return det
    det = det[det[:, 4].argsort(descending=True)[:MAX_NMS_CANDIDATES]]
    groups = torch.zeros_like(det[:, 5]) if agnostic else det[:, 5]
    return det[first_kept(det[:, :4], det[:, 4], groups, iou_thres, max_det)]


def first_kept(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_thres: float,
               max_det: int) -> torch.Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, groups, iou_thres)[:max_det]``, without suppressing all boxes.

    Rows must be sorted by score, descending. Greedy NMS decides each box by higher-scored boxes only, so running it
    on the best k rows (plus the boxes kept so far) settles those k exactly; k doubles from 4 * max_det until
    max_det boxes are kept or every row is used. At conf 0.001 this cuts CPU validation NMS several times over.
    """
    n = boxes.shape[0]
    kept = torch.zeros(0, dtype=torch.long, device=boxes.device)
    start, end = 0, min(n, max(4 * max_det, 256))
    while True:
        cand = torch.cat((kept, torch.arange(start, end, device=boxes.device)))
        kept = cand[tv_ops.batched_nms(boxes[cand], scores[cand], groups[cand], iou_thres)]
        if len(kept) >= max_det or end == n:
            return kept[:max_det]
        start, end = end, min(n, 2 * end)


def non_max_suppression(prediction: Union[torch.Tensor, Sequence[torch.Tensor]], conf_thres: float = 0.25,
                        iou_thres: float = 0.45, classes: Optional[Sequence[int]] = None, agnostic: bool = False,
                        multi_label: bool = False, max_det: int = 300, exclusive: bool = False,
                        time_limit: Optional[float] = None,
                        labels: Optional[Sequence[torch.Tensor]] = None) -> list[torch.Tensor]:
    """Filter and suppress (bs, N, 5 + nc) xywh predictions -> list of bs tensors (n, 6) x1, y1, x2, y2, conf, cls.

    Steps per image: keep rows with objectness > conf_thres; score = objectness x class score; with ``multi_label``
    (used only when nc > 1 and not ``exclusive``) every (box, class) pair with score > conf_thres is a candidate,
    otherwise the best class of each box is; optional ``classes`` filter; at most 30,000 candidates by score go to
    ``torchvision.ops.batched_nms`` (IoU > iou_thres suppressed, per class unless ``agnostic``); the best ``max_det``
    are kept. ``exclusive=True`` is for softmax (mutually exclusive) classes: one label per box. ``labels`` (one
    (k, 5) tensor per image: cls, cx, cy, w, h in input pixels) are added as detections of confidence 1 before the
    suppression, as upstream's apriori labels (``val.py --save-hybrid``: labels and predictions for autolabelling).

    ``prediction`` may also be the eval tuple ``(y, raw)``; element 0 is used. Output tensors are float32 on the
    input's device. If the work takes longer than ``time_limit`` seconds (default 0.5 + 0.05 * bs) a warning is logged
    (once per process, not per batch: CPU validation at conf_thres 0.001 exceeds it routinely) and every image is still
    processed; upstream stops early and returns nothing for the remaining images.
    """
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ConfigError(f"--conf-thres {conf_thres} and --iou-thres {iou_thres} must each lie in [0, 1]")
    bs, nc = prediction.shape[0], prediction.shape[2] - 5
    multi_label = multi_label and nc > 1 and not exclusive
    limit = 0.5 + 0.05 * bs if time_limit is None else time_limit
    cls_filter = None if classes is None else torch.tensor(list(classes), dtype=torch.float32)
    start, output = time.time(), []
    for xi in range(bs):
        output.append(_nms_one(prediction[xi], conf_thres, iou_thres, cls_filter, agnostic, multi_label, max_det,
                               None if labels is None else labels[xi]))
    if not _state["warned_slow"] and time.time() - start > limit:
        get_logger().warning(f"WARNING NMS took {time.time() - start:.3f}s for a batch of {bs}, over the "
                             f"{limit:.3f}s time limit; all images were processed (warning shown once)")
        _state["warned_slow"] = True
    return output
