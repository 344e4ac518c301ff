"""Network building blocks of YOLOv5-style models.

Class names and attribute names here are an interface: official YOLOv5 checkpoints are pickles that refer to
``models.common.Conv`` and friends and to their attributes (``Conv.conv/bn/act``, ``C3.cv1/cv2/cv3/m``,
``SPPF.cv1/cv2/m``, ``Concat.d``, ``Bottleneck.cv1/cv2/add``), so they must not be renamed.
All blocks take NCHW float tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models import bn_silu


def autopad(k: int | list[int], p: int | list[int] | None = None, d: int = 1) -> int | list[int]:
    """Padding that keeps the spatial size for stride 1 ('same'), for kernel k and dilation d."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def activate(act: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """act(y), but SiLU out of place under autograd: its derivative needs its input, so an in-place SiLU (YOLOv5's
    initialisation sets inplace=True) would first be copied by autograd; out of place gives the same numbers."""
    if y.requires_grad and type(act) is nn.SiLU:
        return nn.functional.silu(y)
    return act(y)


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation (SiLU by default). After fusing, ``bn`` is an Identity."""

    default_act = nn.SiLU()

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, d: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = self.default_act if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, norm and activation (norm and SiLU as one kernel when training on the CPU: models/bn_silu.py)."""
        y = self.conv(x)
        if bn_silu.applies(self.bn, self.act, y):
            return bn_silu.bn_silu(self.bn, y)
        return activate(self.act, self.bn(y))


class DWConv(Conv):
    """Depth-wise convolution: groups = gcd(c1, c2)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, d: int = 1, act: bool | nn.Module = True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Bottleneck(nn.Module):
    """1x1 then 3x3 Conv, with a residual connection when shortcut and c1 == c2."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck."""
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class BottleneckCSP(nn.Module):
    """CSP bottleneck (Wang et al., CSPNet 2019) as in YOLOv5 v4 and earlier configs."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_)
        self.act = nn.SiLU()
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two branches, concatenated, normalised and fused by cv4."""
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(activate(self.act, self.bn(torch.cat((y1, y2), 1))))


class C3(nn.Module):
    """CSP block with 3 convolutions: cv3(cat(m(cv1(x)), cv2(x)))."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the bottleneck branch with the shortcut branch."""
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling (He et al. 2015) with parallel max-pools of kernels k."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate x with its pooled versions."""
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class SPPF(nn.Module):
    """Fast SPP: three chained max-pools of kernel k, equal to SPP(k=(5, 9, 13)) for k=5."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate x and 1, 2, 3 successive poolings."""
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Focus(nn.Module):
    """Space-to-depth (2x2 pixels into channels) followed by a Conv (YOLOv5 before v6)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, c, h, w) -> (b, 4c, h/2, w/2) -> conv."""
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class GhostConv(nn.Module):
    """Ghost convolution (Han et al., GhostNet 2020): half the channels from a cheap depth-wise conv."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: bool | nn.Module = True):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_, k, s, None, g, act=act)
        self.cv2 = Conv(c_, c_, 5, 1, None, c_, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the primary and the cheap features."""
        y = self.cv1(x)
        return torch.cat((y, self.cv2(y)), 1)


class GhostBottleneck(nn.Module):
    """Ghost bottleneck with an optional stride-2 depth-wise stage."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1):
        super().__init__()
        c_ = c2 // 2
        self.conv = nn.Sequential(
            GhostConv(c1, c_, 1, 1),
            DWConv(c_, c_, k, s, act=False) if s == 2 else nn.Identity(),
            GhostConv(c_, c2, 1, 1, act=False),
        )
        self.shortcut = (
            nn.Sequential(DWConv(c1, c1, k, s, act=False), Conv(c1, c2, 1, 1, act=False)) if s == 2 else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Ghost branch plus shortcut."""
        return self.conv(x) + self.shortcut(x)


