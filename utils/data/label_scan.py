"""Label scanning for YOLO-format datasets: image and label discovery, per-row label checks, and the ``.cache`` files.

The rules (what is skipped with a warning, what is an error) are listed in ``utils/data/dataset.py``'s docstring.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import stat
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.errors import DatasetError, LabelError
from utils.log import get_logger
from utils.paths import write_atomic

IMG_FORMATS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm"}
CACHE_VERSION = 1
COORD_TOL = 0.01  # normalized coordinates may exceed [0, 1] by this much (then clipped)
MAX_WARNINGS = 30  # per-file warnings printed before summarising the rest
NUM_THREADS = min(8, max(1, os.cpu_count() or 1))


def img2label_paths(im_files: list[str]) -> list[str]:
    """Label path of each image: last /images/ -> /labels/, suffix -> .txt."""
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [str(Path(b.join(f.rsplit(a, 1))).with_suffix(".txt")) for f in im_files]


def text_lines(p: str | Path, kind: str = "text file") -> list[str]:
    """The lines of a UTF-8 text file (label file, image or source list), the byte-order mark that Windows editors
    put first dropped; DatasetError naming the file as not a ``kind`` when it is not UTF-8."""
    try:
        return Path(p).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{p}: not a {kind} (not UTF-8 at byte {e.start})") from None


def _visible_images(folder: Path) -> list[str]:
    """Image files under folder, recursively, leaving out hidden ones and hidden folders (``.ipynb_checkpoints``
    copies, macOS ``._x.jpg`` files), as a shell's ``**/*.*`` glob does."""
    return [str(f) for f in folder.rglob("*.*") if f.suffix[1:].lower() in IMG_FORMATS
            and not any(part.startswith(".") for part in f.relative_to(folder).parts)]


def list_image_files(path: str | Path | list, prefix: str = "") -> list[str]:
    """Sorted absolute image paths of a folder (recursive), a .txt list (entries relative to it), a file, or a list."""
    files: list[str] = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = Path(os.path.abspath(Path(p).expanduser()))
        if p.is_dir():
            files += _visible_images(p)
        elif p.is_file() and p.suffix == ".txt":
            for line in text_lines(p, "text list of image paths"):
                line = line.strip()
                if line:
                    entry = Path(line[2:] if line.startswith("./") else line)
                    files.append(os.path.abspath(entry if entry.is_absolute() else p.parent / entry))
        elif p.is_file():
            files.append(str(p))
        else:
            raise DatasetError(f"{prefix}{p}: does not exist (expected an image folder, a .txt list or an image)")
    return sorted(set(files))


