"""Shared fixtures: paths to ../shared material, tiny models, deterministic seeds."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OFFICIAL_WEIGHTS = SHARED / "weights" / "yolov5n_v6.1_coco80.pt"


def needs_shared(path: Path) -> pytest.MarkDecorator:
    """Skip only when ../shared (real data beside the project) is absent, as on a machine without it."""
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present (../shared is absent)")


@pytest.fixture(autouse=True, scope="session")
def _onnx_cache(tmp_path_factory):
    """Keep the onnxruntime engine's cached exports of .pt files in a temporary folder, not in ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIDEYOLO_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _fused_kernel_built():
    """Build the fused BatchNorm+SiLU training kernel (or load its cached build) once, before any test trains, so
    that train.py subprocesses with time limits only load it; tests then start with it off until a run prepares it."""
    from models import bn_silu

    bn_silu.prepare()
    bn_silu.disable("not prepared")
    yield


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Make each test deterministic and keep it on the 2 CPU cores."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture
def logs():
    """Messages logged by the project logger during the test."""
    from utils.log import get_logger

    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = _Keep()
    get_logger().addHandler(handler)
    yield records
    get_logger().removeHandler(handler)


def tiny_shapes_yaml(folder: Path, seed: int, n_train: int, n_val: int) -> str:
    """Generate a small built-in shapes set at 96 px in folder/shapes; return the path of its data YAML."""
    import yaml

    from utils.data import synth

    root = folder / "shapes"
    synth.generate(root, seed=seed, n_train=n_train, n_val=n_val, imgsz=96)
    f = folder / "tiny.yaml"
    f.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                 "names": dict(enumerate(synth.CLASS_NAMES))}))
    return str(f)



def press_ctrl_c_when(cmd: list[str], ready: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run cmd from the project root in its own process group and press Ctrl-C (SIGINT to the whole group, as a
    terminal sends it, dataloader workers included) once the file ready exists; returns the finished process with
    its output (stdout and stderr together)."""
    return signal_when(cmd, ready, signal.SIGINT, whole_group=True, timeout=timeout)


def signal_when(cmd: list[str], ready: Path, sig: int, whole_group: bool, timeout: float = 240
                ) -> subprocess.CompletedProcess:
    """Run cmd from the project root in its own process group and send sig, to the group or to cmd's process only
    (as `kill PID` and `timeout` do), once the file ready exists; returns the finished process and its output."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + timeout
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    if whole_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out)
