"""AutoAnchor: check how well the model's anchors fit a dataset's boxes, and re-fit them when they do not.

The fit of an anchor (aw, ah) to a box (w, h) is ``min(r_w, 1 / r_w, r_h, 1 / r_h)`` with ``r = box / anchor``; a box
is *matchable* when its best anchor's fit exceeds ``1 / anchor_t`` (the loss's assignment rule). Best possible recall
(BPR) is the share of matchable boxes. Below 0.98, new anchors come from k-means on the box sizes (whitened by their
standard deviation), refined by a genetic search that maximises the mean fit of matchable boxes. Anchors are kept in
``Detect.anchors`` in grid units (pixels / stride), smallest areas on the finest level.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from utils.log import colorstr, get_logger
from utils.torch_utils import de_parallel

PREFIX = colorstr("AutoAnchor: ")
BPR_OK = 0.98  # re-fit anchors below this best possible recall
MIN_BOX_PX = 2.0  # boxes smaller than this (pixels at imgsz) are ignored for k-means


def anchor_fit(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Fit (n, k) of n boxes (n, 2) to k anchors (k, 2), both w, h in pixels: min over w, h of min(r, 1 / r)."""
    r = wh[:, None, :] / anchors[None, :, :]
    return np.minimum(r, 1 / r).min(2)


def anchor_stats(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> tuple[float, float]:
    """(best possible recall, mean anchors above threshold per box) for boxes and anchors (pixels)."""
    x = anchor_fit(np.asarray(wh, dtype=float), np.asarray(anchors, dtype=float))
    bpr = float((x.max(1) > 1 / thr).mean())
    aat = float((x > 1 / thr).sum(1).mean())
    return bpr, aat


def anchor_fitness(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> float:
    """Mean best fit over boxes, counting boxes that no anchor can match as 0 (the quantity evolution maximises)."""
    best = anchor_fit(wh, anchors).max(1)
    return float((best * (best > 1 / thr)).mean())


def label_wh(shapes: np.ndarray, labels: list[np.ndarray], imgsz: int, rng: np.random.Generator | None = None,
             jitter: float = 0.1) -> np.ndarray:
    """Box sizes (n, 2) in pixels with each image resized to long side imgsz, randomly scaled by 1 +/- jitter.

    shapes: (m, 2) image w, h; labels: m arrays (k, 5) of cls, cx, cy, w, h normalized.
    """
    shapes = np.asarray(shapes, dtype=float).reshape(-1, 2)
    sizes = imgsz * shapes / shapes.max(1, keepdims=True)
    if rng is not None and jitter:
        sizes = sizes * rng.uniform(1 - jitter, 1 + jitter, size=(len(sizes), 1))
    rows = [np.asarray(lb, dtype=float).reshape(-1, 5)[:, 3:5] * s for s, lb in zip(sizes, labels)]
    return np.concatenate(rows, 0) if rows else np.zeros((0, 2))


def _numpy_kmeans(x: np.ndarray, centres: np.ndarray, iters: int = 30) -> np.ndarray:
    """Lloyd's k-means from the given initial centres (k, d); empty clusters keep their previous centre."""
    c = centres.copy()
    for _ in range(iters):
        assign = ((x[:, None, :] - c[None]) ** 2).sum(2).argmin(1)
        new = np.stack([x[assign == j].mean(0) if np.any(assign == j) else c[j] for j in range(len(c))])
        if np.allclose(new, c):
            break
        c = new
    return c


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 30) -> np.ndarray:
    """k centres of points x (n, d): scipy.cluster.vq.kmeans when scipy is installed, else a numpy k-means."""
    init = x[rng.choice(len(x), size=k, replace=len(x) < k)]
    try:
        from scipy.cluster.vq import kmeans as scipy_kmeans
    except ImportError:
        return _numpy_kmeans(x, init, iters)
    c, _ = scipy_kmeans(x, init, iter=iters)
    return c if len(c) == k else _numpy_kmeans(x, init, iters)


def evolve_anchors(wh: np.ndarray, anchors: np.ndarray, thr: float, gen: int, rng: np.random.Generator,
                   mutation_p: float = 0.9, sigma: float = 0.1) -> np.ndarray:
    """Genetic refinement: multiply anchors by random factors, keep a mutation when anchor_fitness improves."""
    best, f = anchors.copy(), anchor_fitness(wh, anchors, thr)
    for _ in range(gen):
        v = np.ones_like(best)
        while np.all(v == 1):  # at least one gene must change
            mask = rng.random(best.shape) < mutation_p
            v = (mask * rng.random() * rng.standard_normal(best.shape) * sigma + 1).clip(0.3, 3.0)
        cand = (best * v).clip(min=MIN_BOX_PX)
        fc = anchor_fitness(wh, cand, thr)
        if fc > f:
            best, f = cand, fc
    return best


def kmean_anchors(wh: np.ndarray, n: int = 9, thr: float = 4.0, gen: int = 1000, seed: int = 0) -> np.ndarray:
    """n anchors (n, 2) in pixels fitted to box sizes wh (pixels), sorted by area (smallest first)."""
    rng = np.random.default_rng(seed)
    wh = np.asarray(wh, dtype=float)
    small = (wh < 3.0).any(1).sum()
    if small:
        get_logger().warning(f"{PREFIX}{small} of {len(wh)} labels are under 3 pixels in size")
    wh = wh[(wh >= MIN_BOX_PX).all(1)]
    if len(wh) < n:
        raise ValueError(f"k-means needs at least {n} boxes of {MIN_BOX_PX:g}+ pixels, got {len(wh)}")
    s = wh.std(0)
    s[s == 0] = 1.0
    k = kmeans(wh / s, n, rng) * s
    k = evolve_anchors(wh, k, thr, gen, rng)
    return k[np.argsort(k.prod(1))]


def check_anchors(dataset, model: nn.Module, thr: float = 4.0, imgsz: int = 640, seed: int = 0) -> bool:
    """Log the BPR of the model's anchors on dataset (``.shapes`` w, h and ``.labels``); re-fit them in place below
    BPR 0.98 when the new anchors score higher. Returns True if the anchors were replaced."""
    log, m = get_logger(), de_parallel(model).model[-1]
    wh = label_wh(dataset.shapes, dataset.labels, imgsz, np.random.default_rng(seed))
    stride = m.stride.to(m.anchors.device).view(-1, 1, 1)
    current = (m.anchors * stride).view(-1, 2).cpu().numpy()
    if not len(wh):
        log.warning(f"{PREFIX}no labels, anchors left unchanged")
        return False
    bpr, aat = anchor_stats(wh, current, thr)
    msg = f"{PREFIX}{aat:.2f} anchors/target, {bpr:.3f} best possible recall (BPR). "
    if bpr > BPR_OK:
        log.info(msg + "Current anchors fit the dataset well")
        return False
    log.info(msg + "Anchors fit poorly, fitting new ones with k-means + evolution...")
    try:
        new = kmean_anchors(wh, n=len(current), thr=thr, gen=1000, seed=seed)
    except ValueError as e:
        log.warning(f"{PREFIX}{e}; anchors left unchanged")
        return False
    new_bpr, _ = anchor_stats(wh, new, thr)
    if new_bpr <= bpr:
        log.info(f"{PREFIX}new anchors (BPR {new_bpr:.3f}) are no better, kept the original ones")
        return False
    grid = torch.tensor(new, dtype=m.anchors.dtype, device=m.anchors.device).view_as(m.anchors) / stride
    m.anchors[:] = grid
    log.info(f"{PREFIX}new anchors, BPR {new_bpr:.3f}: {np.round(new).astype(int).tolist()}")
    return True
