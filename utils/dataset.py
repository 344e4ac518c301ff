"""YOLO-format detection dataset: image/label discovery, label checks, ``.cache`` files and ``create_dataloader``.

Layout: ``.../images/<split>/x.jpg`` pairs with ``.../labels/<split>/x.txt`` (the last ``/images/`` replaced by
``/labels/``); each label row is ``cls cx cy w h`` normalized to [0, 1] (a polygon row ``cls x1 y1 x2 y2 ...`` is
reduced to its enclosing box). An image without a label file, or with an empty one, is a background.

Label checks (each problem is reported once per file, naming the file and, for rows, the line):

- unreadable or corrupt image, unsupported suffix, image under 10 px: the image is skipped with a warning;
- a row that is not 5 numbers, a negative or fractional class id, coordinates outside [0, 1] beyond ``COORD_TOL``,
  a box without width or height: the image is skipped with a warning (as YOLOv5 does; keeping the image without
  that object would teach the model that it is background);
- a class id >= nc (when nc is known): ``LabelError`` naming the file, line, class id and nc, since it means the
  data YAML and the labels disagree and no training on them is meaningful;
- duplicate rows: dropped with a warning.

Scan results are stored in ``labels/<split>.cache`` (beside the list for a ``.txt`` image list) and reused while the
image and label files (list, sizes and modification times) are unchanged. Read-only folders are never written to
(the cache is then skipped with a warning).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import random
import stat
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, distributed
from tqdm import tqdm

from utils.augment import (
    DEFAULT_HYP,
    augment_hsv,
    build_mosaic,
    get_rng,
    letterbox,
    mixup,
    mosaic_border,
    random_flip,
    random_perspective,
)
from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.errors import ConfigError, DatasetError, LabelError
from utils.log import get_logger
from utils.sampling import weighted_sampler

IMG_FORMATS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm"}
CACHE_VERSION = 1
COORD_TOL = 0.01  # normalized coordinates may exceed [0, 1] by this much (then clipped)
MAX_WARNINGS = 30  # per-file warnings printed before summarising the rest
NUM_THREADS = min(8, max(1, os.cpu_count() or 1))


def img2label_paths(im_files: list[str]) -> list[str]:
    """Label path of each image: last /images/ -> /labels/, suffix -> .txt."""
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [str(Path(b.join(f.rsplit(a, 1))).with_suffix(".txt")) for f in im_files]


def list_image_files(path: str | Path | list, prefix: str = "") -> list[str]:
    """Sorted absolute image paths of a folder (recursive), a .txt list (entries relative to it), a file, or a list."""
    files: list[str] = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = Path(os.path.abspath(Path(p).expanduser()))
        if p.is_dir():
            files += [str(f) for f in p.rglob("*.*") if f.suffix[1:].lower() in IMG_FORMATS]
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
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
    rows = [parse_row(line.split(), lb_file, i) for i, line in enumerate(Path(lb_file).read_text().splitlines(), 1)
            if line.strip()]
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
    except (ValueError, OSError) as e:
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
    tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(cache, f)
    os.replace(tmp, cache_path)
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
    return cache, cache_path


def check_class_ids(labels: list[np.ndarray], label_files: list[str], nc: int) -> None:
    """LabelError naming file, line, class id and nc for the first label with a class id >= nc."""
    for lb, lb_file in zip(labels, label_files):
        if len(lb) and lb[:, 0].max() >= nc:
            for i, line in enumerate(Path(lb_file).read_text().splitlines(), 1):
                if line.split() and float(line.split()[0]) >= nc:
                    raise LabelError(f"{lb_file}:{i}: class id {int(float(line.split()[0]))} >= nc {nc} "
                                     f"(valid ids 0..{nc - 1}); fix the label or 'names'/'nc' in the data YAML")
            raise LabelError(f"{lb_file}: class id {int(lb[:, 0].max())} >= nc {nc} (valid ids 0..{nc - 1})")


def rect_batch_shapes(shapes: np.ndarray, batch_size: int, img_size: int, stride: int, pad: float) -> np.ndarray:
    """(nb, 2) letterbox shapes (h, w), multiples of stride, for batches of images sorted by aspect ratio h/w."""
    ar = shapes[:, 1] / shapes[:, 0]
    bi = np.arange(len(shapes)) // batch_size
    out = np.ones((bi[-1] + 1, 2))
    for i in range(len(out)):
        lo, hi = ar[bi == i].min(), ar[bi == i].max()
        out[i] = [hi, 1] if hi < 1 else [1, 1 / lo] if lo > 1 else [1, 1]
    return np.ceil(out * img_size / stride + pad).astype(int) * stride


class LoadImagesAndLabels(Dataset):
    """Images and YOLO labels of one split, with letterbox/rect batches, caching and train-time augmentation.

    Attributes used elsewhere: ``im_files``, ``label_files``, ``labels`` (list of (k, 5) float32 cls, cx, cy, w, h
    normalized), ``shapes`` ((n, 2) original (w, h)), ``batch`` (batch index per image), ``batch_shapes`` ((nb, 2)
    (h, w) when rect, else None), ``n``, ``indices``. Items are (image uint8 (3, h, w) RGB, targets (k, 6)
    [0, cls, cx, cy, w, h], path, shapes) with shapes ((h0, w0), ((h / h0, w / w0), (padw, padh))) or None (mosaic).
    """

    def __init__(self, path: str | Path | list, img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: dict | None = None, rect: bool = False, cache: str | bool | None = None,
                 single_cls: bool = False, stride: int = 32, pad: float = 0.0, prefix: str = "",
                 nc: int | None = None, names: dict | list | None = None):
        self.img_size, self.augment, self.rect, self.stride = img_size, augment, rect, int(stride)
        self.hyp = {**DEFAULT_HYP, **(hyp or {})}
        self.mosaic = augment and not rect  # rect batches keep whole images
        self.mosaic_border = mosaic_border(img_size)
        self.prefix = prefix
        im_files = list_image_files(path, prefix)
        if not im_files:
            raise DatasetError(f"{prefix}{path}: no images found (supported: {', '.join(sorted(IMG_FORMATS))})")
        cache_data, _ = scan_dataset(im_files, img2label_paths(im_files), prefix, source=path)
        self.im_files = [f for f in im_files if f in cache_data["entries"]]
        if not self.im_files:
            raise DatasetError(f"{prefix}{path}: no usable images ({len(im_files)} found, all corrupt; "
                               f"see the warnings above)")
        self.label_files = img2label_paths(self.im_files)
        self.labels = [cache_data["entries"][f][0].copy() for f in self.im_files]
        self.shapes = np.array([cache_data["entries"][f][1] for f in self.im_files], dtype=np.int64).reshape(-1, 2)
        nc = nc if nc is not None else len(names) if names else None
        if nc is not None and not single_cls:  # single_cls: every id becomes 0, whatever nc says
            check_class_ids(self.labels, self.label_files, nc)
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0
        self.n = len(self.im_files)
        self.indices = np.arange(self.n)
        self.batch = np.arange(self.n) // batch_size
        self.batch_shapes = None
        if rect:
            self._sort_for_rect(batch_size, pad)
        self.ims: list[Any] = [None] * self.n
        self.npy_files = [Path(f).with_suffix(".npy") for f in self.im_files]
        self.cache = None
        self.cache = self._cache_images(cache)

    def _sort_for_rect(self, batch_size: int, pad: float) -> None:
        """Order images by aspect ratio and compute one letterbox shape per batch."""
        order = (self.shapes[:, 1] / self.shapes[:, 0]).argsort()
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes = self.shapes[order]
        self.batch_shapes = rect_batch_shapes(self.shapes, batch_size, self.img_size, self.stride, pad)

    def _cache_images(self, cache: str | bool | None) -> str | None:
        """Fill the 'ram' cache (resized images) or write 'disk' .npy files; returns the mode in effect."""
        cache = "ram" if cache is True else cache or None
        if cache not in (None, "ram", "disk"):
            raise ConfigError(f"{self.prefix}cache must be 'ram', 'disk' or None, got {cache!r}")
        if cache == "disk" and not all(is_writeable(p.parent) for p in set(self.npy_files)):
            get_logger().warning(f"{self.prefix}WARNING: image folder not writeable, caching images in RAM instead")
            cache = "ram"
        if cache is None:
            return None
        work = self._save_npy if cache == "disk" else self.load_image
        nbytes = 0
        with ThreadPool(NUM_THREADS) as pool:
            bar = tqdm(enumerate(pool.imap(work, range(self.n))), total=self.n, desc=f"{self.prefix}Caching images")
            for i, x in bar:
                if cache == "ram":
                    self.ims[i] = x
                    nbytes += x[0].nbytes
                else:
                    nbytes += x
                bar.desc = f"{self.prefix}Caching images ({nbytes / 1e9:.2f} GB {cache})"
        return cache

    def _save_npy(self, i: int) -> int:
        """Write the original image i as .npy beside it (once); returns its size in bytes."""
        f = self.npy_files[i]
        if not f.exists():
            np.save(f, self._read(i))
        return f.stat().st_size

    def _read(self, i: int) -> np.ndarray:
        """Original BGR image i (EXIF orientation applied by cv2), from .npy when disk-cached."""
        if self.cache == "disk" and self.npy_files[i].exists():
            return np.load(self.npy_files[i])
        im = cv2.imread(self.im_files[i], cv2.IMREAD_COLOR)
        if im is None:
            raise DatasetError(f"{self.im_files[i]}: image could not be read (changed or removed since the scan)")
        return im

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image i resized so its long side is img_size; returns (image, (h0, w0), (h, w))."""
        if self.ims[i] is not None:
            return self.ims[i]
        im = self._read(i)
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def load_mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """4-image mosaic around index, warped to img_size; returns (image, targets (n, 5) cls + xyxy pixels)."""
        picks = [index, *rng.choice(self.indices, 3)]
        rng.shuffle(picks)
        images = [self.load_image(i)[0] for i in picks]
        im, targets = build_mosaic(images, [self.labels[i] for i in picks], self.img_size, rng)
        return self._perspective(im, targets, self.mosaic_border, rng)

    def _perspective(self, im: np.ndarray, targets: np.ndarray, border: tuple[int, int],
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """random_perspective with this dataset's hyp values."""
        h = self.hyp
        return random_perspective(im, targets, h["degrees"], h["translate"], h["scale"], h["shear"],
                                  h["perspective"], border, rng)

    def _letterboxed(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple]:
        """Image index letterboxed to its (rect) shape; returns (image, targets cls + xyxy pixels, shapes)."""
        im, (h0, w0), (h, w) = self.load_image(index)
        shape = tuple(self.batch_shapes[self.batch[index]]) if self.rect else self.img_size
        im, ratio, pad = letterbox(im, shape, auto=False, scaleup=self.augment)
        shapes = (h0, w0), ((h / h0 * ratio[1], w / w0 * ratio[0]), pad)
        lb = self.labels[index].astype(np.float64)
        if len(lb):
            lb[:, 1:] = xywhn2xyxy(lb[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
        return im, lb, shapes

    def __len__(self) -> int:
        """Number of images."""
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        """(image uint8 (3, h, w) RGB, targets (k, 6), path, shapes or None); see the class docstring."""
        index = int(self.indices[index])
        rng, hyp = get_rng(), self.hyp
        if self.mosaic and rng.random() < hyp["mosaic"]:
            im, lb = self.load_mosaic(index, rng)
            shapes = None
            if rng.random() < hyp["mixup"]:
                im, lb = mixup(im, lb, *self.load_mosaic(int(rng.choice(self.indices)), rng), rng=rng)
        else:
            im, lb, shapes = self._letterboxed(index)
            if self.augment:
                im, lb = self._perspective(im, lb, (0, 0), rng)
        if len(lb):
            lb[:, 1:5] = xyxy2xywhn(lb[:, 1:5], w=im.shape[1], h=im.shape[0], clip=True, eps=1e-3)
        if self.augment:
            augment_hsv(im, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"], rng)
            im, lb = random_flip(im, lb, hyp["flipud"], hyp["fliplr"], rng)
        targets = torch.zeros((len(lb), 6))
        if len(lb):
            targets[:, 1:] = torch.from_numpy(lb)
        im = np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(im), targets, self.im_files[index], shapes

    @staticmethod
    def collate_fn(batch: list) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
        """Stack images and concatenate targets, writing each target's image index into column 0."""
        ims, targets, paths, shapes = zip(*batch)
        for i, t in enumerate(targets):
            t[:, 0] = i
        return torch.stack(ims, 0), torch.cat(targets, 0), paths, shapes


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a dataloader worker from its torch seed (reproducible augmentation)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def create_dataloader(path: str | Path | list, imgsz: int, batch_size: int, stride: int, single_cls: bool = False,
                      hyp: dict | None = None, augment: bool = False, cache: str | bool | None = None,
                      pad: float = 0.0, rect: bool = False, rank: int = -1, workers: int = 8, prefix: str = "",
                      shuffle: bool = False, seed: int = 0, nc: int | None = None,
                      names: dict | list | None = None, image_weights: bool = False
                      ) -> tuple[DataLoader, LoadImagesAndLabels]:
    """Build the dataset and its DataLoader (DistributedSampler when rank != -1); returns (loader, dataset).

    Workers persist across epochs (no per-epoch process start-up). image_weights: draw images with replacement by
    weights that ``utils.sampling.update_sampler`` sets each epoch (single process only).
    """
    if image_weights and rank != -1:
        raise ConfigError("--image-weights is not supported with DDP (one process per device); train without it")
    if rect and shuffle:
        get_logger().warning(f"{prefix}WARNING: rect batches need a fixed order, shuffle disabled")
        shuffle = False
    dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect, cache=cache,
                                  single_cls=single_cls, stride=stride, pad=pad, prefix=prefix, nc=nc, names=names)
    batch_size = min(batch_size, len(dataset))
    nw = min(os.cpu_count() or 1, batch_size if batch_size > 1 else 0, workers)
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    sampler = None if rank == -1 else distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    if image_weights:
        sampler = weighted_sampler(len(dataset), generator)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, num_workers=nw,
                        sampler=sampler, pin_memory=torch.cuda.is_available(), persistent_workers=nw > 0,
                        collate_fn=LoadImagesAndLabels.collate_fn, worker_init_fn=seed_worker, generator=generator)
    return loader, dataset
