"""Test-time augmentation (YOLOv5's ``--augment``): one batch seen at three scales, one of them mirrored.

The image is run at scales 1, 0.83 and 0.67 of its size, the second one flipped left-right (YOLOv5's choice).
Each pass's boxes are mapped back to the original pixels (divided by the scale, x mirrored back where flipped),
and the passes are concatenated before NMS, which merges them. Two edge cases are cut, as YOLOv5 does: at full
scale the coarsest level's predictions (the largest objects, which the smaller passes see better) and at the
smallest scale the finest level's (the smallest objects, which shrink below what it can resolve).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

SCALES = (1.0, 0.83, 0.67)
FLIPS = (None, 3, None)  # the tensor dimension to flip per pass: 3 = width (left-right)
PAD_VALUE = 0.447  # grey padding, the value YOLOv5 pads scaled images with


def scale_image(im: torch.Tensor, ratio: float, stride: int) -> torch.Tensor:
    """im (bs, 3, h, w) resized by ratio (bilinear), padded right and bottom up to a multiple of stride."""
    if ratio == 1.0:
        return im
    h, w = im.shape[-2:]
    size = (int(h * ratio), int(w * ratio))
    x = F.interpolate(im, size=size, mode="bilinear", align_corners=False)
    ph, pw = (math.ceil(d * ratio / stride) * stride for d in (h, w))
    return F.pad(x, [0, pw - size[1], 0, ph - size[0]], value=PAD_VALUE)


def level_sizes(hw: Sequence[int], strides: Sequence[float], na: int) -> list[int]:
    """Predictions per detection level for an input of size hw: na * (h / stride) * (w / stride), finest first."""
    return [na * math.ceil(hw[0] / s) * math.ceil(hw[1] / s) for s in strides]


def augmented_inference(predict: Callable[[torch.Tensor], torch.Tensor], im: torch.Tensor,
                        strides: Sequence[float], na: int) -> torch.Tensor:
    """Decoded predictions (bs, N, 5 + nc) of all TTA passes in original pixels; predict maps images to (bs, n, no)."""
    h, w = im.shape[-2:]
    strides = [float(s) for s in strides]
    outs = []
    for k, (ratio, flip) in enumerate(zip(SCALES, FLIPS)):
        x = scale_image(im.flip(flip) if flip else im, ratio, int(max(strides)))
        y = predict(x).clone()
        sizes = level_sizes(x.shape[-2:], strides, na)
        if y.shape[1] != sum(sizes):
            raise ValueError(f"TTA: {y.shape[1]} predictions for input {tuple(x.shape[-2:])}, expected {sum(sizes)} "
                             f"from strides {strides} and {na} anchors per level")
        y[..., :4] /= ratio
        if flip == 3:
            y[..., 0] = w - y[..., 0]
        elif flip == 2:
            y[..., 1] = h - y[..., 1]
        if k == 0:
            y = y[:, : y.shape[1] - sizes[-1]]  # full scale: no coarsest-level (largest) boxes
        elif k == len(SCALES) - 1:
            y = y[:, sizes[0]:]  # smallest scale: no finest-level (smallest) boxes
        outs.append(y)
    return torch.cat(outs, 1)
