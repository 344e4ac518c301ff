"""YOLOv5 detection model: the Detect head, DetectionModel (alias Model) and parse_model for model YAMLs.

Usage:
    python models/yolo.py --cfg yolov5s.yaml          # print the layer table, parameters and GFLOPs at 640
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import math
import sys
from copy import deepcopy
from pathlib import Path

import torch
import yaml
from torch import nn

if __name__ == "__main__":  # running as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import common  # noqa: E402
from models.common import C3, SPP, SPPF, BottleneckCSP, C3Ghost, Concat, Contract, Conv, Expand  # noqa: E402
from models.tta import augmented_inference  # noqa: E402
from utils.errors import ConfigError  # noqa: E402
from utils.log import get_logger  # noqa: E402
from utils.torch_utils import fuse_conv_and_bn, initialize_weights, model_info  # noqa: E402

CLASS_ACTIVATIONS = ("sigmoid", "softmax")  # Detect.class_act values; "softmax" for cls_loss_type: ce


class Detect(nn.Module):
    """Detection head: one 1x1 conv per level, predicting na anchors x (x, y, w, h, obj, nc class logits).

    Training: returns the list of raw maps (bs, na, ny, nx, 5 + nc).
    Eval: returns (y, raw) with y (bs, sum(na * ny * nx), 5 + nc): xy = (sigmoid * 2 - 0.5 + grid) * stride,
    wh = (sigmoid * 2)^2 * anchor (pixels), sigmoid objectness, and class scores that are sigmoid (multi-label)
    or softmax (mutually exclusive, rows sum to 1) according to ``class_act``. With ``export = True`` only y.
    ``anchors`` is a buffer (nl, na, 2) in grid units (pixels / stride).
    """

    stride = None  # set by DetectionModel
    export = False  # export mode: return y only
    dynamic = False  # kept for compatibility; grids are always rebuilt from the input shape
    class_act = "sigmoid"  # class-level default so checkpoints that predate the attribute stay sigmoid

    def __init__(self, nc: int = 80, anchors: tuple = (), ch: tuple = (), inplace: bool = True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def forward(self, x: list[torch.Tensor]):
        """Apply the per-level convolutions and, in eval mode, decode boxes and scores."""
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                z.append(self._decode(x[i], i).view(bs, self.na * nx * ny, self.no))
        if self.training:
            return x
        return torch.cat(z, 1) if self.export else (torch.cat(z, 1), x)

    def _decode(self, p: torch.Tensor, i: int) -> torch.Tensor:
        """Decode one raw level (bs, na, ny, nx, no) into pixels, objectness and class scores."""
        _, _, ny, nx, _ = p.shape
        grid, anchor_grid = self._make_grid(nx, ny, i, p)
        if self.class_act == "softmax":  # sigmoid boxes and objectness, softmax class scores
            y, cls = p[..., :5].sigmoid(), [p[..., 5:].softmax(-1)]
        else:  # one sigmoid over the whole level, as YOLOv5 v6+ computes it: fewer graph nodes than per slice
            y, cls = p.sigmoid(), []
        xy, wh = (y[..., 0:2] * 2 - 0.5 + grid) * self.stride[i], (y[..., 2:4] * 2) ** 2 * anchor_grid
        return torch.cat([xy, wh, y[..., 4:], *cls], -1)

    def _make_grid(self, nx: int, ny: int, i: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell offsets (1, 1, ny, nx, 2) and anchor sizes in pixels (1, na, 1, 1, 2) for level i, which broadcast
        against the level's (bs, na, ny, nx, 2): an exported graph keeps a dynamic batch (OpenVINO folds an expanded
        grid's shape, batch 1 included, into the graph)."""
        d, t = like.device, like.dtype
        yv, xv = torch.meshgrid(_count(ny, d, t), _count(nx, d, t), indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)  # broadcast over batch and anchors, never expanded:
        anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2)  # a fixed 1 would pin the batch
        return grid, anchor_grid.to(t)


