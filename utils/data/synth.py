"""The built-in offline dataset: procedurally drawn shapes in YOLO format.

``generate(root, seed)`` writes ``images/{train,val}/*.jpg`` and ``labels/{train,val}/*.txt`` (rows
``cls cx cy w h``, normalized) plus ``manifest.json``, deterministically from the seed. It is a small benchmark for
hard, rare and mutually exclusive examples:

- six classes that differ in form, not colour (``CLASS_NAMES``), drawn upright +-20 degrees; every object gets a
  random colour that contrasts with the background under it, so colour is never a shortcut;
- sizes from about 40 % of the image down to under 16 px (at 320 px), about 10 % of objects small;
- partial occlusion: objects are drawn in order, later over earlier; an object with less than 40 % of its pixels
  left visible is not labelled, the others are labelled with the box of their visible pixels;
- cluttered backgrounds: colour gradients, soft blobs, thin random lines and pixel noise;
- class imbalance: ``star`` is rare (about 10 % of objects), a few images hold no object at all (backgrounds).

The folder is built in a temporary sibling and renamed into place, and ``manifest.json`` records the parameters, so a
half-written or stale folder is regenerated on the next call. CLI: ``python -m utils.data.synth --out datasets/shapes``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from utils.errors import DatasetError
from utils.log import get_logger

CLASS_NAMES = ["circle", "square", "triangle", "star", "cross", "ring"]
CLASS_PROBS = [0.19, 0.19, 0.18, 0.10, 0.17, 0.17]  # star is the rare class
GENERATOR = "shapes"
VERSION = 4
MAX_TILT = np.radians(20)  # shapes are drawn upright +- this angle
MANIFEST = "manifest.json"
MIN_VISIBLE = 0.4  # objects with less of their area visible are not labelled
SMALL_FRACTION = 0.10  # share of objects drawn under 16 px (at 320 px)
EMPTY_FRACTION = 0.03  # share of images with no object (backgrounds)
SPLITS = ("train", "val")


def _polygon(cx: float, cy: float, radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Vertices (k, 1, 2) int32 of a polygon given per-vertex radii and angles (radians) around (cx, cy)."""
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    return np.round(pts).astype(np.int32).reshape(-1, 1, 2)


def _cross_polygon(cx: float, cy: float, r: float, theta: float, arm: float) -> np.ndarray:
    """Vertices of a plus sign of half-length r and half arm width arm*r, rotated by theta."""
    a = arm * r
    local = np.array([[a, -a], [r, -a], [r, a], [a, a], [a, r], [-a, r], [-a, a], [-r, a], [-r, -a], [-a, -a],
                      [-a, -r], [a, -r]], dtype=np.float64)
    c, s = np.cos(theta), np.sin(theta)
    pts = local @ np.array([[c, s], [-s, c]]) + (cx, cy)
    return np.round(pts).astype(np.int32).reshape(-1, 1, 2)


