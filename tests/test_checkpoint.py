"""utils/checkpoint.py: atomic saves that never leave a truncated file or, after a killed save, a stray temp file."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from utils.checkpoint import copy_checkpoint, deferred_stop, load_checkpoint, save_checkpoint


def test_a_failed_save_keeps_the_previous_file_and_no_temp_file(tmp_path):
    path = save_checkpoint({"model": torch.nn.Linear(2, 2), "epoch": 1}, tmp_path / "last.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"model": torch.nn.Linear(2, 2), "epoch": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_best_pt_is_a_copy_of_the_epochs_last_pt_file(tmp_path):
    last = save_checkpoint({"model": torch.nn.Linear(2, 2), "epoch": 7}, tmp_path / "last.pt")
    best = tmp_path / "best.pt"
    best.write_bytes(b"an older best.pt")
    assert copy_checkpoint(last, best) == best and best.read_bytes() == last.read_bytes()
    assert load_checkpoint(best)["epoch"] == 7 and sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
    with pytest.raises(FileNotFoundError):
        copy_checkpoint(tmp_path / "missing.pt", best)
    assert load_checkpoint(best)["epoch"] == 7  # untouched


def test_the_next_save_removes_a_killed_saves_temp_file(tmp_path):
    stale = tmp_path / ".best.pt.x1y2z3.tmp"  # what a save killed by SIGTERM leaves (no exception ran)
    stale.write_bytes(b"half a checkpoint")
    old = time.time() - 60
    os.utime(stale, (old, old))
    other = tmp_path / ".last.pt.a1b2.tmp"  # another file's temp is not this save's business
    other.write_bytes(b"")
    os.utime(other, (old, old))
    save_checkpoint({"model": torch.nn.Linear(2, 2)}, tmp_path / "best.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.pt.a1b2.tmp", "best.pt"]


class _PressesCtrlC:
    """Pickles as 0, sending this process a SIGINT while torch.save writes it (a Ctrl-C mid-save)."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return int, (0,)


def test_a_ctrl_c_during_a_save_takes_effect_once_the_file_is_complete(tmp_path):
    path = tmp_path / "last.pt"
    with pytest.raises(KeyboardInterrupt):  # not torch's "unexpected pos" RuntimeError from a half-written zip
        save_checkpoint({"model": torch.nn.Linear(2, 2), "epoch": 3, "flag": _PressesCtrlC()}, path)
    assert load_checkpoint(path)["epoch"] == 3 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler before is back


def test_deferred_stop_holds_one_ctrl_c_until_the_outermost_block_ends_and_a_second_stops_at_once():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_stop():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("held")
            os.kill(os.getpid(), signal.SIGINT)  # a save stuck on a slow disk: the second one is not held
            steps.append("never")
    assert steps == ["held"]
    with pytest.raises(KeyboardInterrupt):
        with deferred_stop():  # save_epoch: last.pt, then best.pt, each in its own save_checkpoint block
            with deferred_stop():
                os.kill(os.getpid(), signal.SIGINT)
            steps.append("best.pt written too")
    assert steps == ["held", "best.pt written too"]


def test_deferred_stop_holds_a_sigterm_too_and_delivers_it_to_the_handler_before():
    received = []

    def guard(signum, frame):  # e.g. train.py's InterruptGuard
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, guard)
    try:
        with deferred_stop():
            os.kill(os.getpid(), signal.SIGTERM)  # `kill`, `timeout` or a job scheduler while last.pt is written
            assert received == []
        assert received == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is guard  # delivered, restored
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_sigint_stays_ignored(monkeypatch):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for `python train.py &` in a script, or nohup
    try:
        with deferred_stop():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_saved_files_get_the_permissions_of_plainly_created_ones(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_checkpoint({"model": torch.nn.Linear(1, 1)}, tmp_path / "best.pt")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the group and others, as torch.save's own file


def test_a_quick_look_maps_the_tensors_and_reads_legacy_files_whole(tmp_path):
    """load_checkpoint(mmap=True), what --resume uses to find the run to continue, gives the same checkpoint."""
    layer = torch.nn.Linear(3, 2)
    new = save_checkpoint({"model": layer, "epoch": 4}, tmp_path / "new.pt")
    torch.save({"model": layer, "epoch": 5}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    for path, epoch in ((new, 4), (tmp_path / "old.pt", 5)):
        ckpt = load_checkpoint(path, mmap=True)
        assert ckpt["epoch"] == epoch and torch.equal(ckpt["model"].weight, layer.weight)
