"""utils/tv_ops.py (and utils.boxes.box_iou): torchvision's kernels and formulas without importing torchvision."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision

from tests.conftest import ROOT
from utils import tv_ops
from utils.boxes import box_iou


def random_boxes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n xyxy boxes in a 640 px image, their scores and 80-class groups."""
    g = torch.Generator().manual_seed(seed)
    xy, wh = torch.rand(n, 2, generator=g) * 600, torch.rand(n, 2, generator=g) * 100 + 1
    return torch.cat((xy, xy + wh), 1), torch.rand(n, generator=g), torch.randint(0, 80, (n,), generator=g).float()


@pytest.mark.parametrize("n", [0, 1, 50, 3000])  # both sides of PER_GROUP_ABOVE
def test_batched_nms_keeps_what_torchvision_keeps(n):
    boxes, scores, groups = random_boxes(n)
    ours = tv_ops.batched_nms(boxes, scores, groups, 0.6)
    theirs = torchvision.ops.batched_nms(boxes, scores, groups, 0.6)
    assert torch.equal(ours, theirs)


def test_nms_and_box_iou_match_torchvision():
    boxes, scores, _ = random_boxes(200, seed=1)
    assert torch.equal(tv_ops.nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.allclose(box_iou(boxes[:20], boxes[20:]), torchvision.ops.box_iou(boxes[:20], boxes[20:]))


def test_box_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))


def test_val_and_detect_never_import_torchvision():
    code = ("import sys, torch; import val, detect; from utils.nms import non_max_suppression; "
            "y = torch.rand(1, 100, 85); y[..., 2:4] *= 50; out = non_max_suppression(y, 0.1, 0.5); "
            "print(len(out[0]) > 0, 'torchvision' in sys.modules, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False"]