def shape_mask(cls: int, shape: tuple[int, int], cx: float, cy: float, r: float, theta: float,
               rng: np.random.Generator) -> np.ndarray:
    """Boolean (h, w) mask of class cls centred at (cx, cy) with outer radius r (pixels), tilted by theta from upright.

    Upright: square axis-aligned, triangle and star with a point up, cross as a plus sign.
    """
    m = np.zeros(shape, np.uint8)
    name = CLASS_NAMES[cls]
    if name == "circle":
        cv2.circle(m, (round(cx), round(cy)), max(round(r), 2), 1, -1)
    elif name == "ring":
        thick = max(2.0, r * rng.uniform(0.28, 0.42))
        cv2.circle(m, (round(cx), round(cy)), max(round(r), 3), 1, -1)
        cv2.circle(m, (round(cx), round(cy)), max(round(r - thick), 1), 0, -1)
    elif name == "square":
        ang = theta + np.pi / 4 + np.arange(4) * np.pi / 2
        cv2.fillPoly(m, [_polygon(cx, cy, np.full(4, r), ang)], 1)
    elif name == "triangle":
        ang = theta - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        cv2.fillPoly(m, [_polygon(cx, cy, np.full(3, r), ang)], 1)
    elif name == "star":
        ang = theta - np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.36, 0.44))
        cv2.fillPoly(m, [_polygon(cx, cy, radii, ang)], 1)
    elif name == "cross":
        cv2.fillPoly(m, [_cross_polygon(cx, cy, r, theta, rng.uniform(0.22, 0.32))], 1)
    return m.astype(bool)


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """A cluttered (s, s, 3) uint8 background: gradient, soft blobs and thin lines."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:s, 0:s] / s
    t = np.clip((np.cos(ang) * xx + np.sin(ang) * yy + 1) / 2, 0, 1)[..., None]
    im = c0 * (1 - t) + c1 * t
    low = cv2.resize(rng.uniform(-40, 40, (4, 4, 3)), (s, s), interpolation=cv2.INTER_CUBIC)  # soft blobs
    im = np.clip(im + low, 0, 255).astype(np.uint8)
    blobs = im.copy()
    for _ in range(rng.integers(2, 7)):
        centre = tuple(int(v) for v in rng.integers(0, s, 2))
        axes = tuple(int(v) for v in rng.integers(s // 16, s // 4, 2))
        cv2.ellipse(blobs, centre, axes, float(rng.uniform(0, 180)), 0, 360, rng.uniform(0, 255, 3).tolist(), -1)
    k = (s // 8) | 1
    im = cv2.addWeighted(im, 0.6, cv2.GaussianBlur(blobs, (k, k), 0), 0.4, 0)
    for _ in range(rng.integers(2, 8)):
        p1 = tuple(int(v) for v in rng.integers(0, s, 2))
        p2 = tuple(int(v) for v in rng.integers(0, s, 2))
        cv2.line(im, p1, p2, rng.uniform(0, 255, 3).tolist(), int(rng.integers(1, 3)), cv2.LINE_AA)
    return im


def _contrast_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour at least 150 (L1 over BGR) away from the mean colour under the object."""
    ref = under.reshape(-1, 3).mean(0)
    best, best_d = None, -1.0
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        d = float(np.abs(c - ref).sum())
        if d >= 150:
            return c
        best, best_d = (c, d) if d > best_d else (best, best_d)
    return best


def _sample_radius(rng: np.random.Generator, s: int) -> float:
    """Outer radius in pixels: small (diameter 9-16 px at 320) or diameter log-uniform 20 px to 40 % of the image."""
    k = s / 320
    if rng.random() < SMALL_FRACTION:
        return max(3.0, rng.uniform(4.5, 8.0) * k)
    return float(np.exp(rng.uniform(np.log(10.0), np.log(64.0)))) * k


def _place(rng: np.random.Generator, r: float, s: int, ids: np.ndarray, areas: list[int], cls: int,
           theta: float) -> tuple[np.ndarray, float, float]:
    """Pick a centre so the object mostly avoids hiding earlier ones (some placements may still occlude)."""
    careful = rng.random() < 0.9
    for _ in range(15):
        cx, cy = rng.uniform(r + 1, s - r - 1, 2)
        mask = shape_mask(cls, (s, s), cx, cy, r, theta, rng)
        if not careful or not areas:
            return mask, cx, cy
        covered = np.bincount(ids[mask & (ids >= 0)], minlength=len(areas))
        left = np.bincount(ids[ids >= 0], minlength=len(areas)) - covered
        if np.all((covered == 0) | (left >= 0.55 * np.asarray(areas))):
            return mask, cx, cy
    return mask, cx, cy


