"""--image-weights: class and image weights by hand, and a sampler that draws rare-class images more often."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.data.sampling import (
    class_frequency_weights,
    epoch_class_weights,
    image_weights,
    update_sampler,
    weighted_sampler,
)


def labels_of(*classes_per_image: list[int]) -> list[np.ndarray]:
    """YOLO label arrays (k, 5) with the given classes and a dummy box."""
    return [np.array([[c, 0.5, 0.5, 0.1, 0.1] for c in cls], dtype=np.float32).reshape(-1, 5)
            for cls in classes_per_image]


def test_class_and_image_weights_by_hand():
    labels = labels_of([0, 0], [0, 1], [0], [])  # class 0: 4 boxes, class 1: 1, class 2: none (counted as 1)
    freq = class_frequency_weights(labels, nc=3)
    assert freq == pytest.approx(np.array([0.25, 1.0, 1.0]) / 2.25)
    cw = epoch_class_weights(freq, np.array([0.5, 0.0, 0.0]))  # class 0 is learnt half-way
    assert cw == pytest.approx(freq * np.array([0.25, 1.0, 1.0]) / 3)
    iw = image_weights(labels, 3, cw)
    assert iw == pytest.approx([2 * cw[0], cw[0] + cw[1], cw[0], 0.0])
    assert image_weights(labels_of([], []), 3, cw).tolist() == [1.0, 1.0]  # nothing labelled: uniform


def test_rare_class_images_are_drawn_more_often():
    labels = labels_of(*([[0]] * 18 + [[1]] * 2))  # 2 of 20 images hold the rare class 1
    generator = torch.Generator().manual_seed(0)
    sampler = weighted_sampler(len(labels), generator)
    uniform = np.bincount(list(sampler), minlength=20)
    update_sampler(sampler, labels, nc=2, maps=None)
    draws = np.concatenate([list(sampler) for _ in range(100)])  # 100 epochs of 20 draws
    rare_share = np.isin(draws, [18, 19]).mean()
    # class weights 1/18 and 1/2: the 18 common images weigh 1 in all, the 2 rare ones 1, so half the draws (not 10 %)
    assert uniform.sum() == 20 and 0.45 < rare_share < 0.55
    update_sampler(sampler, labels, nc=2, maps=np.array([0.0, 0.9]))  # rare class learnt: its weight drops 100x
    draws = np.concatenate([list(sampler) for _ in range(100)])
    assert np.isin(draws, [18, 19]).mean() < 0.03  # 0.01 / 1.01 of the weight


def test_image_weights_refused_under_ddp(tmp_path):
    from utils.data.dataset import create_dataloader
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match="--image-weights is not supported with DDP"):
        create_dataloader(tmp_path, 64, 4, 32, rank=0, image_weights=True)
