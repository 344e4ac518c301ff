"""Ctrl-C (or SIGTERM: kill, timeout, a job scheduler) during training: stop at once, keep the last checkpoint, and
say how to continue.

A Ctrl-C reaches every process of the terminal's group: this one and its dataloader workers. The workers ignore it
(``utils.data.dataset.seed_worker``), so they are shut down by this process instead of dying mid-batch (which made
PyTorch report "DataLoader worker exited unexpectedly"). Python may swallow the KeyboardInterrupt when the signal
lands inside a garbage-collector callback ("Exception ignored in ..."); ``InterruptGuard`` also remembers it, and
the epoch loop calls ``check()`` each batch, so training still stops. ``TrainingInterrupted`` carries the one-line
hint the command-line scripts print.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

from utils.checkpoint import STOP_SIGNALS, is_resumable, load_checkpoint, replaceable_handler


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training; str(e) says what was kept and the command that continues it, signum which
    signal it was (train.py exits with 128 + signum, as the shell reports a process the signal ended)."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class InterruptGuard:
    """While active (``with InterruptGuard() as g``), SIGINT and SIGTERM raise KeyboardInterrupt and set
    ``g.requested`` (and ``g.signum``)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = signal.SIGINT
        self._previous: dict = {}
        self._sigchld = None  # PyTorch's dataloader-worker check, set aside once a stop came

    def __enter__(self) -> InterruptGuard:
        """Install the handler where it is ours to replace (``utils.checkpoint.replaceable_handler``)."""
        for s in STOP_SIGNALS:
            if replaceable_handler(s) is not None:  # main thread, and not a signal ignored on purpose
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        """Restore the handlers that were there before."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        if self._sigchld is not None:
            signal.signal(signal.SIGCHLD, self._sigchld)
        self._previous, self._sigchld = {}, None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: remember the request, then interrupt whatever runs. A SIGTERM sent to the whole
        process group ends the dataloader workers too (PyTorch's worker handler), so PyTorch's SIGCHLD check, which
        would raise "worker killed by signal" into whatever runs next (the resume hint), is set aside until exit."""
        self.requested, self.signum = True, signum
        if hasattr(signal, "SIGCHLD") and self._sigchld is None:
            self._sigchld = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if a stop came (also when its first KeyboardInterrupt was swallowed)."""
        if self.requested:
            raise KeyboardInterrupt


def resume_hint(weights_dir: Path, world_size: int = 1) -> str:
    """What an interrupted run kept in weights_dir and the command that continues it (under torchrun for DDP)."""
    last = Path(weights_dir) / "last.pt"
    try:
        ckpt = load_checkpoint(last, mmap=True) if last.is_file() else None
    except Exception:  # noqa: BLE001 - a file we cannot read is reported as no checkpoint, the hint must not fail
        ckpt = None
    if ckpt and not is_resumable(ckpt):  # every epoch done: Ctrl-C cut the final validation of best.pt or the plots
        best = Path(weights_dir) / "best.pt"
        data = (ckpt.get("opt") or {}).get("data") or "<its data YAML>"
        return (f"no resumable checkpoint in {weights_dir}: every epoch had finished, and the interruption cut "
                f"short the final validation or plots; validate with: python val.py --weights {best} --data {data}")
    if not ckpt:
        return (f"no resumable checkpoint in {weights_dir} (interrupted before the first epoch ended, or run with "
                "--nosave)")
    launcher = f"torchrun --nproc_per_node {world_size}" if world_size > 1 else "python"
    return f"{last} holds epoch {int(ckpt['epoch'])}; continue with: {launcher} train.py --resume {last}"