def is_writeable(folder: Path) -> bool:
    """True if folder exists, is writable and carries a write permission bit (root ignores r-x modes)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def exif_size(im: Image.Image) -> tuple[int, int]:
    """(w, h) of a PIL image after its EXIF orientation is applied."""
    w, h = im.size
    try:
        rotated = im.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # malformed EXIF: take the stored size
        rotated = False
    return (h, w) if rotated else (w, h)


def verify_image(im_file: str) -> tuple[tuple[int, int], str]:
    """Return ((w, h), warning) for a readable image; ValueError with the reason otherwise."""
    suffix = Path(im_file).suffix[1:].lower()
    if suffix not in IMG_FORMATS:
        raise ValueError(f"unsupported image suffix '.{suffix}' (supported: {', '.join(sorted(IMG_FORMATS))})")
    try:
        with Image.open(im_file) as im:
            im.verify()
        with Image.open(im_file) as im:
            shape = exif_size(im)
    except FileNotFoundError:
        raise ValueError("image not found") from None
    except Exception as e:
        detail = type(e).__name__ if im_file in str(e) else f"{type(e).__name__}: {e}"
        raise ValueError(f"cannot read image ({detail})") from None
    if shape[0] < 10 or shape[1] < 10:
        raise ValueError(f"image size {shape[0]}x{shape[1]} is under 10 pixels")
    warning = ""
    if suffix in ("jpg", "jpeg"):
        with open(im_file, "rb") as f:
            f.seek(-2, 2)
            if f.read() != b"\xff\xd9":
                warning = ("truncated JPEG (no end marker): used as it is, the missing part decodes grey; the file is "
                           "left unchanged (re-save it to repair)")
    return shape, warning


def parse_row(values: list[str], lb_file: str, line: int) -> list[float]:
    """One label row -> [cls, cx, cy, w, h]; ValueError naming file and line when malformed or out of range."""
    where = f"{lb_file}:{line}"
    try:
        nums = [float(v) for v in values]
    except ValueError:
        raise ValueError(f"{where}: expected 5 numbers 'cls cx cy w h', got {' '.join(values)!r}") from None
    if len(nums) >= 7 and len(nums) % 2 == 1:  # polygon: cls x1 y1 x2 y2 ... -> enclosing box
        xy = np.array(nums[1:]).reshape(-1, 2)
        (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
        nums = [nums[0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    if len(nums) != 5:
        raise ValueError(f"{where}: expected 5 numbers 'cls cx cy w h', got {len(nums)}: {' '.join(values)!r}")
    if not math.isfinite(nums[0]) or nums[0] < 0 or nums[0] != int(nums[0]):
        raise ValueError(f"{where}: class id must be a non-negative integer, got {values[0]!r}")
    if any(v < -COORD_TOL or v > 1 + COORD_TOL or not math.isfinite(v) for v in nums[1:]):
        raise ValueError(f"{where}: coordinates outside [0, 1] (normalized cx cy w h expected): {nums[1:]}")
    if nums[3] <= 0 or nums[4] <= 0:
        raise ValueError(f"{where}: box has zero width or height: {nums[1:]}")
    return [nums[0]] + [min(max(v, 0.0), 1.0) for v in nums[1:]]


def read_labels(lb_file: str) -> tuple[np.ndarray, int]:
    """Parse a label file into unique rows (k, 5) float32 and the number of duplicates dropped."""
    lines = text_lines(lb_file, "label file")
    rows = [parse_row(line.split(), lb_file, i) for i, line in enumerate(lines, 1) if line.strip()]
    lb = np.array(rows, dtype=np.float32).reshape(-1, 5)
    _, first = np.unique(lb, axis=0, return_index=True)
    return lb[np.sort(first)], len(lb) - len(first)


def verify_pair(args: tuple[str, str]) -> dict[str, Any]:
    """Check one image and its label file; returns a dict with status ok|background|corrupt, labels, shape, msg."""
    im_file, lb_file = args
    out = {"im_file": im_file, "labels": None, "shape": None, "ndup": 0, "msg": ""}
    try:
        out["shape"], out["msg"] = verify_image(im_file)
        if os.path.isfile(lb_file):
            out["labels"], out["ndup"] = read_labels(lb_file)
        else:
            out["labels"] = np.zeros((0, 5), np.float32)
    except (ValueError, OSError, DatasetError) as e:  # DatasetError: a label file that is not UTF-8 text
        reason = str(e) if str(e).startswith(lb_file) else f"{im_file}: {e}"
        return {**out, "status": "corrupt", "labels": None, "msg": f"{reason} (image skipped)"}
    notes = [f"{im_file}: {out['msg']}"] if out["msg"] else []
    if out["ndup"]:
        notes.append(f"{lb_file}: {out['ndup']} duplicate rows dropped")
    out["msg"] = "; ".join(notes)
    out["status"] = "ok" if len(out["labels"]) else "background"
    return out


def files_hash(files: list[str]) -> str:
    """Hash of paths, sizes and modification times (missing files included as such)."""
    h = hashlib.sha256()
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}|missing\n".encode())
    return h.hexdigest()


def load_cache(cache_path: Path, digest: str) -> dict | None:
    """The scan stored at cache_path if its version and hash match, else None."""
    try:
        with open(cache_path, "rb") as f:
            cache = pickle.load(f)
    except Exception:
        return None
    ok = isinstance(cache, dict) and cache.get("version") == CACHE_VERSION and cache.get("hash") == digest
    return cache if ok else None


def save_cache(cache_path: Path, cache: dict, prefix: str = "") -> None:
    """Write the scan atomically beside the labels; warn and skip if the folder is read-only."""
    if not is_writeable(cache_path.parent):
        why = "is not writeable" if cache_path.parent.exists() else "does not exist (no label files)"
        get_logger().warning(f"{prefix}WARNING: cache not saved, {cache_path.parent} {why}")
        return
    write_atomic(cache_path, pickle.dumps(cache))
    get_logger().info(f"{prefix}New cache created: {cache_path}")


def cache_path_for(source: str | Path | list | None, label_files: list[str]) -> Path:
    """Where a split's scan is cached: beside a .txt image list (train.txt -> train.cache), so two lists over one
    labels folder keep their own; else labels/<split>.cache beside the split's label folder."""
    if isinstance(source, (str, Path)) and Path(source).suffix == ".txt":
        return Path(source).with_suffix(".cache")
    return Path(label_files[0]).parent.with_suffix(".cache")


