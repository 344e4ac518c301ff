"""Box conversions, rescaling and IoU variants.

Formats: ``xyxy`` = corners (x1, y1, x2, y2); ``xywh`` = centre and size; a trailing ``n`` means normalized to [0, 1]
by the image width and height. Conversions accept torch tensors or numpy arrays of shape (..., 4) and return the
same type. Pairwise IoU is torchvision's formula, written here so that nothing imports torchvision.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _like(x):
    """Return an empty copy of x of the same type (tensor clone or numpy copy)."""
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xywh2xyxy(x):
    """Convert (..., 4) boxes from centre-size to corners."""
    y = _like(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xyxy2xywh(x):
    """Convert (..., 4) boxes from corners to centre-size."""
    y = _like(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywhn2xyxy(x, w: float = 640, h: float = 640, padw: float = 0, padh: float = 0):
    """Convert normalized centre-size boxes to pixel corners in a (h, w) image offset by (padw, padh)."""
    y = _like(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x, w: float = 640, h: float = 640, clip: bool = False, eps: float = 0.0):
    """Convert pixel corners to normalized centre-size boxes, optionally clipping to the image first."""
    if clip:
        x = clip_boxes(_like(x), (h - eps, w - eps))
    y = _like(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def xyn2xy(x, w: float = 640, h: float = 640, padw: float = 0, padh: float = 0):
    """Convert normalized (n, 2) points to pixels."""
    y = _like(x)
    y[..., 0] = w * x[..., 0] + padw
    y[..., 1] = h * x[..., 1] + padh
    return y


def clip_boxes(boxes, shape: tuple[int, int]):
    """Clip xyxy boxes in place to an image of shape (h, w); returns boxes."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes(img1_shape: tuple[int, int], boxes, img0_shape: tuple[int, int], ratio_pad=None):
    """Map xyxy boxes from a letterboxed image of shape img1 (h, w) back to the original img0 (h, w), in place.

    ratio_pad: ((gain_h, gain_w), (pad_w, pad_h)) as the dataloader records it; computed from the shapes if None.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = ((img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2)
    else:
        gain, pad = ratio_pad[0][0], ratio_pad[1]
    boxes[..., [0, 2]] -= pad[0]
    boxes[..., [1, 3]] -= pad[1]
    boxes[..., :4] /= gain
    return clip_boxes(boxes, img0_shape)


def box_params(raw: torch.Tensor) -> torch.Tensor:
    """YOLOv5's box outputs (..., 4) in grid cells and anchor multiples: (2 sig(xy) - 0.5, (2 sig(wh))^2)."""
    y = raw.sigmoid() * 2
    return torch.cat((y[..., :2] - 0.5, y[..., 2:] ** 2), -1)


def box_iou(box1: torch.Tensor, box2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes (N, 4) x (M, 4) -> (N, M): intersection / (area1 + area2 - intersection)."""
    area1 = (box1[:, 2] - box1[:, 0]) * (box1[:, 3] - box1[:, 1])
    area2 = (box2[:, 2] - box2[:, 0]) * (box2[:, 3] - box2[:, 1])
    wh = (torch.min(box1[:, None, 2:], box2[:, 2:]) - torch.max(box1[:, None, :2], box2[:, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2 - inter)


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, xywh: bool = True, CIoU: bool = False,  # noqa: N803
             eps: float = 1e-7) -> torch.Tensor:
    """Element-wise IoU (or CIoU) of matched boxes (..., 4) and (..., 4) -> (..., 1).

    CIoU (Zheng et al., "Distance-IoU Loss", AAAI 2020): IoU - rho^2 / c^2 - alpha * v, with rho the centre distance,
    c the diagonal of the smallest enclosing box, v = 4 / pi^2 * (atan(w2 / h2) - atan(w1 / h1))^2 and
    alpha = v / (v - IoU + 1 + eps), alpha treated as a constant (no gradient), as YOLOv5 does.
    """
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
        b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
        b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1.chunk(4, -1)
        b2_x1, b2_y1, b2_x2, b2_y2 = box2.chunk(4, -1)
        w1, h1 = b1_x2 - b1_x1, (b1_y2 - b1_y1).clamp(eps)
        w2, h2 = b2_x2 - b2_x1, (b2_y2 - b2_y1).clamp(eps)
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * \
            (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not CIoU:
        return iou
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)
