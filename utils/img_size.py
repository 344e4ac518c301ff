"""Image sizes: --imgsz rounded to what a model with a given largest stride can take."""

from __future__ import annotations

import math
from typing import Sequence

from utils.log import get_logger


def check_img_size(imgsz: int | Sequence[int], stride: int, floor: int = 0) -> int | list[int]:
    """imgsz rounded up to a multiple of stride (and at least floor), with a warning when it changes.

    An int gives an int (a square size, as train.py and val.py take); a sequence gives [h, w] (detect.py's --imgsz,
    where one value means a square).
    """
    def up(size: int) -> int:
        return max(math.ceil(size / stride) * stride, floor)

    if not isinstance(imgsz, int):
        imgsz = list(imgsz) * 2 if len(imgsz) == 1 else list(imgsz)
    new = up(imgsz) if isinstance(imgsz, int) else [up(s) for s in imgsz]
    if new != imgsz:
        get_logger().warning(f"--imgsz {imgsz} must be a multiple of the max stride {stride}, using {new}")
    return new
