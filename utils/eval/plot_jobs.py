"""Plots that run beside each other: validation's PR / F1 / P / R curves and confusion matrix in forked processes.

Rendering those five figures is single-threaded matplotlib work (about a quarter of a val.py run on 2 cores); it
depends only on the finished metrics, so the figures are drawn by a small pool of forked worker processes while the
main process goes on, and ``PlotJobs`` waits for them on exit. The pixels are the same as when drawn in the main
process. Forking is used only where it is safe and can pay: Linux, Python 3.11+, two or more usable CPUs, not inside a
daemonic process (a dataloader worker), and not once CUDA or torch.distributed is initialised (training on a GPU or
with DDP keeps its final plots inline). Everywhere else, and with ``SLIDEYOLO_PLOT_WORKERS=0``, the same calls run
inline, one after the other. A plot can never cost the run: if a worker cannot be forked, dies or hangs, its figures
are drawn inline instead (with a logged warning).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import warnings
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Optional

from utils.log import get_logger

MAX_WORKERS = 5  # validation draws five figures
TIMEOUT_S = 300.0  # a worker that has not finished its figures by then is presumed stuck


def fork_is_safe() -> tuple[bool, str]:
    """(True, "") where plotting in forked processes is safe here, else (False, the reason)."""
    if not sys.platform.startswith("linux"):
        return False, f"fork is only used on Linux, not {sys.platform}"
    if sys.version_info < (3, 11):
        return False, "Python < 3.11 (its process pool can deadlock when forking after the first job)"
    if mp.current_process().daemon:
        return False, "a daemonic process cannot have children"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return False, "CUDA is initialised"
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return False, "torch.distributed is initialised"
    return True, ""


def default_workers() -> int:
    """Worker processes wanted: SLIDEYOLO_PLOT_WORKERS if set (0 = inline), else 2 with 2+ usable CPUs, else 0."""
    env = os.environ.get("SLIDEYOLO_PLOT_WORKERS")
    if env is not None:
        try:
            return max(int(env), 0)
        except ValueError:
            get_logger().warning(f"SLIDEYOLO_PLOT_WORKERS={env!r} is not an integer; plotting inline")
            return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 if cpus > 1 else 0


@dataclass
class _Job:
    """One scheduled call and its future."""

    fn: Callable
    args: tuple
    kwargs: dict
    future: Future


class PlotJobs:
    """Run plotting calls in forked worker processes (or inline); ``with PlotJobs() as jobs: jobs.run(f, *args)``.

    Leaving the block waits for every call; an exception raised by a plotting call itself is raised there, as it
    would have been inline. Calls must be module-level functions with picklable arguments (numpy arrays, paths,
    names); arguments are pickled shortly after ``run`` returns, so do not change them in place afterwards.
    """

    def __init__(self, workers: Optional[int] = None, timeout_s: float = TIMEOUT_S):
        wanted = default_workers() if workers is None else max(int(workers), 0)
        safe, reason = fork_is_safe() if wanted else (False, "")
        if wanted and not safe:
            get_logger().debug(f"plots drawn inline: {reason}")
        self.workers = min(wanted, MAX_WORKERS) if safe else 0
        self.timeout_s = timeout_s
        self._pool: Optional[ProcessPoolExecutor] = None
        self._jobs: list[_Job] = []

    def __enter__(self) -> PlotJobs:
        if self.workers > 0:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork"))
        return self

    def run(self, fn: Callable, *args: Any, **kwargs: Any) -> None:
        """Schedule fn(*args, **kwargs) on a worker, or call it now when there are none (or the pool is broken)."""
        if self._pool is not None:
            try:
                with warnings.catch_warnings():  # Python 3.12+ warns about fork in a threaded process; it only plots
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._jobs.append(_Job(fn, args, kwargs, self._pool.submit(fn, *args, **kwargs)))
                return
            except (OSError, RuntimeError, BrokenProcessPool) as e:
                self._give_up(f"could not start a plot worker ({e})")
        fn(*args, **kwargs)

    def _give_up(self, why: str) -> None:
        """Stop using (and kill) the workers; the rest of the figures are drawn inline."""
        get_logger().warning(f"WARNING {why}; drawing the plots in the main process")
        pool, self._pool = self._pool, None
        if pool is not None:
            for p in list(getattr(pool, "_processes", {}).values()):
                p.kill()
            pool.shutdown(wait=False, cancel_futures=True)

    def _outcome(self, job: _Job) -> Optional[BaseException]:
        """The job's own exception (None when it drew its figure), redrawing it inline if its worker failed."""
        try:
            error = job.future.exception(timeout=self.timeout_s)
        except FutureTimeout:
            self._give_up(f"a plot worker did not finish within {self.timeout_s:.0f} s")
            error = BrokenProcessPool("timed out")
        except CancelledError:  # cancelled by _give_up after another job's failure
            error = BrokenProcessPool("cancelled")
        if isinstance(error, BrokenProcessPool):
            if self._pool is not None:
                self._give_up(f"a plot worker died ({error})")
            job.fn(*job.args, **job.kwargs)
            return None
        return error

    def __exit__(self, exc_type, exc, tb) -> None:
        errors: list[Optional[BaseException]] = []
        try:
            errors = [self._outcome(job) for job in self._jobs]
        finally:
            self._close()
        first = next((e for e in errors if e is not None), None)
        if first is not None and exc is None:
            raise first

    def _close(self) -> None:
        """Shut the pool down once every job is done."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
