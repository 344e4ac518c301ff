"""Image augmentation for detection: letterbox, mosaic, random perspective, HSV, flips, mixup.

Images are HWC uint8 BGR numpy arrays (as cv2 reads them). Box formats are stated per function: ``xyxy`` pixels for
the geometric steps, normalized ``xywh`` (YOLO label rows ``cls, cx, cy, w, h``) for the flips.

Driven by the YOLOv5 hyp keys (defaults in ``DEFAULT_HYP``, the hyp.scratch-low values): hsv_h, hsv_s, hsv_v,
degrees, translate, scale, shear, perspective, flipud, fliplr, mosaic, mixup. ``copy_paste`` is accepted and
ignored: it pastes segmentation masks and our labels are boxes only.

Randomness comes from an optional ``rng`` (``np.random.Generator``); without one, a generator is seeded from numpy's
global state, which the dataloader seeds per worker, so runs are reproducible either way.
"""

from __future__ import annotations

import cv2
import numpy as np

from utils.boxes import xywhn2xyxy

DEFAULT_HYP = {
    "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5, "shear": 0.0,
    "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0, "copy_paste": 0.0,
}
FILL = (114, 114, 114)


def get_rng(rng: np.random.Generator | None = None) -> np.random.Generator:
    """Return rng, or a new generator seeded from numpy's global random state."""
    return rng if rng is not None else np.random.default_rng(np.random.randint(0, 2**31 - 1))


def letterbox(im: np.ndarray, new_shape: int | tuple[int, int] = 640, color: tuple[int, int, int] = FILL,
              auto: bool = True, scale_fill: bool = False, scaleup: bool = True, stride: int = 32,
              ) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize im keeping its aspect ratio and pad it to new_shape (h, w).

    auto: pad only to the next multiple of stride (minimum rectangle); scale_fill: stretch to new_shape, no padding;
    scaleup: allow enlarging (False for validation). Returns (image, (rw, rh) scale ratios, (dw, dh) padding added
    on the left and on the top, each half of the total). A box maps as x' = x * rw + dw, y' = y * rh + dh.
    """
    h, w = im.shape[:2]
    nh, nw = (int(new_shape), int(new_shape)) if np.isscalar(new_shape) else (int(new_shape[0]), int(new_shape[1]))
    r = min(nh / h, nw / w)
    if not scaleup:
        r = min(r, 1.0)
    ratio = (r, r)
    uw, uh = int(round(w * r)), int(round(h * r))
    dw, dh = nw - uw, nh - uh
    if auto:
        dw, dh = dw % stride, dh % stride
    elif scale_fill:
        dw, dh = 0, 0
        uw, uh = nw, nh
        ratio = (nw / w, nh / h)
    dw, dh = dw / 2, dh / 2
    if (w, h) != (uw, uh):
        im = cv2.resize(im, (uw, uh), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, ratio, (dw, dh)


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Keep mask for boxes after augmentation: box1 (4, n) before (scaled), box2 (4, n) after, both xyxy.

    A box survives if it is wider and taller than wh_thr pixels, keeps more than area_thr of its (scaled) area and
    its aspect ratio stays below ar_thr.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def perspective_matrix(shape: tuple[int, int], out_shape: tuple[int, int], degrees: float, translate: float,
                       scale: float, shear: float, perspective: float, rng: np.random.Generator) -> tuple:
    """Random 3x3 warp from an image of shape (h, w) to out_shape (h, w); returns (M, scale factor)."""
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -shape[1] / 2, -shape[0] / 2
    persp = np.eye(3)
    persp[2, 0], persp[2, 1] = rng.uniform(-perspective, perspective, 2)
    rot = np.eye(3)
    s = rng.uniform(1 - scale, 1 + scale)
    rot[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=rng.uniform(-degrees, degrees), scale=s)
    sh = np.eye(3)
    sh[0, 1], sh[1, 0] = np.tan(np.radians(rng.uniform(-shear, shear, 2)))
    move = np.eye(3)
    move[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_shape[1]
    move[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_shape[0]
    return move @ sh @ rot @ persp @ centre, s


def warp_boxes(boxes: np.ndarray, m: np.ndarray, out_shape: tuple[int, int], perspective: bool) -> np.ndarray:
    """Transform xyxy boxes (n, 4) by m: enclosing box of the 4 warped corners, clipped to out_shape (h, w)."""
    n = len(boxes)
    corners = np.ones((n * 4, 3))
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)
    corners = corners @ m.T
    xy = corners[:, :2] / corners[:, 2:3] if perspective else corners[:, :2]
    xy = xy.reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    out = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, out_shape[1])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, out_shape[0])
    return out


def random_perspective(im: np.ndarray, targets: np.ndarray | None = None, degrees: float = 10,
                       translate: float = 0.1, scale: float = 0.1, shear: float = 10, perspective: float = 0.0,
                       border: tuple[int, int] = (0, 0), rng: np.random.Generator | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation, scale, shear, translation and perspective of im and its boxes.

    targets: (n, 5) cls, x1, y1, x2, y2 in pixels. border (bh, bw) is added to each side of the output, so the
    output is (h + 2 bh, w + 2 bw); the mosaic passes (-s/2, -s/2) to crop its 2s canvas back to s. Boxes are
    warped, clipped and filtered by ``box_candidates``; returns (image, kept targets (k, 5)).
    """
    rng = get_rng(rng)
    out_shape = (im.shape[0] + 2 * border[0], im.shape[1] + 2 * border[1])
    m, s = perspective_matrix(im.shape[:2], out_shape, degrees, translate, scale, shear, perspective, rng)
    if border[0] != 0 or border[1] != 0 or (m != np.eye(3)).any():
        dsize = (out_shape[1], out_shape[0])
        if perspective:
            im = cv2.warpPerspective(im, m, dsize=dsize, borderValue=FILL)
        else:
            im = cv2.warpAffine(im, m[:2], dsize=dsize, borderValue=FILL)
    targets = np.zeros((0, 5)) if targets is None else np.asarray(targets, dtype=np.float64).reshape(-1, 5)
    if len(targets):
        new = warp_boxes(targets[:, 1:5], m, out_shape, bool(perspective))
        keep = box_candidates(targets[:, 1:5].T * s, new.T)
        targets = targets[keep]
        targets[:, 1:5] = new[keep]
    return im, targets


