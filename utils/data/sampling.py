"""``--image-weights``: draw training images by weights from class frequencies and the last validation's class mAPs.

As YOLOv5: class weights c_w = f_w * (1 - mAP_c)^2 / nc, with f_w the inverse class frequency of the training labels
(normalised to sum 1) and mAP_c the class's mAP50-95 at the last validation (0 before the first), and each image's
weight the sum of c_w over its labels (an image without labels weighs 0 unless every image does). The draws are made
by a ``torch.utils.data.WeightedRandomSampler`` in the main process, with replacement, one epoch of len(dataset)
images; updating its weights between epochs works with persistent dataloader workers, which a changed dataset
attribute would not reach.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from utils.loss_terms import class_balance_weights, class_counts


def class_frequency_weights(labels: Sequence[np.ndarray], nc: int) -> np.ndarray:
    """Inverse class frequency of the training boxes, (nc,), summing to 1 (a class without boxes counts as one)."""
    return np.array(class_balance_weights(class_counts(labels, nc), "inverse")) / nc


def image_weights(labels: Sequence[np.ndarray], nc: int, class_weights: np.ndarray) -> np.ndarray:
    """Weight of each image: the sum of its labels' class weights, (n,); uniform if every image weighs 0."""
    w = np.array([class_weights[lb[:, 0].astype(int)].sum() if len(lb) else 0.0 for lb in labels])
    return w if w.sum() > 0 else np.ones(len(labels))


def epoch_class_weights(freq: np.ndarray, maps: np.ndarray | None) -> np.ndarray:
    """YOLOv5's class weights for the next epoch: freq * (1 - mAP_c)^2 / nc."""
    nc = len(freq)
    maps = np.zeros(nc) if maps is None or len(maps) != nc else np.asarray(maps, dtype=np.float64)
    return freq * (1.0 - maps) ** 2 / nc


def weighted_sampler(n: int, generator: torch.Generator) -> WeightedRandomSampler:
    """A sampler of n draws with replacement, uniform until ``update_sampler`` sets its weights."""
    return WeightedRandomSampler(torch.ones(n, dtype=torch.double), n, replacement=True, generator=generator)


def update_sampler(sampler: WeightedRandomSampler, labels: Sequence[np.ndarray], nc: int,
                   maps: np.ndarray | None) -> np.ndarray:
    """Set the sampler's image weights for the next epoch from the labels and the last class mAPs; returns them."""
    iw = image_weights(labels, nc, epoch_class_weights(class_frequency_weights(labels, nc), maps))
    sampler.weights = torch.as_tensor(iw, dtype=torch.double)
    return iw
