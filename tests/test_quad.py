"""The --quad collate (utils/data/quad.py) on hand-made batches: shapes, both choices, label quadrants, indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.data.quad import QUAD_LOSS_GAIN, quad_batch_size, quad_collate, tile2x2, upsample2x
from utils.errors import ConfigError, DatasetError

TILE, UPSAMPLE = 0.9, 0.1  # draws of the group's choice: upsample when < 0.5


class Draws:
    """A stand-in random generator whose random() returns the given values in turn."""

    def __init__(self, *values: float):
        self.values = list(values)

    def random(self) -> float:
        """The next value."""
        return self.values.pop(0)


def item(k: int, h: int = 4, w: int = 6) -> tuple[torch.Tensor, torch.Tensor, str, tuple]:
    """Image k of a hand-made batch: every pixel k * 10 (mod 256), one box of class k at (0.5, 0.25) sized (0.25, 0.5)
    (values exact in float32, so the moved labels compare exactly)."""
    im = torch.full((3, h, w), k * 10 % 256, dtype=torch.uint8)
    targets = torch.tensor([[7.0, k, 0.5, 0.25, 0.25, 0.5]])  # index 7: the collate writes the real one
    return im, targets, f"im{k}.jpg", ((h, w), ((1.0, 1.0), (0.0, 0.0)))


def test_four_images_tiled_into_one_of_twice_the_side_with_labels_in_their_quadrants():
    ims, targets, paths, shapes = quad_collate([item(k) for k in range(4)], rng=Draws(TILE))
    assert ims.shape == (1, 3, 8, 12) and ims.dtype == torch.uint8
    assert ims[0, :, :4, :6].eq(0).all() and ims[0, :, 4:, :6].eq(10).all()  # top-left: image 0, bottom-left: 1
    assert ims[0, :, :4, 6:].eq(20).all() and ims[0, :, 4:, 6:].eq(30).all()  # top-right: 2, bottom-right: 3
    assert targets.tolist() == [[0, 0, 0.25, 0.125, 0.125, 0.25],
                                [0, 1, 0.25, 0.625, 0.125, 0.25],
                                [0, 2, 0.75, 0.125, 0.125, 0.25],
                                [0, 3, 0.75, 0.625, 0.125, 0.25]]
    assert paths == ("im0.jpg",) and shapes == (item(0)[3],)


def test_upsampled_first_image_keeps_its_labels_and_the_others_are_left_out():
    batch = [item(k) for k in range(4)]
    ramp = torch.arange(72, dtype=torch.uint8).reshape(3, 4, 6)
    batch[0] = (ramp, *batch[0][1:])
    ims, targets, paths, _ = quad_collate(batch, rng=Draws(UPSAMPLE))
    assert ims.shape == (1, 3, 8, 12)
    bilinear = F.interpolate(ramp[None].float(), scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.equal(ims, bilinear.round().to(torch.uint8))
    assert targets.tolist() == [[0, 0, 0.5, 0.25, 0.25, 0.5]]
    assert paths == ("im0.jpg",)


def test_eight_images_make_two_and_their_targets_are_renumbered_to_the_new_positions():
    ims, targets, paths, shapes = quad_collate([item(k) for k in range(8)], rng=Draws(UPSAMPLE, TILE))
    assert ims.shape == (2, 3, 8, 12)
    assert ims[0].eq(0).all()  # group 0: image 0 upsampled
    assert ims[1, :, :4, :6].eq(40).all() and ims[1, :, 4:, 6:].eq(70).all()  # group 1: images 4 to 7 tiled
    assert targets[:, 0].tolist() == [0, 1, 1, 1, 1] and targets[:, 1].tolist() == [0, 4, 5, 6, 7]
    assert targets[1:, 2:4].tolist() == [[0.25, 0.125], [0.25, 0.625], [0.75, 0.125], [0.75, 0.625]]
    assert paths == ("im0.jpg", "im4.jpg") and [s[0] for s in shapes] == [(4, 6), (4, 6)]


def test_images_without_labels_tile_and_the_inputs_are_left_unchanged():
    batch = [item(k) for k in range(4)]
    batch[1] = (batch[1][0], torch.zeros((0, 6)), *batch[1][2:])
    before = [t.clone() for _, t, _, _ in batch]
    _, targets, _, _ = quad_collate(batch, rng=Draws(TILE))
    assert targets[:, 1].tolist() == [0, 2, 3]
    assert all(torch.equal(b, t) for b, (_, t, _, _) in zip(before, batch))  # the items' own targets are intact


def test_the_choice_is_a_fair_coin_drawn_from_numpys_state_by_default():
    batch = [item(k) for k in range(4 * 200)]
    np.random.seed(0)
    first = quad_collate(batch)[1]
    np.random.seed(0)
    assert torch.equal(quad_collate(batch)[1], first)  # seeded per worker: reproducible
    tiled = sum(int((first[:, 0] == g).sum()) == 4 for g in range(200))
    assert 70 < tiled < 130


def test_tile_and_upsample_building_blocks():
    ims = [torch.full((1, 2, 2), v, dtype=torch.uint8) for v in (1, 2, 3, 4)]
    assert tile2x2(ims)[0].tolist() == [[1, 1, 3, 3], [1, 1, 3, 3], [2, 2, 4, 4], [2, 2, 4, 4]]  # column by column
    assert upsample2x(torch.full((3, 2, 2), 255, dtype=torch.uint8)).eq(255).all()  # no overflow past uint8


def test_a_batch_that_is_not_groups_of_four_is_refused():
    with pytest.raises(ValueError, match="a batch of 6 images is not groups of 4"):
        quad_collate([item(k) for k in range(6)])


def test_loader_batch_size_is_groups_of_four_within_the_images_of_one_process():
    assert quad_batch_size(16, 100) == 16
    assert quad_batch_size(16, 10) == 8  # a dataset smaller than the batch: the most whole groups
    with pytest.raises(ConfigError, match="a batch of 10 images per process is not a multiple of 4"):
        quad_batch_size(10, 100)
    with pytest.raises(DatasetError, match="3 training image"):
        quad_batch_size(16, 3)
    assert QUAD_LOSS_GAIN == 4
