"""--rect under DDP: each process gets whole rect batches, the same number of them, in a fixed order."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from utils.data.dataset import LoadImagesAndLabels
from utils.data.rect_sampler import RectBatchSampler, rect_batches
from utils.errors import DatasetError


def test_rect_batches_group_images_by_their_batch_index():
    assert rect_batches([0, 0, 1, 1, 2]) == [[0, 1], [2, 3], [4]]
    assert rect_batches([0] * 6 + [1] * 3, group=4) == [[0, 1, 2, 3]]  # --quad: fours only, a short batch goes


def test_each_rank_takes_whole_batches_and_all_ranks_run_the_same_steps():
    batch_index = np.arange(10) // 2  # 5 rect batches of 2 images
    ranks = [RectBatchSampler(batch_index, rank, 2) for rank in range(2)]
    assert [list(r) for r in ranks] == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [0, 1]]]  # padded from the start
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert list(RectBatchSampler(batch_index[:2], 1, 3)) == [[0, 1]]  # more ranks than batches: each gets one
    with pytest.raises(DatasetError, match="no batch of 4"):
        RectBatchSampler([0, 0, 1], 0, 2, group=4)


def test_every_rank_collates_batches_of_one_shape(tmp_path):
    import cv2

    folder = tmp_path / "images"
    folder.mkdir()
    for i, (h, w) in enumerate([(48, 96), (48, 96), (96, 96), (96, 96), (72, 96), (72, 96), (96, 48), (96, 48)]):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((h, w, 3), 114, np.uint8))
    ds = LoadImagesAndLabels(folder, img_size=64, batch_size=2, rect=True, stride=32)
    assert len({tuple(s) for s in ds.batch_shapes}) > 1  # batches of different shapes
    shapes = []
    for rank in range(2):  # as DistributedSampler dealt them, a batch mixed two shapes and could not be stacked
        loader = DataLoader(ds, batch_sampler=RectBatchSampler(ds.batch, rank, 2),
                            collate_fn=LoadImagesAndLabels.collate_fn)
        shapes += [tuple(im.shape[2:]) for im, *_ in loader]
    assert sorted(shapes) == sorted(tuple(int(v) for v in s) for s in ds.batch_shapes)
