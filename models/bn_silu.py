"""BatchNorm2d (training mode) and SiLU as one CPU kernel, for ``Conv`` blocks while training on the CPU.

On a CPU, training yolov5n spends about a fifth of each step in BatchNorm and SiLU (docs/PERFORMANCE.md), which
ATen runs as four separate passes over the activations forward and backward and which are bound by memory and by
``exp``. ``models/csrc/bn_silu.cpp`` does both in one forward and one backward operator over channels_last float32
tensors (registered in ``torch.ops``, paired here by ``BnSiluFunction``): it keeps only the convolution's output for
the backward pass and recomputes the rest, and evaluates the sigmoid with ATen's vectorised 20-ulp ``exp``. Results
agree with ``silu(batch_norm(x))`` to about 1e-5 (relative), running
statistics and ``num_batches_tracked`` are updated as ``nn.BatchNorm2d`` does.

The kernel is compiled once per machine by ``torch.utils.cpp_extension`` (the system C++ compiler and ninja,
about 15 s on 2 cores: the source includes ATen's tensor and operator-registration headers only, not
``torch/extension.h``, which took 53 s; cached under ``$TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``, one build per checkout and source text). ``prepare`` does that
and switches it on; it is off until then, and wherever it cannot be used (no compiler, a CPU without AVX2 and FMA,
CUDA, bfloat16, eval mode, no autograd) ``Conv`` runs ATen's kernels unchanged. ``train.py`` prepares it on the
CPU unless ``--eager-bn`` is given.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from utils.log import get_logger

SOURCE = Path(__file__).parent / "csrc" / "bn_silu.cpp"
CFLAGS = ["-O3", "-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]


def extension_name(source: Path = SOURCE) -> str:
    """The build's name: one per source text and checkout, so that two checkouts (a benchmark's baseline worktree)
    never rebuild each other's copy in torch's extension cache."""
    digest = hashlib.sha1(str(source.resolve()).encode() + source.read_bytes() + " ".join(CFLAGS).encode())
    return f"yolo_bn_silu_{digest.hexdigest()[:12]}"


@dataclass
class KernelState:
    """The compiled extension (None until prepared or where it failed) and whether Conv uses it."""

    ext: object | None = None  # torch.ops.<extension name>: bn_silu_forward and bn_silu_backward
    active: bool = False
    reason: str = "not prepared"
    build_error: str = ""  # set once a build failed, so that later runs in the process do not try again


KERNEL = KernelState()  # process-wide, like torch.backends flags: set only by prepare() and disable()


def unavailable_reason() -> str:
    """Why the kernel cannot be built on this machine ("" where it can)."""
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512"):
        return f"the CPU's vector capability is {cap}, the kernel needs AVX2 and FMA"
    if not SOURCE.is_file():
        return f"{SOURCE} is missing"
    return ""


def build() -> object:
    """Compile (or load the cached build of) the extension and return its operators' namespace in ``torch.ops``;
    raises what the compiler or loader raised."""
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)  # its import warns about a missing CUDA runtime, which a CPU build never needs
    try:
        from torch.utils.cpp_extension import load
    finally:
        cpp_logger.setLevel(level)
    jobs = os.environ.get("MAX_JOBS")
    os.environ["MAX_JOBS"] = jobs or "2"  # one source file: two jobs are plenty, and the setting is put back
    try:
        load(extension_name(), [str(SOURCE)], extra_cflags=CFLAGS, is_python_module=False, verbose=False)
    finally:
        if jobs is None:
            del os.environ["MAX_JOBS"]
    return getattr(torch.ops, extension_name())


def build_error_line(e: Exception) -> str:
    """The line of a failed build that says why: the compiler's first 'error' line, else the message's last line."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or [type(e).__name__]
    compiler = [line for line in lines if "error:" in line]
    return (compiler[0] if compiler else lines[-1])[:200]


def prepare(enabled: bool = True) -> bool:
    """Build and switch on the fused kernel (enabled=False: switch it off); True when Conv will use it."""
    if not enabled:
        return disable("switched off (--eager-bn)")
    if KERNEL.ext is None:
        reason = KERNEL.build_error or unavailable_reason()
        if not reason:
            get_logger().info(f"Fused BatchNorm+SiLU kernel: loading the cached build of {SOURCE.name}, or compiling "
                              "it where there is none yet (once per checkout, about 15 s)")
            try:
                KERNEL.ext = build()
            except Exception as e:  # no compiler, no ninja, a failed build: train with ATen's kernels
                reason = KERNEL.build_error = f"it could not be built ({type(e).__name__}: {build_error_line(e)})"
        if reason:
            get_logger().warning(f"Fused BatchNorm+SiLU kernel off: {reason}; training with ATen's kernels")
            return disable(reason)
    if not KERNEL.active:
        get_logger().info(f"Fused BatchNorm+SiLU kernel on ({SOURCE.name}; --eager-bn for ATen's kernels)")
    KERNEL.active, KERNEL.reason = True, ""
    return True


def disable(reason: str) -> bool:
    """Switch the fused kernel off (Conv runs ATen's kernels); returns False."""
    KERNEL.active, KERNEL.reason = False, reason
    return False


def applies(bn: nn.Module, act: nn.Module, y: torch.Tensor) -> bool:
    """Whether act(bn(y)) can run as the fused kernel: on, training with autograd, SiLU after a BatchNorm2d with
    affine parameters, running statistics and a momentum, y channels_last float32 on the CPU, > 1 value per
    channel."""
    return (KERNEL.active and bn.training and torch.is_grad_enabled() and type(act) is nn.SiLU
            and type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats and bn.momentum is not None
            and y.dtype == torch.float32 and y.device.type == "cpu" and y.dim() == 4
            and y.is_contiguous(memory_format=torch.channels_last) and y.numel() > y.shape[1])


class BnSiluFunction(torch.autograd.Function):
    """silu(batch_norm(x)) in training mode, forward and backward by the compiled operators (formulas in
    models/csrc/bn_silu.cpp); the running statistics and num_batches_tracked are updated in place."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, num_batches, momentum: float, eps: float):
        a, mean, invstd = KERNEL.ext.bn_silu_forward(x, weight, bias, running_mean, running_var, num_batches,
                                                     momentum, eps)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        return a

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise RuntimeError("the fused BatchNorm+SiLU kernel has no double backward (create_graph=True): "
                               "train with --eager-bn (models/bn_silu.py)")
        gx, gw, gb = KERNEL.ext.bn_silu_backward(grad, *ctx.saved_tensors)
        return gx, gw, gb, None, None, None, None, None


def bn_silu(bn: nn.BatchNorm2d, y: torch.Tensor) -> torch.Tensor:
    """silu(bn(y)) in training mode by the fused kernel (check ``applies`` first)."""
    return BnSiluFunction.apply(y, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked,
                                float(bn.momentum), float(bn.eps))
