"""Light-backbone blocks of models/common.py: output shapes and strides, the channel shuffle, residuals."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.shufflenetv2 import channel_shuffle

from models.common import MobileNetV3Block, MobileStem, ShuffleBlock, ShuffleStem


def test_stems_downsample_by_four_and_two():
    x = torch.rand(2, 3, 64, 96)
    assert ShuffleStem(3, 24)(x).shape == (2, 24, 16, 24)  # conv stride 2, then max-pool stride 2
    assert MobileStem(3, 16)(x).shape == (2, 16, 32, 48)


@pytest.mark.parametrize("c1, c2, s, out_hw", [(48, 48, 1, 16), (24, 116, 2, 8), (116, 232, 2, 8)])
def test_shuffle_block_shapes_and_strides(c1, c2, s, out_hw):
    assert ShuffleBlock(c1, c2, s).eval()(torch.rand(1, c1, 16, 16)).shape == (1, c2, out_hw, out_hw)


def test_channel_shuffle_is_a_permutation_and_has_an_inverse():
    c = 8
    x = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1).expand(1, c, 3, 3).contiguous()
    y = channel_shuffle(x, 2)
    order = y[0, :, 0, 0].long().tolist()
    assert sorted(order) == list(range(c)) and order == [0, 4, 1, 5, 2, 6, 3, 7]  # the two halves interleaved
    torch.testing.assert_close(channel_shuffle(y, c // 2), x)  # shuffling with c/2 groups undoes 2 groups


def test_shuffle_block_at_stride_one_passes_half_the_channels_through_shuffled():
    block = ShuffleBlock(16, 16, 1).eval()
    x = torch.rand(1, 16, 8, 8)
    with torch.no_grad():
        y = block(x)
    torch.testing.assert_close(y[:, 0::2], x[:, :8])  # the identity half lands on the even channels


@pytest.mark.parametrize("c1, c2, k, e, se, act, s", [(16, 16, 3, 16, 1, "RE", 2), (24, 24, 3, 88, 0, "RE", 1),
                                                      (40, 48, 5, 120, 1, "HS", 1), (48, 96, 5, 288, 1, "HS", 2)])
def test_mobilenetv3_block_shapes_and_strides(c1, c2, k, e, se, act, s):
    block = MobileNetV3Block(c1, c2, k, e, se, act, s).eval()
    assert block(torch.rand(1, c1, 16, 16)).shape == (1, c2, 16 // s, 16 // s)
    assert block.block.use_res_connect == (s == 1 and c1 == c2)  # residual only where the shape is kept


def test_mobilenetv3_block_options_reach_torchvision_layers():
    block = MobileNetV3Block(40, 40, 5, 240, 1, "HS", 1)
    kinds = {type(m).__name__ for m in block.modules()}
    assert {"SqueezeExcitation", "Hardswish"} <= kinds
    depthwise = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 240]
    assert depthwise[0].kernel_size == (5, 5)
    plain = MobileNetV3Block(24, 24, 3, 88, 0, "RE", 1)
    assert not {"SqueezeExcitation", "Hardswish"} & {type(m).__name__ for m in plain.modules()}


def test_conv_under_autograd_applies_silu_out_of_place_with_the_same_numbers():
    from torch.profiler import profile

    from models.common import Conv

    torch.manual_seed(0)
    conv = Conv(3, 8, 3)
    conv.act = torch.nn.SiLU(inplace=True)  # as initialize_weights and official checkpoints set it
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    with profile() as prof:
        y = conv(x)
    assert "aten::clone" not in {e.name for e in prof.events()}  # no copy of the activation before SiLU
    y.square().sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    y_ref = conv.act(conv.bn(conv.conv(x_ref)))  # the in-place path
    y_ref.square().sum().backward()
    assert torch.equal(y, y_ref) and torch.equal(x.grad, x_ref.grad)
    with torch.no_grad():  # without autograd the activation stays in place
        assert torch.equal(conv(x), y)
