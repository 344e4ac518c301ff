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

import io
import math
import os
import random
import signal
from functools import partial
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, distributed
from tqdm import tqdm

from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.data.augment import (
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
from utils.data.label_scan import (
    IMG_FORMATS,
    NUM_THREADS,
    check_class_ids,
    img2label_paths,
    is_writeable,
    list_image_files,
    scan_dataset,
)
from utils.data.quad import quad_batch_size, quad_collate
from utils.data.rect_sampler import RectBatchSampler
from utils.data.sampling import weighted_sampler
from utils.errors import ConfigError, DatasetError
from utils.log import get_logger
from utils.paths import write_atomic


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
        """Write the original image i as .npy beside it, atomically, unless one from this very image file is there
        (the .npy carries the image's modification time: an image replaced since is read again); returns its size."""
        f, mtime = self.npy_files[i], os.stat(self.im_files[i]).st_mtime_ns
        if not f.exists() or f.stat().st_mtime_ns != mtime:
            buf = io.BytesIO()
            np.save(buf, self._read(i))  # from the image: self.cache is set once caching is done
            write_atomic(f, buf.getvalue())
            os.utime(f, ns=(mtime, mtime))
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


def seed_worker(worker_id: int, nice: int = 0) -> None:
    """Seed numpy and random in a dataloader worker from its torch seed (reproducible augmentation); with nice > 0,
    lower the worker's scheduling priority by that much (``os.nice``; where the OS has none, the worker runs as is).
    The worker ignores Ctrl-C: the main process stops it (see utils/train/interrupt.py)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    if nice > 0 and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError:  # a sandbox may refuse even lowering a priority; the worker then keeps it
            pass


def create_dataloader(path: str | Path | list, imgsz: int, batch_size: int, stride: int, single_cls: bool = False,
                      hyp: dict | None = None, augment: bool = False, cache: str | bool | None = None,
                      pad: float = 0.0, rect: bool = False, rank: int = -1, workers: int = 8, prefix: str = "",
                      shuffle: bool = False, seed: int = 0, nc: int | None = None,
                      names: dict | list | None = None, image_weights: bool = False, worker_nice: int = 0,
                      quad: bool = False) -> tuple[DataLoader, LoadImagesAndLabels]:
    """Build the dataset and its DataLoader (DistributedSampler when rank != -1); returns (loader, dataset).

    Workers persist across epochs (no per-epoch process start-up). image_weights: draw images with replacement by
    weights that ``utils.data.sampling.update_sampler`` sets each epoch (single process only). worker_nice: how
    much lower the workers' scheduling priority is than this process's (training on the CPU, where they share its
    cores: see ``utils.train.train_setup.LOADER_NICE``). quad: batches of batch_size / 4 images of twice the side
    (``utils.data.quad``; batch_size a multiple of 4), the epoch's last incomplete batch dropped.
    """
    if image_weights and rank != -1:
        raise ConfigError("--image-weights is not supported with DDP (one process per device); train without it")
    if rect and image_weights:
        raise ConfigError("--rect and --image-weights do not combine: rect batches hold images of one shape, while "
                          "weighted sampling draws images from every batch; train with one of them")
    if rect and shuffle:
        get_logger().warning(f"{prefix}WARNING: rect batches need a fixed order, shuffle disabled")
        shuffle = False
    dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect, cache=cache,
                                  single_cls=single_cls, stride=stride, pad=pad, prefix=prefix, nc=nc, names=names)
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    batching, images_per_batch = _batching(dataset, batch_size, rank, shuffle, seed, image_weights, rect, quad,
                                           generator)
    nw = min(os.cpu_count() or 1, images_per_batch if images_per_batch > 1 else 0, workers)
    loader = DataLoader(dataset, num_workers=nw, pin_memory=torch.cuda.is_available(), persistent_workers=nw > 0,
                        collate_fn=quad_collate if quad else LoadImagesAndLabels.collate_fn, generator=generator,
                        worker_init_fn=partial(seed_worker, nice=worker_nice), **batching)
    return loader, dataset


def _batching(dataset: LoadImagesAndLabels, batch_size: int, rank: int, shuffle: bool, seed: int,
              image_weights: bool, rect: bool, quad: bool, generator: torch.Generator) -> tuple[dict, int]:
    """(the DataLoader's batching arguments, the most images in one batch): a batch sampler of whole rect batches
    under DDP with --rect (utils/data/rect_sampler.py; --quad: each cut to a multiple of 4); otherwise batch_size
    (--quad: whole groups of four, the last incomplete batch dropped) with a distributed or weighted sampler."""
    if rect and rank != -1:
        batches = RectBatchSampler(dataset.batch, rank, torch.distributed.get_world_size(), group=4 if quad else 1)
        return {"batch_sampler": batches}, max(len(b) for b in batches.batches)
    sampler = None if rank == -1 else distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    if image_weights:
        sampler = weighted_sampler(len(dataset), generator)
    n_images = len(sampler) if sampler is not None else len(dataset)  # one process's images per epoch
    batch_size = quad_batch_size(batch_size, n_images) if quad else min(batch_size, len(dataset))
    return {"batch_size": batch_size, "shuffle": shuffle and sampler is None, "sampler": sampler,
            "drop_last": quad}, batch_size
