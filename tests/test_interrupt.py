"""Ctrl-C and SIGTERM during training: the guard that notices them, the hint that says how to continue, and
train.py stopped for real (a process pressed Ctrl-C on, or sent SIGTERM)."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import torch
from conftest import press_ctrl_c_when, signal_when, tiny_shapes_yaml

import train
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.train.interrupt import InterruptGuard, TrainingInterrupted, resume_hint


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    """12 train / 4 val generated images at 96 px and their data YAML."""
    return tiny_shapes_yaml(tmp_path_factory.mktemp("tiny"), seed=3, n_train=12, n_val=4)


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


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tiny_data, tmp_path):
    last = tmp_path / "exp" / "weights" / "last.pt"
    r = press_ctrl_c_when(
        [sys.executable, "train.py", "--data", tiny_data, "--imgsz", "64", "--batch-size", "2", "--workers", "2",
         "--epochs", "300", "--noval", "--noplots", "--project", str(tmp_path)], last)
    assert r.returncode == 130, r.stdout[-3000:]
    assert "Traceback" not in r.stdout and "exited unexpectedly" not in r.stdout
    message = r.stdout.strip().splitlines()[-1]
    assert message.startswith("train.py: interrupted; ") and f"python train.py --resume {last}" in message
    epoch = load_checkpoint(last)["epoch"]
    assert f"holds epoch {epoch};" in message
    train.run(resume=str(last), stop_after=epoch + 2)  # the command it names continues the run
    assert load_checkpoint(last)["epoch"] == epoch + 1


@pytest.mark.slow
@pytest.mark.parametrize("whole_group", [True, False], ids=["process-group", "pid"])
def test_sigterm_stops_like_ctrl_c_with_the_hint_and_exit_status_143(tiny_data, tmp_path, whole_group):
    """SIGTERM to the whole process group (a job scheduler; dataloader workers included) or to train.py alone (kill
    PID, timeout): the same stop and resume hint as Ctrl-C, exit status 128 + 15."""
    last = tmp_path / "exp" / "weights" / "last.pt"
    r = signal_when([sys.executable, "train.py", "--data", tiny_data, "--imgsz", "64", "--batch-size", "2",
                     "--workers", "2", "--epochs", "300", "--noval", "--noplots", "--project", str(tmp_path)], last,
                    signal.SIGTERM, whole_group=whole_group)
    assert r.returncode == 143, r.stdout[-3000:]
    assert "Traceback" not in r.stdout and "exited unexpectedly" not in r.stdout
    message = r.stdout.strip().splitlines()[-1]
    assert message.startswith("train.py: terminated (SIGTERM); ") and f"python train.py --resume {last}" in message
    assert load_checkpoint(last)["epoch"] >= 0


def test_ctrl_c_in_the_final_validation_says_what_was_cut(tiny_data, tmp_path, monkeypatch):
    """A Ctrl-C after the last epoch (while best.pt is validated and plotted) still ends with the hint, not bare."""
    from utils.train import trainer

    validate, calls = trainer.validate, []

    def cut_in_final_validation(ctx, state, plots=False, model=None):
        calls.append(model)
        if model is not None:  # best.pt's validation after the last epoch (the epoch's own passes model=None)
            raise KeyboardInterrupt  # as the default SIGINT handler raises it
        return validate(ctx, state, plots, model)

    monkeypatch.setattr(trainer, "validate", cut_in_final_validation)
    with pytest.raises(TrainingInterrupted) as e:
        train.run(data=tiny_data, project=str(tmp_path), imgsz=64, batch_size=4, workers=0, epochs=1, noval=True,
                  noplots=True)
    assert len(calls) == 2 and "every epoch had finished" in str(e.value) and "python val.py --weights" in str(e.value)
