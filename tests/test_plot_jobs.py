"""Tests for utils/eval/plot_jobs.py: plots drawn in forked workers are the same files as plots drawn inline."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from utils.eval.metrics import ap_per_class
from utils.eval.plot_jobs import MAX_WORKERS, PlotJobs, default_workers, fork_is_safe
from utils.plots import plot_confusion_matrix

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="worker processes are forked on Linux")


def write_pid(path: Path) -> None:
    """A job that records which process ran it."""
    path.write_text(str(os.getpid()))


def fail(message: str) -> None:
    """A job that raises."""
    raise ValueError(message)


def die_in_a_worker(parent: int, path: Path) -> None:
    """A job whose worker process dies; run in the parent, it writes its file."""
    if os.getpid() != parent:
        os._exit(3)
    path.write_text("drawn inline")


def hang_in_a_worker(parent: int, path: Path) -> None:
    """A job that never finishes in a worker; run in the parent, it writes its file."""
    if os.getpid() != parent:
        time.sleep(3600)
    path.write_text("drawn inline")


def curves_and_matrix(folder: Path, workers: int) -> dict[str, bytes]:
    """Draw the four curves and the confusion matrix of a fixed toy result through PlotJobs; the files' bytes."""
    rng = np.random.default_rng(0)
    tp = rng.random((200, 10)) < np.linspace(0.8, 0.2, 10)
    conf, pred_cls, target_cls = rng.random(200), rng.integers(0, 3, 200), rng.integers(0, 3, 150)
    matrix = rng.integers(0, 20, (4, 4)).astype(float)
    with PlotJobs(workers) as jobs:
        jobs.run(plot_confusion_matrix, matrix, folder / "confusion_matrix.png", ["a", "b", "c"])
        metrics = ap_per_class(tp, conf, pred_cls, target_cls, plot=True, save_dir=folder, names={0: "a", 1: "b"},
                               jobs=jobs)
    names = ("confusion_matrix.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png")
    return {"metrics": np.concatenate([np.ravel(m) for m in metrics]).tobytes(),
            **{n: (folder / n).read_bytes() for n in names}}


@linux_only
def test_workers_draw_the_same_files_as_inline(tmp_path):
    (tmp_path / "inline").mkdir(), (tmp_path / "forked").mkdir()
    inline = curves_and_matrix(tmp_path / "inline", workers=0)
    forked = curves_and_matrix(tmp_path / "forked", workers=2)
    assert inline.keys() == forked.keys()
    for name in inline:
        assert inline[name] == forked[name], name


@linux_only
def test_jobs_run_in_other_processes_and_finish_before_the_block_ends(tmp_path):
    with PlotJobs(2) as jobs:
        for i in range(3):
            jobs.run(write_pid, tmp_path / f"{i}.txt")
    pids = {int((tmp_path / f"{i}.txt").read_text()) for i in range(3)}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_no_workers_runs_inline(tmp_path):
    with PlotJobs(0) as jobs:
        jobs.run(write_pid, tmp_path / "pid.txt")
        assert int((tmp_path / "pid.txt").read_text()) == os.getpid()  # done before run() returned


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=linux_only)])
def test_a_failing_job_raises_its_error(workers):
    with pytest.raises(ValueError, match="no such column"):
        with PlotJobs(workers) as jobs:
            jobs.run(fail, "no such column")


@linux_only
def test_a_dead_worker_costs_only_time(tmp_path):
    with PlotJobs(2) as jobs:
        jobs.run(die_in_a_worker, os.getpid(), tmp_path / "a.txt")
        jobs.run(write_pid, tmp_path / "b.txt")
    assert (tmp_path / "a.txt").read_text() == "drawn inline"  # redrawn in this process after the worker died
    assert (tmp_path / "b.txt").is_file()


@linux_only
def test_a_stuck_worker_is_killed_and_its_plot_drawn_inline(tmp_path):
    t = time.perf_counter()
    with PlotJobs(1, timeout_s=2.0) as jobs:
        jobs.run(hang_in_a_worker, os.getpid(), tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_text() == "drawn inline"
    assert time.perf_counter() - t < 60


def test_worker_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("SLIDEYOLO_PLOT_WORKERS", "0")
    assert default_workers() == 0 and PlotJobs().workers == 0
    monkeypatch.setenv("SLIDEYOLO_PLOT_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("SLIDEYOLO_PLOT_WORKERS", "64")
    assert PlotJobs().workers in (0, MAX_WORKERS)  # never more workers than figures
    monkeypatch.setenv("SLIDEYOLO_PLOT_WORKERS", "two")
    assert default_workers() == 0  # logged, then inline
    monkeypatch.delenv("SLIDEYOLO_PLOT_WORKERS")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_workers() == (2 if cpus > 1 else 0)


def test_no_fork_where_it_is_unsafe(monkeypatch):
    import torch

    monkeypatch.setattr(sys, "platform", "win32")
    assert fork_is_safe() == (False, "fork is only used on Linux, not win32")
    assert PlotJobs(2).workers == 0
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert not fork_is_safe()[0] and PlotJobs(2).workers == 0
    if sys.version_info >= (3, 11):
        assert fork_is_safe()[1] == "CUDA is initialised"
