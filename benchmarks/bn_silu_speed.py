"""BatchNorm (training) + SiLU, forward and backward: the fused kernel (models/bn_silu.py) against ATen's kernels.

Usage:
    python benchmarks/bn_silu_speed.py                      # yolov5n's shapes at 320 px, batch 8 (one --cpu-dp part)
    python benchmarks/bn_silu_speed.py --batch 16 --imgsz 640 --threads 2 --rounds 8

For each (channels, size) of a yolov5n Conv block's output at --imgsz, both sides run forward and backward on the
same channels_last tensors, alternately, --rounds times; the median per side is printed, then the sums.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from models import bn_silu  # noqa: E402
from models.common import Conv  # noqa: E402

# (channels, stride) of yolov5n's Conv outputs: the stem's 16 at /2, then 32 / 64 / 128 / 256 at /4 ... /32, and the
# C3 blocks' halves (16 at /4, 32 at /8, 64 at /16, 128 at /32)
YOLOV5N_SHAPES = [(16, 2), (32, 4), (16, 4), (64, 8), (32, 8), (128, 16), (64, 16), (256, 32), (128, 32)]


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8, help="images per call (8: one part of train.py's default)")
    p.add_argument("--imgsz", type=int, default=320, help="input image size the shapes are taken at")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: one --cpu-dp part)")
    p.add_argument("--rounds", type=int, default=10, help="timed alternating rounds per shape (after 2 untimed)")
    return p.parse_args(argv)


def time_step(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> float:
    """Seconds for one forward and backward of fn at x."""
    x.grad = None
    t = time.perf_counter()
    fn(x).backward(grad)
    return time.perf_counter() - t


def compare(c: int, hw: int, batch: int, rounds: int) -> tuple[float, float]:
    """Median ms of (fused, ATen) forward + backward for one Conv block's BatchNorm+SiLU at (batch, c, hw, hw)."""
    block = Conv(c, c).train()
    x = torch.randn(batch, c, hw, hw).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn_like(x)
    fns = {"fused": lambda t: bn_silu.bn_silu(block.bn, t), "aten": lambda t: block.act(block.bn(t))}
    sides: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds + 2):
        for name, fn in fns.items():
            dt = time_step(fn, x, grad)
            if r >= 2:
                sides[name].append(dt * 1000)
    return statistics.median(sides["fused"]), statistics.median(sides["aten"])


def main(opt: argparse.Namespace) -> tuple[float, float]:
    """Print the per-shape and summed medians; return the sums (fused, ATen) in ms."""
    torch.set_num_threads(opt.threads)
    if not bn_silu.prepare():
        raise SystemExit(f"bn_silu_speed.py: the fused kernel is unavailable here: {bn_silu.KERNEL.reason}")
    print(f"BatchNorm+SiLU forward+backward, batch {opt.batch}, {opt.threads} thread(s), median of {opt.rounds}")
    print(f"{'shape (C, H, W)':>18} {'fused ms':>9} {'ATen ms':>9} {'ratio':>6}")
    total_fused = total_aten = 0.0
    for c, s in YOLOV5N_SHAPES:
        hw = max(1, opt.imgsz // s)
        fused, aten = compare(c, hw, opt.batch, opt.rounds)
        total_fused, total_aten = total_fused + fused, total_aten + aten
        print(f"{str((c, hw, hw)):>18} {fused:9.2f} {aten:9.2f} {fused / aten:6.2f}")
    print(f"{'sum':>18} {total_fused:9.2f} {total_aten:9.2f} {total_fused / total_aten:6.2f}")
    return total_fused, total_aten


if __name__ == "__main__":
    main(parse_opt())