def augment_hsv(im: np.ndarray, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5,
                rng: np.random.Generator | None = None) -> None:
    """Randomly scale hue, saturation and value of a BGR uint8 image in place, through lookup tables."""
    if not (hgain or sgain or vgain):
        return
    r = get_rng(rng).uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=im)


def mixup(im: np.ndarray, labels: np.ndarray, im2: np.ndarray, labels2: np.ndarray,
          rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a Beta(32, 32) ratio and concatenate their labels (any row format)."""
    r = get_rng(rng).beta(32.0, 32.0)
    im = (im * r + im2 * (1 - r)).astype(np.uint8)
    return im, np.concatenate((labels, labels2), 0)


def fliplr_labels(labels: np.ndarray) -> np.ndarray:
    """Mirror normalized cls, cx, cy, w, h rows (n, 5) left-right, in place; returns labels."""
    labels[:, 1] = 1 - labels[:, 1]
    return labels


def flipud_labels(labels: np.ndarray) -> np.ndarray:
    """Mirror normalized cls, cx, cy, w, h rows (n, 5) top-bottom, in place; returns labels."""
    labels[:, 2] = 1 - labels[:, 2]
    return labels


def random_flip(im: np.ndarray, labels: np.ndarray, flipud: float = 0.0, fliplr: float = 0.5,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flip im and its normalized xywh labels (n, 5) up-down with probability flipud, left-right with fliplr."""
    rng = get_rng(rng)
    if rng.random() < flipud:
        im = np.flipud(im)
        flipud_labels(labels)
    if rng.random() < fliplr:
        im = np.fliplr(im)
        fliplr_labels(labels)
    return im, labels


def mosaic_center(s: int, rng: np.random.Generator | None = None) -> tuple[int, int]:
    """Random mosaic centre (xc, yc) in [s/2, 3s/2) on a 2s x 2s canvas."""
    xc, yc = get_rng(rng).uniform(s / 2, 3 * s / 2, 2)
    return int(xc), int(yc)


def mosaic_tile(k: int, xc: int, yc: int, h: int, w: int, s: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Canvas region (x1, y1, x2, y2) and matching image region for tile k of an (h, w) image.

    Tiles meet at the centre: k=0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right, cropped to the 2s canvas.
    """
    if k == 0:
        a = (max(xc - w, 0), max(yc - h, 0), xc, yc)
        b = (w - (a[2] - a[0]), h - (a[3] - a[1]), w, h)
    elif k == 1:
        a = (xc, max(yc - h, 0), min(xc + w, 2 * s), yc)
        b = (0, h - (a[3] - a[1]), a[2] - a[0], h)
    elif k == 2:
        a = (max(xc - w, 0), yc, xc, min(yc + h, 2 * s))
        b = (w - (a[2] - a[0]), 0, w, a[3] - a[1])
    else:
        a = (xc, yc, min(xc + w, 2 * s), min(yc + h, 2 * s))
        b = (0, 0, a[2] - a[0], a[3] - a[1])
    return a, b


def build_mosaic(images: list[np.ndarray], labels: list[np.ndarray], s: int,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Place 4 images (long side <= s) around a random centre on a 2s x 2s canvas filled with 114.

    labels: per image (k, 5) normalized cls, cx, cy, w, h. Returns (canvas, targets (n, 5) cls, x1, y1, x2, y2 in
    canvas pixels, clipped to the canvas). Follow with ``random_perspective(..., border=(-s // 2, -s // 2))``.
    """
    xc, yc = mosaic_center(s, rng)
    canvas = np.full((2 * s, 2 * s, images[0].shape[2]), FILL[0], dtype=np.uint8)
    out = []
    for k, (im, lb) in enumerate(zip(images, labels)):
        h, w = im.shape[:2]
        (x1a, y1a, x2a, y2a), (x1b, y1b, x2b, y2b) = mosaic_tile(k, xc, yc, h, w, s)
        canvas[y1a:y2a, x1a:x2a] = im[y1b:y2b, x1b:x2b]
        lb = np.asarray(lb, dtype=np.float64).reshape(-1, 5).copy()
        if len(lb):
            lb[:, 1:] = xywhn2xyxy(lb[:, 1:], w, h, padw=x1a - x1b, padh=y1a - y1b)
        out.append(lb)
    targets = np.concatenate(out, 0)
    targets[:, 1:] = targets[:, 1:].clip(0, 2 * s)
    return canvas, targets


def mosaic_border(s: int) -> tuple[int, int]:
    """The border that random_perspective needs to crop a 2s mosaic canvas back to s x s."""
    return -s // 2, -s // 2