def scan_dataset(im_files: list[str], label_files: list[str], prefix: str = "",
                 source: str | Path | list | None = None) -> tuple[dict, Path]:
    """Verify every image/label pair (or reuse the .cache); log warnings and the summary; return (cache, path)."""
    cache_path = cache_path_for(source, label_files)
    digest = files_hash(im_files + label_files)
    cache = load_cache(cache_path, digest)
    if cache is None:
        entries, msgs = {}, []
        stats = {"images": 0, "backgrounds": 0, "corrupt": 0, "duplicates": 0}
        desc = f"{prefix}Scanning {cache_path.parent / cache_path.stem}..."
        with ThreadPool(NUM_THREADS) as pool:
            bar = tqdm(pool.imap(verify_pair, zip(im_files, label_files)), desc=desc, total=len(im_files))
            for r in bar:
                stats["corrupt" if r["status"] == "corrupt" else "images"] += 1
                stats["backgrounds"] += r["status"] == "background"
                stats["duplicates"] += r["ndup"]
                if r["status"] != "corrupt":
                    entries[r["im_file"]] = (r["labels"], r["shape"])
                if r["msg"]:
                    msgs.append(r["msg"])
                bar.desc = f"{desc} " + ", ".join(f"{v} {k}" for k, v in stats.items())
        cache = {"version": CACHE_VERSION, "hash": digest, "entries": entries, "msgs": msgs, "stats": stats}
        save_cache(cache_path, cache, prefix)
    else:
        get_logger().info(f"{prefix}Using cache {cache_path}")
    log = get_logger()
    for m in cache["msgs"][:MAX_WARNINGS]:
        log.warning(f"{prefix}WARNING: {m}")
    if len(cache["msgs"]) > MAX_WARNINGS:
        log.warning(f"{prefix}WARNING: ... and {len(cache['msgs']) - MAX_WARNINGS} more files with problems")
    log.info(prefix + ", ".join(f"{v} {k}" for k, v in cache["stats"].items()))
    stats = cache["stats"]
    if stats["images"] and stats["backgrounds"] == stats["images"]:
        log.warning(f"{prefix}WARNING: no labels found, every image is a background: the label of {im_files[0]} "
                    f"is looked for at {label_files[0]} (the last 'images' folder in the path becomes 'labels')")
    return cache, cache_path


def check_class_ids(labels: list[np.ndarray], label_files: list[str], nc: int) -> None:
    """LabelError naming file, line, class id and nc for the first label with a class id >= nc."""
    for lb, lb_file in zip(labels, label_files):
        if len(lb) and lb[:, 0].max() >= nc:
            for i, line in enumerate(text_lines(lb_file, "label file"), 1):
                if line.split() and float(line.split()[0]) >= nc:
                    raise LabelError(f"{lb_file}:{i}: class id {int(float(line.split()[0]))} >= nc {nc} "
                                     f"(valid ids 0..{nc - 1}); fix the label or 'names'/'nc' in the data YAML")
            raise LabelError(f"{lb_file}: class id {int(lb[:, 0].max())} >= nc {nc} (valid ids 0..{nc - 1})")
