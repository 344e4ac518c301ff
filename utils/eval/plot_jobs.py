"""Plots that run beside each other: validation's PR / F1 / P / R curves and confusion matrix in forked processes.

Rendering those five figures is single-threaded matplotlib work (about a quarter of a val.py run on 2 cores); it
depends only on the finished metrics, so the figures are drawn by a small pool of forked worker processes while the
main process goes on, and ``PlotJobs`` waits for them on exit. The pixels are the same as when drawn in the main
process. Where forking is unsafe or pointless (not Linux, one CPU, inside a daemonic process such as a dataloader
worker, ``workers=0``, or ``SLIDEYOLO_PLOT_WORKERS=0``) the same calls run inline, one after the other.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Optional

from utils.log import get_logger


def default_workers() -> int:
    """Worker processes for plotting: SLIDEYOLO_PLOT_WORKERS if set, else 2 on Linux with 2+ usable CPUs, else 0."""
    env = os.environ.get("SLIDEYOLO_PLOT_WORKERS")
    if env is not None:
        try:
            return max(int(env), 0)
        except ValueError:
            get_logger().warning(f"SLIDEYOLO_PLOT_WORKERS={env!r} is not an integer; plotting inline")
            return 0
    if not sys.platform.startswith("linux") or mp.current_process().daemon:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(2, cpus) if cpus > 1 else 0


class PlotJobs:
    """Run plotting calls in forked worker processes (or inline); ``with PlotJobs() as jobs: jobs.run(f, *args)``.

    Leaving the block waits for every call; the first exception raised by a call is raised there, as it would have
    been inline. Calls must be module-level functions with picklable arguments (numpy arrays, paths, names).
    """

    def __init__(self, workers: Optional[int] = None):
        self.workers = default_workers() if workers is None else max(int(workers), 0)
        self._pool: Optional[ProcessPoolExecutor] = None
        self._futures: list[Future] = []

    def __enter__(self) -> PlotJobs:
        if self.workers > 0:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork"))
        return self

    def run(self, fn: Callable, *args: Any, **kwargs: Any) -> None:
        """Schedule fn(*args, **kwargs) on a worker, or call it now when there are none."""
        if self._pool is None:
            fn(*args, **kwargs)
            return
        with warnings.catch_warnings():  # Python 3.12+ warns about fork in a threaded process; the child only plots
            warnings.simplefilter("ignore", DeprecationWarning)
            self._futures.append(self._pool.submit(fn, *args, **kwargs))

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._pool is None:
            return
        try:
            errors = [f.exception() for f in self._futures]
        finally:
            self._pool.shutdown(wait=True)
        first = next((e for e in errors if e is not None), None)
        if first is not None and exc is None:
            raise first
