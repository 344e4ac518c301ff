"""Checkpoints: atomic saving, loading official YOLOv5 and our own .pt files, stripping optimizers.

A checkpoint is a dict (see docs/ARCHITECTURE.md) whose ``model`` / ``ema`` entries are pickled
``models.yolo.DetectionModel`` objects, as YOLOv5 writes them. Loading one runs ``torch.load(weights_only=False)``,
i.e. unpickling, which can execute code: load only checkpoints you trust.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Callable, Iterator

import torch
from torch import nn

from utils.errors import CheckpointError
from utils.paths import write_atomic

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; kill, timeout and job schedulers


def replaceable_handler(signum: int = signal.SIGINT) -> Callable | int | None:
    """The handler of signum in place when this thread may put its own: in the main thread (the one Python runs
    signal handlers in), over a handler that does not ignore the signal (SIGINT under nohup or `cmd &`); else None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    current = signal.getsignal(signum)
    return None if current in (signal.SIG_IGN, None) else current


@contextmanager
def deferred_stop() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) or SIGTERM that arrives inside the block and deliver it to the previous handler when
    the block ends; a second one is delivered at once (a save stuck on a slow disk can still be stopped). Signals
    whose handler is not ours to replace (``replaceable_handler``) are left alone. Nested blocks hold until the
    outermost ends."""
    previous = {s: h for s in STOP_SIGNALS if (h := replaceable_handler(s)) is not None}
    if not previous:
        yield
        return
    held: list[tuple[int, FrameType | None]] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if held:
            raise KeyboardInterrupt
        held.append((signum, frame))

    for s in previous:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            _deliver(previous[held[0][0]], *held[0])


def _deliver(handler: Callable | int, signum: int, frame: FrameType | None) -> None:
    """Run a held signal's handler: a Python one (the default SIGINT handler, train.py's guard: they raise
    KeyboardInterrupt), or the system default (SIGTERM's: the process ends) by sending the signal again."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)


def save_checkpoint(obj: dict, path: str | Path) -> Path:
    """Write obj with torch.save to a temporary file in the same folder, fsync it, then rename over path.

    A crash mid-write leaves the previous file intact, never a truncated one; the temporary file of a writer that was
    killed (SIGKILL: no exception to clean up after) is removed by the next successful save of path. A Ctrl-C or
    SIGTERM during the write takes effect once the file is complete (an interrupted torch.save raises a RuntimeError
    from its zip writer instead of the KeyboardInterrupt).
    """
    return _write_checkpoint(path, lambda f: torch.save(obj, f))


def copy_checkpoint(src: str | Path, path: str | Path) -> Path:
    """Copy the checkpoint file src to path as save_checkpoint writes one (atomically, Ctrl-C and SIGTERM
    deferred): best.pt from the epoch's last.pt without pickling the same dict twice."""
    with open(src, "rb") as f:
        return _write_checkpoint(path, lambda out: shutil.copyfileobj(f, out, 1 << 20))


def _write_checkpoint(path: str | Path, write: Callable) -> Path:
    """write_atomic(path, write) with Ctrl-C and SIGTERM deferred, then remove temporary files a killed earlier
    writer left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with deferred_stop():
        write_atomic(path, write)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a killed save before this one
        if stale.stat().st_mtime < started:
            stale.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Unpickle a trusted checkpoint file into a dict; CheckpointError names the file when it is missing or bad.

    mmap: map the tensors' storage instead of reading it, for a quick look at a checkpoint's epoch and options
    (files in PyTorch's legacy format, which cannot be mapped, are read whole).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights {path}: file not found (this project never downloads weights; "
                              "pass the path of a local .pt file)")
    try:
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
        except RuntimeError as e:
            if not mmap or "mmap" not in str(e):
                raise
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, not a torch file, missing classes
        reason = f"{type(e).__name__}: {e}"
        raise CheckpointError(f"weights {path}: cannot be read as a PyTorch checkpoint ({reason})") from e
    if isinstance(ckpt, nn.Module):
        ckpt = {"model": ckpt}
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"weights {path}: holds a {type(ckpt).__name__}, not a checkpoint (a dict with a "
                              "'model' or 'ema' network)")
    if not isinstance(ckpt.get("ema") or ckpt.get("model"), nn.Module):
        raise CheckpointError(f"weights {path}: no 'model' or 'ema' network inside (keys: {list(ckpt)[:8]})")
    return ckpt


def attempt_load(weights: str | Path, device: str | torch.device = "cpu", fuse: bool = True) -> nn.Module:
    """Load a YOLOv5-style checkpoint (EMA weights when present) as an FP32 eval model, Conv+BN fused if fuse.

    Unpickling executes code from the file: only load trusted checkpoints.
    """
    ckpt = load_checkpoint(weights)
    model = (ckpt.get("ema") or ckpt["model"]).float()
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    names = getattr(model, "names", None)
    if isinstance(names, (list, tuple)):
        model.names = dict(enumerate(names))
    if fuse and hasattr(model, "fuse"):
        model.fuse()
    return model.to(device).eval()


def is_resumable(ckpt: dict) -> bool:
    """True for the last.pt of an unfinished run: it keeps its optimizer and epoch (``strip_optimizer`` drops both)
    and, where it records its options, epochs remain."""
    epoch, epochs = int(ckpt.get("epoch", -1)), (ckpt.get("opt") or {}).get("epochs")
    return ckpt.get("optimizer") is not None and epoch >= 0 and (epochs is None or epoch + 1 < int(epochs))


def strip_optimizer(path: str | Path) -> Path:
    """Drop optimizer state and keep an FP16 model (the EMA when present) in place, for a smaller final file."""
    ckpt = load_checkpoint(path)
    if ckpt.get("ema") is not None:
        ckpt["model"] = ckpt["ema"]
    for key in ("optimizer", "ema", "updates"):
        ckpt[key] = None
    ckpt["epoch"] = -1
    ckpt["model"].half()
    for p in ckpt["model"].parameters():
        p.requires_grad = False
    return save_checkpoint(ckpt, path)