class C3Ghost(C3):
    """C3 with GhostBottleneck blocks."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(GhostBottleneck(c_, c_) for _ in range(n)))


class TransformerLayer(nn.Module):
    """Transformer encoder layer without layer norm (Dosovitskiy et al. 2020, ViT, as in YOLOv5's C3TR): q/k/v
    projections into torch's ``nn.MultiheadAttention``, then a two-layer linear feed-forward; both residual."""

    def __init__(self, c: int, num_heads: int):
        super().__init__()
        self.q = nn.Linear(c, c, bias=False)
        self.k = nn.Linear(c, c, bias=False)
        self.v = nn.Linear(c, c, bias=False)
        self.ma = nn.MultiheadAttention(embed_dim=c, num_heads=num_heads)
        self.fc1 = nn.Linear(c, c, bias=False)
        self.fc2 = nn.Linear(c, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (sequence, batch, c) -> same shape."""
        x = x + self.ma(self.q(x), self.k(x), self.v(x), need_weights=False)[0]
        return x + self.fc2(self.fc1(x))


class TransformerBlock(nn.Module):
    """A feature map as a sequence of its cells: optional 1x1 Conv to c2, a learnt linear position embedding, then
    num_layers TransformerLayers; (b, c1, h, w) -> (b, c2, h, w)."""

    def __init__(self, c1: int, c2: int, num_heads: int, num_layers: int):
        super().__init__()
        self.conv = Conv(c1, c2) if c1 != c2 else None
        self.linear = nn.Linear(c2, c2)
        self.tr = nn.Sequential(*(TransformerLayer(c2, num_heads) for _ in range(num_layers)))
        self.c2 = c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the h * w cells of each image."""
        if self.conv is not None:
            x = self.conv(x)
        b, _, h, w = x.shape
        seq = x.flatten(2).permute(2, 0, 1)  # (h * w, b, c2)
        return self.tr(seq + self.linear(seq)).permute(1, 2, 0).reshape(b, self.c2, h, w)


class C3TR(C3):
    """C3 whose bottleneck stack is a TransformerBlock with 4 heads and n layers."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = TransformerBlock(c_, c_, 4, n)


class ShuffleStem(nn.Module):
    """ShuffleNetV2 stem (Ma et al. 2018): 3x3 stride-2 Conv with ReLU, then 3x3 stride-2 max-pool (stride 4)."""

    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.conv = Conv(c1, c2, 3, 2, act=nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem features at 1/4 resolution."""
        return self.pool(self.conv(x))


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 unit, torchvision's ``shufflenetv2.InvertedResidual``: stride 1 splits the channels and runs
    1x1 -> depth-wise 3x3 -> 1x1 on one half; stride 2 runs both halves; then a channel shuffle with 2 groups."""

    def __init__(self, c1: int, c2: int, s: int = 1):
        super().__init__()
        from torchvision.models.shufflenetv2 import InvertedResidual

        if s == 1 and c1 != c2:
            raise ValueError(f"ShuffleBlock stride 1 keeps the channels: got {c1} -> {c2}")
        self.block = InvertedResidual(c1, c2, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One unit."""
        return self.block(x)


class MobileStem(nn.Module):
    """MobileNetV3 stem (Howard et al. 2019): 3x3 stride-2 Conv with hard-swish."""

    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.conv = Conv(c1, c2, 3, 2, act=nn.Hardswish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem features at 1/2 resolution."""
        return self.conv(x)


class MobileNetV3Block(nn.Module):
    """MobileNetV3 bottleneck, torchvision's ``mobilenetv3.InvertedResidual``: 1x1 expansion to e channels, k x k
    depth-wise conv (stride s), optional squeeze-excitation (se), 1x1 projection; ReLU ('RE') or hard-swish ('HS');
    residual when the stride is 1 and the channels stay. BatchNorm as torchvision (eps 0.001, momentum 0.01)."""

    def __init__(self, c1: int, c2: int, k: int = 3, e: int = 16, se: bool = False, act: str = "RE", s: int = 1):
        super().__init__()
        from functools import partial

        from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig

        cnf = InvertedResidualConfig(c1, k, e, c2, bool(se), act, s, 1, 1.0)
        self.block = InvertedResidual(cnf, partial(nn.BatchNorm2d, eps=0.001, momentum=0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One bottleneck."""
        return self.block(x)


LIGHT_BLOCKS = (ShuffleStem, ShuffleBlock, MobileStem, MobileNetV3Block)  # channel args are absolute (not scaled)


class Concat(nn.Module):
    """Concatenate a list of tensors along dimension d."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        """torch.cat(x, d)."""
        return torch.cat(x, self.d)


class Contract(nn.Module):
    """Fold gain x gain pixel blocks into channels: (b, c, h, w) -> (b, c*g*g, h/g, w/g)."""

    def __init__(self, gain: int = 2):
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Space to depth."""
        b, c, h, w = x.shape
        s = self.gain
        x = x.view(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(b, c * s * s, h // s, w // s)


class Expand(nn.Module):
    """Unfold channels into gain x gain pixel blocks: (b, c, h, w) -> (b, c/g/g, h*g, w*g)."""

    def __init__(self, gain: int = 2):
        super().__init__()
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depth to space."""
        b, c, h, w = x.shape
        s = self.gain
        x = x.view(b, s, s, c // s ** 2, h, w).permute(0, 3, 4, 1, 5, 2).contiguous()
        return x.view(b, c // s ** 2, h * s, w * s)
