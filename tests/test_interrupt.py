"""Ctrl-C during training: the guard that notices it, and the hint that says how to continue."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from utils.checkpoint import save_checkpoint
from utils.train.interrupt import InterruptGuard, TrainingInterrupted, resume_hint


def test_guard_raises_remembers_and_restores_the_handler():
    before = signal.getsignal(signal.SIGINT)
    with InterruptGuard() as guard:
        guard.check()  # nothing requested yet
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler before the next bytecode
        assert guard.requested
        with pytest.raises(KeyboardInterrupt):  # as when the first KeyboardInterrupt was swallowed by a callback
            guard.check()
    assert signal.getsignal(signal.SIGINT) is before



def test_guard_turns_a_sigterm_into_the_same_stop_and_remembers_which_signal():
    before = signal.getsignal(signal.SIGTERM)
    with InterruptGuard() as guard:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # kill, timeout, a job scheduler: stop as for Ctrl-C, with the hint
        assert guard.requested and guard.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    e = TrainingInterrupted("runs/x/last.pt holds epoch 2", signal.SIGTERM)
    assert str(e) == "runs/x/last.pt holds epoch 2" and e.signum == signal.SIGTERM
    assert TrainingInterrupted("hint").signum == signal.SIGINT

def test_a_sigint_ignored_on_purpose_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # `python train.py &` from a script, nohup
    try:
        with InterruptGuard() as guard:
            os.kill(os.getpid(), signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN and not guard.requested
    finally:
        signal.signal(signal.SIGINT, previous)


def test_training_interrupted_is_a_keyboard_interrupt():
    assert issubclass(TrainingInterrupted, KeyboardInterrupt)  # code catching Ctrl-C (Optuna's, ours) still does


def test_resume_hint_names_the_checkpoint_and_the_command(tmp_path):
    assert "no resumable checkpoint" in resume_hint(tmp_path)
    save_checkpoint({"epoch": 3, "optimizer": {"state": {}}, "model": torch.nn.Linear(1, 1)}, tmp_path / "last.pt")
    hint = resume_hint(tmp_path)
    assert "epoch 3" in hint and f"python train.py --resume {tmp_path / 'last.pt'}" in hint
    assert f"torchrun --nproc_per_node 2 train.py --resume {tmp_path / 'last.pt'}" in resume_hint(tmp_path, 2)
    save_checkpoint({"epoch": 9, "optimizer": {"state": {}}, "opt": {"epochs": 10, "data": "d.yaml"},
                     "model": torch.nn.Linear(1, 1)}, tmp_path / "last.pt")
    done = resume_hint(tmp_path)  # every epoch done, stopped before the final strip: what was cut, and what to run
    assert "every epoch had finished" in done
    assert f"python val.py --weights {tmp_path / 'best.pt'} --data d.yaml" in done
    stripped = {"epoch": -1, "optimizer": None, "model": torch.nn.Linear(1, 1)}  # a finished run's
    save_checkpoint(stripped, tmp_path / "last.pt")
    assert "no resumable checkpoint" in resume_hint(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    assert "no resumable checkpoint" in resume_hint(tmp_path)
