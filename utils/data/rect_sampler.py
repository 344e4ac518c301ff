"""``--rect`` under DDP: every process takes whole rect batches, so the images of a batch share one shape.

A rect dataset letterboxes each image to the shape of its batch (``LoadImagesAndLabels.batch``: consecutive images,
sorted by aspect ratio). ``DistributedSampler`` deals images out one at a time (image i to rank i % world), so a
process's batch mixed images of two rect batches, of two shapes, and collating them failed ("stack expects each
tensor to be equal size"). ``RectBatchSampler`` deals out batches instead: batch k to rank k % world, in order; the
list of batches is extended cyclically from its start until every rank has as many (``DistributedSampler``'s padding,
by batches), so all processes run the same number of steps.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from utils.errors import DatasetError


def rect_batches(batch_index: Sequence[int], group: int = 1) -> list[list[int]]:
    """The image indices of each rect batch, in order, each cut to a multiple of group (--quad: 4); empty ones go."""
    batch_index = np.asarray(batch_index)
    batches = [np.flatnonzero(batch_index == b).tolist() for b in np.unique(batch_index)]
    batches = [b[:len(b) // group * group] for b in batches]
    return [b for b in batches if b]


class RectBatchSampler(Sampler[list[int]]):
    """Batch sampler for one DDP process: whole rect batches, batch k to rank k % world_size (see the module)."""

    def __init__(self, batch_index: Sequence[int], rank: int, world_size: int, group: int = 1) -> None:
        """Deal the rect batches of ``batch_index`` (the dataset's batch per image) to this rank; DatasetError if
        none holds group images."""
        batches = rect_batches(batch_index, group)
        if not batches:
            raise DatasetError(f"--rect: no batch of {group} or more images of one shape to train on; train "
                               "without --quad or with more images")
        self.steps = math.ceil(len(batches) / world_size)
        padded = [batches[i % len(batches)] for i in range(self.steps * world_size)]
        self.batches = padded[rank::world_size]

    def __iter__(self) -> Iterator[list[int]]:
        """This process's batches, the same every epoch (rect batches keep a fixed order)."""
        return iter(self.batches)

    def __len__(self) -> int:
        """Steps per epoch, equal on every process."""
        return self.steps