def _count(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """0, 1, ..., n - 1 in dtype, counted in float32 and cast: ONNX's Range has no float16 (an FP16 export traces
    this), and a float32 model's graph gets no Cast."""
    x = torch.arange(n, device=device, dtype=torch.float32)
    return x if dtype == torch.float32 else x.to(dtype)


class DetectionModel(nn.Module):
    """A YOLOv5 detector built from a model YAML (path or dict).

    Attributes used across the project: ``yaml`` (dict), ``model`` (nn.Sequential of layers with ``.i``, ``.f``,
    ``.type``, ``.np``), ``save`` (layer indices whose outputs are kept), ``stride`` (tensor), ``names`` (dict),
    ``nc``, ``hyp`` (dict; assigning it sets the Detect head's class-score activation from ``cls_loss_type``)
    and ``class_act``.
    """

    def __init__(self, cfg: str | Path | dict = "yolov5s.yaml", ch: int = 3, nc: int | None = None,
                 anchors: list | int | None = None, verbose: bool = False):
        super().__init__()
        self.yaml = deepcopy(cfg) if isinstance(cfg, dict) else load_model_yaml(cfg)
        if not isinstance(cfg, dict):
            self.yaml_file = Path(cfg).name
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml["nc"]:
            get_logger().info(f"Overriding model.yaml nc={self.yaml['nc']} with nc={nc}")
            self.yaml["nc"] = nc
        if anchors:
            get_logger().info(f"Overriding model.yaml anchors with anchors={anchors}")
            self.yaml["anchors"] = anchors
        self.model, self.save = parse_model(deepcopy(self.yaml), ch=[ch], verbose=verbose)
        self.nc = self.yaml["nc"]
        self.names = {i: str(i) for i in range(self.nc)}
        self.inplace = self.yaml.get("inplace", True)

        m = self.model[-1]
        if isinstance(m, Detect):
            s = 256
            m.inplace = self.inplace
            m.stride = torch.tensor([s / x.shape[-2] for x in self.forward(torch.zeros(1, ch, s, s))])
            _check_anchor_order(m)
            m.anchors /= m.stride.view(-1, 1, 1)
            self.stride = m.stride
            self._initialize_biases()
        initialize_weights(self)

    @property
    def hyp(self) -> dict:
        """Training hyperparameters attached to the model (YOLOv5's ``model.hyp``)."""
        return self.__dict__.get("hyp", {})

    @hyp.setter
    def hyp(self, value: dict) -> None:
        """Attach hyperparameters; ``cls_loss_type: ce`` switches the head to softmax class scores."""
        self.__dict__["hyp"] = value
        kind = (value or {}).get("cls_loss_type", "bce")
        self.model[-1].class_act = "softmax" if kind == "ce" else "sigmoid"

    @property
    def class_act(self) -> str:
        """'sigmoid' or 'softmax': how the Detect head turns class logits into scores at inference."""
        return self.model[-1].class_act

    def forward(self, x: torch.Tensor, augment: bool = False, profile: bool = False, visualize: bool = False):
        """Run the network; ``augment`` (eval mode) runs test-time augmentation and returns (y, None) as YOLOv5.

        profile and visualize are accepted for YOLOv5 API compatibility and ignored.
        """
        if augment:
            if self.training:
                raise ValueError("augment=True (test-time augmentation) needs the model in eval mode")
            m = self.model[-1]
            return augmented_inference(lambda t: self._forward_once(t)[0], x, m.stride.tolist(), m.na), None
        return self._forward_once(x)

    def _forward_once(self, x: torch.Tensor):
        """One pass through the layers; the Detect head's output as it is (raw in training, (y, raw) in eval)."""
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def fuse(self) -> DetectionModel:
        """Fold every BatchNorm into the convolution before it (for inference); returns self.

        Conv modules fold their own bn; in any nn.Sequential (torchvision's blocks) a Conv2d directly followed by a
        BatchNorm2d is folded the same way and the BatchNorm replaced by Identity.
        """
        for m in self.model.modules():
            if isinstance(m, common.Conv) and isinstance(m.bn, nn.BatchNorm2d):
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                m.bn = nn.Identity()
            elif isinstance(m, nn.Sequential):
                for j in range(len(m) - 1):
                    if isinstance(m[j], nn.Conv2d) and isinstance(m[j + 1], nn.BatchNorm2d):
                        m[j], m[j + 1] = fuse_conv_and_bn(m[j], m[j + 1]), nn.Identity()
        return self

    def info(self, verbose: bool = False, imgsz: int = 640) -> tuple[int, int, float]:
        """Log layers, parameters and GFLOPs."""
        return model_info(self, imgsz, name=Path(self.yaml.get("yaml_file", "") or "Model").stem or "Model",
                          verbose=True)

    def _apply(self, fn, *args, **kwargs):
        """Apply to() / cpu() / half() also to the Detect stride (a plain tensor attribute)."""
        self = super()._apply(fn, *args, **kwargs)
        m = self.model[-1]
        if isinstance(m, Detect) and m.stride is not None:
            m.stride = fn(m.stride)
            self.stride = m.stride
        return self

    def _initialize_biases(self, cf: torch.Tensor | None = None) -> None:
        """Prior biases (RetinaNet, Lin et al. 2017, Sec. 3.3): ~8 objects per 640 image, class prior 0.6 / nc."""
        m = self.model[-1]
        for mi, s in zip(m.m, m.stride):
            b = mi.bias.view(m.na, -1).detach()
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            b[:, 5:5 + m.nc] += math.log(0.6 / (m.nc - 0.99999)) if cf is None else torch.log(cf / cf.sum())
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)