def draw_image(rng: np.random.Generator, s: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """Draw one (s, s, 3) BGR image; return it and labels (n, 5) float: cls, cx, cy, w, h normalized."""
    im = _background(rng, s)
    n = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(4, 12))
    ids = np.full((s, s), -1, np.int32)
    classes, areas = [], []
    for k in range(n):
        cls = int(rng.choice(len(CLASS_NAMES), p=CLASS_PROBS))
        r = _sample_radius(rng, s)
        mask, _, _ = _place(rng, r, s, ids, areas, cls, rng.uniform(-MAX_TILT, MAX_TILT))
        colour = _contrast_colour(rng, im[mask])
        shade = 1 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, s)[None, :, None]  # mild shading
        im[mask] = np.clip(colour * shade.repeat(s, 0)[mask], 0, 255).astype(np.uint8)
        ids[mask] = k
        classes.append(cls)
        areas.append(int(mask.sum()))
    im = np.clip(im + rng.normal(0, rng.uniform(3, 10), im.shape), 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        im = cv2.GaussianBlur(im, (3, 3), 0)
    return im, visible_labels(ids, classes, areas)


def visible_labels(ids: np.ndarray, classes: list[int], areas: list[int]) -> np.ndarray:
    """Labels (n, 5) cls, cx, cy, w, h (normalized) of objects with >= MIN_VISIBLE of their area left in ids.

    ids: (h, w) map of the top-most object index per pixel (-1 = background); areas: full pixel area per object.
    Each box encloses the object's visible pixels.
    """
    h, w = ids.shape
    rows = []
    for k, cls in enumerate(classes):
        ys, xs = np.nonzero(ids == k)
        if len(xs) == 0 or len(xs) < MIN_VISIBLE * areas[k]:
            continue  # mostly hidden: left unlabelled
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        rows.append([cls, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h])
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def _write_split(tmp: Path, split: str, n: int, seed: int, imgsz: int) -> np.ndarray:
    """Write n images and labels of one split into tmp; return per-class object counts."""
    (tmp / "images" / split).mkdir(parents=True)
    (tmp / "labels" / split).mkdir(parents=True)
    counts = np.zeros(len(CLASS_NAMES), np.int64)
    for i in tqdm(range(n), desc=f"shapes {split}", leave=False):
        rng = np.random.default_rng([seed, SPLITS.index(split), i])
        im, lb = draw_image(rng, imgsz)
        stem = f"{split}_{i:05d}"
        cv2.imwrite(str(tmp / "images" / split / f"{stem}.jpg"), im, [cv2.IMWRITE_JPEG_QUALITY, 92])
        text = "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in lb)
        (tmp / "labels" / split / f"{stem}.txt").write_text(text)
        counts += np.bincount(lb[:, 0].astype(int), minlength=len(CLASS_NAMES))
    return counts


def _params(seed: int, n_train: int, n_val: int, imgsz: int) -> dict:
    """The manifest fields that must match for a folder to be reused."""
    return {"generator": GENERATOR, "version": VERSION, "seed": seed, "n_train": n_train, "n_val": n_val,
            "imgsz": imgsz, "names": CLASS_NAMES}


def is_complete(root: Path, seed: int = 0, n_train: int = 400, n_val: int = 100, imgsz: int = 320) -> bool:
    """True if root holds a finished dataset generated with these parameters."""
    try:
        manifest = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if any(manifest.get(k) != v for k, v in _params(seed, n_train, n_val, imgsz).items()):
        return False
    for split, n in zip(SPLITS, (n_train, n_val)):
        for sub, suffix in (("images", ".jpg"), ("labels", ".txt")):
            if len(list((Path(root) / sub / split).glob(f"*{suffix}"))) != n:
                return False  # files removed or added since generation
    return True


def _remove_stale_tmp(root: Path) -> None:
    """Delete temporary folders left by generator processes that no longer run."""
    for tmp in root.parent.glob(f".{root.name}.tmp*"):
        try:
            os.kill(int(tmp.name.rsplit(".tmp", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass  # a live process of another user


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a folder that this module did not write (it could hold someone's data)."""
    if root.exists() and any(root.iterdir()) and not (root / MANIFEST).exists():
        raise DatasetError(f"{root}: exists and is not a generated '{GENERATOR}' dataset (no {MANIFEST}); "
                           f"choose another folder or remove it")


def generate(root: Path, seed: int = 0, n_train: int = 400, n_val: int = 100, imgsz: int = 320,
             force: bool = False) -> Path:
    """Generate the shapes dataset in root (reused if already complete with the same parameters); return root."""
    root = Path(root)
    if not force and is_complete(root, seed, n_train, n_val, imgsz):
        return root
    _check_replaceable(root)
    _remove_stale_tmp(root)
    tmp = root.parent / f".{root.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        counts = {split: _write_split(tmp, split, n, seed, imgsz).tolist()
                  for split, n in zip(SPLITS, (n_train, n_val))}
        manifest = {**_params(seed, n_train, n_val, imgsz), "objects": counts}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if is_complete(root, seed, n_train, n_val, imgsz) and not force:
            return root  # another process finished first
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the generator."""
    p = argparse.ArgumentParser(description="Generate the built-in shapes dataset (YOLO format).")
    p.add_argument("--out", type=Path, default=Path("datasets/shapes"), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--force", action="store_true", help="regenerate even if the folder is complete")
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> None:
    """Generate the dataset and print its class counts."""
    root = generate(opt.out, opt.seed, opt.n_train, opt.n_val, opt.imgsz, opt.force)
    manifest = json.loads((root / MANIFEST).read_text())
    for split, counts in manifest["objects"].items():
        pairs = ", ".join(f"{n} {c}" for n, c in zip(CLASS_NAMES, counts))
        get_logger().info(f"{root / 'images' / split}: {manifest['n_' + split]} images, {pairs}")


if __name__ == "__main__":
    try:
        main(parse_opt())
    except DatasetError as e:
        raise SystemExit(f"ERROR: {e}") from None
