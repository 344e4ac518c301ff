"""DistributedDataParallel: two CPU processes (gloo, torch.distributed.run) end with identical weights."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import ROOT

from utils.data import synth
from utils.train.dist import DistEnv, dist_env
from utils.train.results import read_results


def test_dist_env_from_environment(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert dist_env() == DistEnv(-1, -1, 1) and dist_env().is_main and not dist_env().distributed
    assert dist_env(local_rank_arg=1) == DistEnv(1, 1, 1)  # old launchers pass --local_rank only
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    env = dist_env()
    assert env == DistEnv(3, 1, 4) and env.distributed and not env.is_main


def widen(image: Path, width: int) -> None:
    """Pad an image on the right to width (grey), its labels' x and w scaled to match: another aspect ratio."""
    im = cv2.imread(str(image))
    w = im.shape[1]
    cv2.imwrite(str(image), cv2.copyMakeBorder(im, 0, 0, 0, width - w, cv2.BORDER_CONSTANT, value=(114, 114, 114)))
    label = image.parents[2] / "labels" / image.parent.name / f"{image.stem}.txt"
    rows = np.loadtxt(label, ndmin=2)
    rows[:, [1, 3]] *= w / width
    np.savetxt(label, rows, fmt="%g")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--rect", "--quad", "--batch-size", "8"]], ids=["plain", "rect-quad"])
def test_two_process_gloo_training_keeps_ranks_in_sync(tmp_path, extra):
    root = tmp_path / "shapes"
    synth.generate(root, seed=5, n_train=8, n_val=4, imgsz=96)
    for image in sorted((root / "images" / "train").iterdir())[:4]:
        widen(image, 192)  # --rect: a rect batch (4 per rank) at 32x64, one at 64x64; dealt image by image, they mixed
    data = tmp_path / "tiny.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "names": synth.CLASS_NAMES}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           "--data", str(data), "--imgsz", "64", "--batch-size", "4", "--epochs", "1", "--workers", "0",
           "--device", "cpu", "--project", str(tmp_path / "runs"), "--noplots", "--weights-hash", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    hashes = dict(re.findall(r"weights-hash rank (\d+): ([0-9a-f]{64})", r.stdout))
    assert set(hashes) == {"0", "1"} and hashes["0"] == hashes["1"]
    assert ("(--quad: 128, four in one)" in r.stdout + r.stderr) == ("--quad" in extra)  # 4 images per rank: one
    runs = list((tmp_path / "runs").iterdir())
    assert [p.name for p in runs] == ["exp"]  # only rank 0 made a run folder
    assert (runs[0] / "weights" / "best.pt").is_file()
    assert [row["epoch"] for row in read_results(runs[0] / "results.csv")] == [0]  # written once, by rank 0


MAIN_FAILS = """
import sys
from utils.errors import ConfigError, SlideYoloError
from utils.train import dist
import torch

env = dist.dist_env()
dist.init_distributed(env, torch.device("cpu"))
try:
    with dist.main_first(env):
        if env.is_main:
            raise ConfigError("data.yaml: no such split")
        print(f"rank {env.rank} ran its block")
except SlideYoloError as e:
    print(f"rank {env.rank} error: {e}")
dist.cleanup()
"""


@pytest.mark.slow
def test_when_the_main_process_fails_first_the_others_stop_with_its_error(tmp_path):
    script = tmp_path / "main_fails.py"
    script.write_text(MAIN_FAILS)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0 error: data.yaml: no such split" in r.stdout
    failed = "rank 1: stopped, as the main process failed (ConfigError: data.yaml: no such split)"
    assert f"rank 1 error: {failed}" in r.stdout
    assert "ran its block" not in r.stdout and "Traceback" not in r.stderr
