"""``train.py --quad``: the training collate that turns every four images of a batch into one image of twice the side.

Each group of four consecutive images of a batch becomes one training image, 2h x 2w for images of h x w:

- with probability 0.5, the group's first image upsampled 2x (bilinear), its labels unchanged (they are normalised);
- otherwise the four images tiled 2x2 column by column, as YOLOv5 (top-left, bottom-left, top-right, bottom-right),
  each image's label centres and sizes halved and moved into its quadrant.

A batch of n images thus trains as n / 4 larger ones (the training loss is multiplied by ``QUAD_LOSS_GAIN`` to
make up for the smaller batch); objects are as many pixels as before in an image twice the size, which helps
training at a larger --img on small objects. Each group keeps its first image's path and shapes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from utils.data.augment import get_rng
from utils.errors import ConfigError, DatasetError

GROUP = 4  # images per training image
QUAD_LOSS_GAIN = float(GROUP)  # the loss of a batch of n / 4 images, scaled to that of n images
# (column offset added to x, to y) of the tiles, in the order the four images of a group are placed
TILE_OFFSETS = ((0.0, 0.0), (0.0, 0.5), (0.5, 0.0), (0.5, 0.5))


def upsample2x(im: torch.Tensor) -> torch.Tensor:
    """A uint8 (3, h, w) image at (3, 2h, 2w), bilinear, rounded back to uint8."""
    big = F.interpolate(im[None].float(), scale_factor=2.0, mode="bilinear", align_corners=False)[0]
    return big.round_().clamp_(0, 255).to(im.dtype)


def tile2x2(ims: list[torch.Tensor]) -> torch.Tensor:
    """Four (3, h, w) images as one (3, 2h, 2w), column by column: top-left, bottom-left, top-right, bottom-right."""
    left, right = torch.cat(ims[:2], dim=1), torch.cat(ims[2:], dim=1)
    return torch.cat((left, right), dim=2)


def tile_targets(targets: list[torch.Tensor]) -> torch.Tensor:
    """The four images' targets (k, 6) [index, cls, x, y, w, h] with x, y, w, h moved into their tiles of
    ``tile2x2`` (normalised to the tiled image); the index column is left for the caller."""
    out = []
    for t, (dx, dy) in zip(targets, TILE_OFFSETS):
        t = t.clone()
        t[:, 2:6] /= 2
        t[:, 2] += dx
        t[:, 3] += dy
        out.append(t)
    return torch.cat(out, 0)


def quad_group(ims: list[torch.Tensor], targets: list[torch.Tensor], upsample: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One training image and its targets from a group of four: the first upsampled, or all four tiled."""
    if upsample:
        return upsample2x(ims[0]), targets[0].clone()
    return tile2x2(ims), tile_targets(targets)


def quad_collate(batch: list, rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple,
                                                                                tuple]:
    """The dataset's items (image, targets, path, shapes), a multiple of four, collated as len / 4 images of twice
    the side (see the module); rng draws the choice per group (default: from numpy's state, seeded per worker)."""
    if not batch or len(batch) % GROUP:
        raise ValueError(f"quad_collate: a batch of {len(batch)} images is not groups of {GROUP}")
    rng = get_rng(rng)
    ims, targets, paths, shapes = zip(*batch)
    out_ims, out_targets = [], []
    for g, i in enumerate(range(0, len(batch), GROUP)):
        im, t = quad_group(list(ims[i:i + GROUP]), list(targets[i:i + GROUP]), rng.random() < 0.5)
        t[:, 0] = g
        out_ims.append(im)
        out_targets.append(t)
    return torch.stack(out_ims, 0), torch.cat(out_targets, 0), paths[::GROUP], shapes[::GROUP]


def quad_batch_size(batch_size: int, n_images: int) -> int:
    """The --quad loader's batch size: batch_size (a multiple of 4), or the most groups of four that n_images (the
    images one process loads per epoch) fill; ConfigError / DatasetError where no group can be formed."""
    if batch_size < GROUP or batch_size % GROUP:
        raise ConfigError(f"--quad groups each batch's images in fours: a batch of {batch_size} images per process "
                          f"is not a multiple of {GROUP}")
    size = min(batch_size, n_images) // GROUP * GROUP
    if size == 0:
        raise DatasetError(f"--quad groups each batch's images in fours: {n_images} training image(s) per process "
                           f"are too few; train without --quad")
    return size