Model = DetectionModel  # YOLOv5 checkpoints pickle models.yolo.Model


def _check_anchor_order(m: Detect) -> None:
    """Flip the anchor order of each level if anchor areas run opposite to the strides."""
    a = m.anchors.prod(-1).mean(-1).view(-1)
    da = a[-1] - a[0]
    ds = m.stride[-1] - m.stride[0]
    if da and (da.sign() != ds.sign()):
        get_logger().info("AutoAnchor: reversing anchor order")
        m.anchors[:] = m.anchors.flip(0)


def load_model_yaml(cfg: str | Path) -> dict:
    """Read a model YAML by path, or by bare name from models/ or models/hub/ (e.g. 'yolov5s.yaml',
    'yolov5s-ghost.yaml'); ConfigError when absent."""
    p = Path(cfg)
    if not p.suffix:
        p = p.with_suffix(".yaml")
    if not p.exists():
        here = Path(__file__).parent
        found = [d / p.name for d in (here, here / "hub") if (d / p.name).exists()]
        if not found:
            raise ConfigError(f"model config {cfg}: file not found (also looked in {here} and {here / 'hub'})")
        p = found[0]
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"model config {p}: not valid YAML ({e})") from e
    for key in ("nc", "anchors", "backbone", "head"):
        if key not in d:
            raise ConfigError(f"model config {p}: missing required key '{key}'")
    d["yaml_file"] = p.name
    return d


MODULES = {
    name: getattr(common, name)
    for name in ("Conv", "DWConv", "Bottleneck", "BottleneckCSP", "C3", "C3Ghost", "C3TR", "SPP", "SPPF", "Focus",
                 "GhostConv", "GhostBottleneck", "Concat", "Contract", "Expand", "ShuffleStem", "ShuffleBlock",
                 "MobileStem", "MobileNetV3Block")
}
MODULES["Detect"] = Detect


def _resolve_module(name: str | type) -> type:
    """Map a YAML module name ('C3', 'nn.Upsample', 'torch.nn.Upsample') to its class without eval()."""
    if not isinstance(name, str):
        return name
    if name in MODULES:
        return MODULES[name]
    for prefix in ("torch.nn.", "nn."):
        if name.startswith(prefix) and hasattr(nn, name[len(prefix):]):
            return getattr(nn, name[len(prefix):])
    raise ConfigError(f"model config: unknown module '{name}' (known: {', '.join(MODULES)}, nn.*)")


def _resolve_arg(a, names: dict):
    """Turn a YAML argument string into a value: 'nc'/'anchors' from the config, 'None', literals, else the string."""
    if not isinstance(a, str):
        return a
    if a in names:
        return names[a]
    with contextlib.suppress(ValueError, SyntaxError):
        return ast.literal_eval(a)
    return a


