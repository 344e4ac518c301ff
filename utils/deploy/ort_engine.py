"""Running a ``.pt`` model through onnxruntime on the CPU: the fast path behind val.py, detect.py and the hub API.

PyTorch's eager CPU path is several times slower than onnxruntime on the same YOLOv5 graph (docs/PERFORMANCE.md has
the figures), so ``DetectMultiBackend(weights.pt, engine="auto")`` on a CPU exports the loaded, fused model once to a
dynamic-shape ONNX file and runs that. The file is cached under ``$SLIDEYOLO_CACHE`` (default
``~/.cache/slideyolo/onnx``), keyed by the weights file (resolved path, size, modification time), torch's version
and this exporter's version, so a second run on the same weights starts at once and a retrained file is exported
again. Names, strides and ``class_act`` still come from the ``.pt`` model; softmax (ce) models keep it in the graph.

Engines: ``torch`` (eager PyTorch), ``onnxruntime``, or ``auto`` (onnxruntime on a CPU device for FP32, torch
otherwise). When onnxruntime cannot be used (not installed, an export error, an unwritable cache) the backend logs
the reason and runs PyTorch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from utils.deploy.export import export_onnx, onnx_session
from utils.errors import ConfigError
from utils.log import get_logger

ENGINES = ("auto", "torch", "onnxruntime")
EXPORT_VERSION = 1  # bump when the exported graph changes, so stale cache files are not reused
TRACE_SIZE = 320  # the example input the dynamic export is traced with (any multiple of 64 works)


def cache_root() -> Path:
    """Folder of the cached ONNX files: $SLIDEYOLO_CACHE/onnx, else ~/.cache/slideyolo/onnx."""
    base = os.environ.get("SLIDEYOLO_CACHE") or Path.home() / ".cache" / "slideyolo"
    return Path(base).expanduser() / "onnx"


def cache_key(weights: Path) -> str:
    """A key that changes whenever the weights file, torch or the exporter changes."""
    st = weights.stat()
    text = f"{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}|torch {torch.__version__}|v{EXPORT_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def resolve_engine(engine: str, device: torch.device, fp16: bool) -> str:
    """'torch' or 'onnxruntime' for the requested engine on this device; ConfigError for an unknown name."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "onnxruntime" if device.type == "cpu" and not fp16 else "torch"
    return engine


def cached_onnx(model: nn.Module, weights: Path) -> Path:
    """The cached dynamic ONNX export of model (loaded from weights); exported atomically on first use."""
    folder = cache_root()
    file = folder / f"{weights.stem}-{cache_key(weights)}.onnx"
    if file.is_file():
        return file
    folder.mkdir(parents=True, exist_ok=True)
    im = torch.zeros(1, 3, TRACE_SIZE, TRACE_SIZE, device=next(model.parameters()).device)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        export_onnx(model.float(), im, tmp, dynamic=True)
        os.replace(tmp, file)
    finally:
        Path(tmp).unlink(missing_ok=True)
    get_logger().info(f"{weights.name}: exported once to {file} for the onnxruntime engine")
    return file


def pt_session(model: nn.Module, weights: Path, device: torch.device) -> tuple[Optional[Any], str]:
    """(onnxruntime session, '') for model, or (None, reason) when the onnxruntime engine cannot be used."""
    try:
        return onnx_session(cached_onnx(model, weights), device, threads=torch.get_num_threads()), ""
    except ImportError as e:
        return None, f"onnxruntime/onnx not installed ({e.name})"
    except Exception as e:  # an operator the exporter does not support, a read-only cache, a broken install
        return None, f"{type(e).__name__}: {e}"
