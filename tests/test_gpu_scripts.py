"""The prepared GPU scripts: they parse, bundle what a device call needs, and keep to their time budget."""

import shutil
import subprocess
import tarfile
from pathlib import Path

from conftest import ROOT


def fake_shared(root: Path) -> Path:
    """A ../shared look-alike: coco128 with its yaml, facemask, and a weights file."""
    for data in ("coco128", "facemask"):
        (root / "data" / data / "images").mkdir(parents=True)
        (root / "data" / data / f"{data}.yaml").write_text(f"path: ../datasets/{data}\ntrain: images\nval: images\n")
    (root / "weights").mkdir()
    (root / "weights" / "yolov5n_v6.1_coco80.pt").write_bytes(b"weights")
    return root


def copy_script(name: str, repo: Path) -> Path:
    """The script inside a scratch project folder (the scripts work from the folder above their own)."""
    (repo / "benchmarks").mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(ROOT / "benchmarks" / name, repo / "benchmarks" / name))


def test_every_shell_script_parses():
    scripts = sorted((ROOT / "benchmarks").glob("*.sh"))
    assert {"gpu_checks.sh", "gpu_bundle.sh", "ablation_gpu.sh"} <= {s.name for s in scripts}
    for s in scripts:
        assert subprocess.run(["bash", "-n", str(s)]).returncode == 0, s


def test_bundle_copies_one_data_set_and_the_weights(tmp_path):
    shared = fake_shared(tmp_path / "shared")
    script = copy_script("gpu_bundle.sh", tmp_path / "repo")
    run = subprocess.run(["bash", str(script), "checks"], env={"SHARED": str(shared), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    bundle = tmp_path / "repo" / ".gpu" / "shared"
    assert run.returncode == 0, run.stderr
    assert (bundle / "data" / "coco128" / "coco128.yaml").exists() and not (bundle / "data" / "facemask").exists()
    assert (bundle / "weights" / "yolov5n_v6.1_coco80.pt").read_bytes() == b"weights"
    bad = subprocess.run(["bash", str(script), "everything"], env={"SHARED": str(shared), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown bundle 'everything'" in bad.stderr


def test_checks_skip_steps_once_the_budget_is_spent(tmp_path):
    shared = fake_shared(tmp_path / "shared")
    script = copy_script("gpu_checks.sh", tmp_path / "repo")
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(script)], env={"SHARED": str(shared), "OUT": str(out), "BUDGET": "0",
                                                     "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    summary = (out / "gpu_checks.txt").read_text()
    assert run.returncode == 0, run.stderr
    assert summary.count("skipped, budget spent") == 8  # every step, none started
    assert sorted(p.name for p in out.iterdir()) == ["gpu_checks.txt", "gpu_logs.tar.gz"]  # a device call returns 8
    with tarfile.open(out / "gpu_logs.tar.gz") as tar:
        assert any(n.endswith("logs") for n in tar.getnames())