def _resolve_act(spec: str | None) -> nn.Module | None:
    """Parse an 'act' config value such as 'nn.SiLU()' or 'nn.LeakyReLU(0.1)' into a module."""
    if not spec:
        return None
    name, _, rest = str(spec).partition("(")
    args = ast.literal_eval(f"({rest[:-1]},)") if rest.strip(")") else ()
    return _resolve_module(name.strip())(*args)


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of divisor that is >= x."""
    return int(math.ceil(x / divisor) * divisor)


def parse_model(d: dict, ch: list[int], verbose: bool = True) -> tuple[nn.Sequential, list[int]]:
    """Build the layers of a YOLOv5 model dict; returns (nn.Sequential, sorted indices of layers to keep)."""
    log = get_logger()
    anchors, nc = d["anchors"], d["nc"]
    gd, gw = d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    if verbose:
        log.info(f"\n{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}")
    layers, save, c2 = [], [], ch[-1]
    for i, (f, n, m, args) in enumerate(d["backbone"] + d["head"]):
        m = _resolve_module(m)
        args = [_resolve_arg(a, {"nc": nc, "anchors": anchors, "None": None}) for a in args]
        n_repeats = n
        n = n_ = max(round(n * gd), 1) if n > 1 else n
        if m in common.LIGHT_BLOCKS:  # light backbones keep their papers' channels and repeats
            c1, c2, n = ch[f], args[0], n_repeats
            n_ = n
            args = [c1, *args]
        elif m in {Conv, common.DWConv, common.Bottleneck, BottleneckCSP, C3, C3Ghost, common.C3TR, SPP, SPPF,
                 common.Focus, common.GhostConv, common.GhostBottleneck, nn.ConvTranspose2d}:
            c1, c2 = ch[f], args[0]
            if c2 != no:
                c2 = make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if m in {BottleneckCSP, C3, C3Ghost, common.C3TR}:
                args.insert(2, n)
                n = 1
        elif m is nn.BatchNorm2d:
            args = [ch[f]]
        elif m is Concat:
            c2 = sum(ch[x] for x in f)
        elif m is Detect:
            args.append([ch[x] for x in f])
            if isinstance(args[1], int):  # number of anchors per level -> placeholder anchors
                args[1] = [list(range(args[1] * 2))] * len(f)
        elif m is Contract:
            c2 = ch[f] * args[0] ** 2
        elif m is Expand:
            c2 = ch[f] // args[0] ** 2
        else:
            c2 = ch[f]
        m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        t = str(m)[8:-2].replace("__main__.", "")
        m_.np = sum(x.numel() for x in m_.parameters())
        m_.i, m_.f, m_.type = i, f, t
        if verbose:
            log.info(f"{i:>3}{str(f):>18}{n_:>3}{m_.np:10.0f}  {t:<40}{str(args):<30}")
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    seq = nn.Sequential(*layers)
    act = _resolve_act(d.get("activation") or d.get("act"))
    if act is not None:  # a config-wide activation replaces the default SiLU of every Conv
        for mod in seq.modules():
            if isinstance(mod, Conv) and mod.act is Conv.default_act:
                mod.act = act
    return seq, sorted(save)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the model summary tool."""
    parser = argparse.ArgumentParser(description="Print a YOLOv5 model's layer table, parameters and GFLOPs")
    parser.add_argument("--cfg", type=str, default="yolov5s.yaml", help="model.yaml")
    parser.add_argument("--nc", type=int, default=None, help="override the number of classes")
    parser.add_argument("--imgsz", type=int, default=640, help="image size for the GFLOPs count")
    return parser.parse_args(argv)


def main(opt: argparse.Namespace) -> None:
    """Build the model, print its table and summary."""
    model = DetectionModel(opt.cfg, nc=opt.nc, verbose=True)
    model.info(imgsz=opt.imgsz)


if __name__ == "__main__":
    from utils.errors import SlideYoloError

    try:
        main(parse_opt())
    except SlideYoloError as e:
        sys.exit(f"models/yolo.py: {e}")
