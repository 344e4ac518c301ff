"""Whole-process speed of val.py and detect.py (and upstream YOLOv5's, side by side): wall seconds, ms per image and
peak RSS, median of --runs alternating runs after one warm-up.

Usage:
    python benchmarks/cli_speed.py --weights ../shared/weights/yolov5n_v6.1_coco80.pt \\
        --data ../shared/data/coco128/coco128.yaml --source ../shared/samples
    python benchmarks/cli_speed.py ... --upstream /path/to/yolov5 --upstream-python /path/to/venv/bin/python
    python benchmarks/cli_speed.py ... --cold      # a fresh onnxruntime-engine cache for each run (export included)

Each run is a new process (start-up, imports, model loading, data, plots: everything a user waits for). Peak RSS is
the main process's own (``os.wait4``), without dataloader workers. Upstream is given the same weights, data (with
its ``path:`` made absolute), source and sizes; the ratio is ours / upstream per pair of runs, so a machine whose
speed drifts moves both sides. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from utils.data.data_config import check_dataset  # noqa: E402
from utils.data.label_scan import list_image_files  # noqa: E402


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Whole-process val.py / detect.py timings, optionally against upstream")
    p.add_argument("--weights", required=True, help="a .pt file both projects can load")
    p.add_argument("--data", required=True, help="data YAML for val.py")
    p.add_argument("--source", required=True, help="detect.py source (images, a video, a folder of both)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=32, help="val.py batch size")
    p.add_argument("--runs", type=int, default=3, help="timed runs per command (after one warm-up)")
    p.add_argument("--commands", nargs="+", default=["val", "detect"], choices=["val", "detect"])
    p.add_argument("--upstream", default=None, help="an upstream YOLOv5 checkout to time alongside")
    p.add_argument("--upstream-python", default=sys.executable, help="the Python that runs --upstream")
    p.add_argument("--cold", action="store_true", help="empty onnxruntime-engine cache for every run of ours")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both (default: unset)")
    p.add_argument("--video-frames", type=int, default=0,
                   help="detect on --source's images plus its first video looped (forth and back) to this many frames")
    return p.parse_args(argv)


def absolute_data_yaml(data: str, folder: Path) -> Path:
    """A copy of the data YAML whose ``path:`` is absolute, so upstream (which resolves it elsewhere) finds it."""
    d = check_dataset(data)
    raw = yaml.safe_load(Path(data).read_text()) if Path(data).is_file() else {}
    raw = {**raw, "path": str(d["path"]), "train": str(d["train"]), "val": str(d["val"])}
    raw.pop("test", None)
    out = folder / "data.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


def looped_source(source: str, frames: int, folder: Path) -> Path:
    """A folder with source's images and its first video played forth and back until it has `frames` frames."""
    import shutil

    import cv2

    out = folder / "source"
    out.mkdir()
    files = sorted(Path(source).iterdir())
    for f in files:
        if f.suffix.lower()[1:] in IMAGE_SUFFIXES:
            shutil.copy(f, out / f.name)
    video = next(f for f in files if f.suffix.lower() in VIDEO_SUFFIXES)
    cap, clip = cv2.VideoCapture(str(video)), []
    while (frame := cap.read()[1]) is not None:
        clip.append(frame)
    h, w = clip[0].shape[:2]
    writer = cv2.VideoWriter(str(out / f"{video.stem}_{frames}f.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    for i in range(frames):
        lap, k = divmod(i, len(clip))
        writer.write(clip[k if lap % 2 == 0 else len(clip) - 1 - k])
    writer.release()
    return out


def count_inputs(opt: argparse.Namespace, data_yaml: Path) -> dict[str, int]:
    """Images per command: the val split's images; detect's images plus video frames."""
    import cv2

    val_images = len(list_image_files(check_dataset(str(data_yaml))["val"]))
    frames = 0
    src = Path(opt.source)
    for f in sorted(src.iterdir()) if src.is_dir() else [src]:
        if f.suffix.lower() in VIDEO_SUFFIXES:
            frames += int(cv2.VideoCapture(str(f)).get(cv2.CAP_PROP_FRAME_COUNT))
        elif f.suffix.lower()[1:] in IMAGE_SUFFIXES:
            frames += 1
    return {"val": val_images, "detect": frames}


def command(which: str, side: str, opt: argparse.Namespace, data_yaml: Path, out: Path) -> tuple[list[str], Path]:
    """(argv, cwd) of one val.py / detect.py run of ours or upstream's."""
    python, cwd = (sys.executable, ROOT) if side == "ours" else (opt.upstream_python, Path(opt.upstream))
    common = ["--weights", str(Path(opt.weights).resolve()), "--img", str(opt.imgsz), "--project", str(out / side)]
    if which == "val":
        return [python, "val.py", "--data", str(data_yaml), "--batch-size", str(opt.batch_size), *common], cwd
    return [python, "detect.py", "--source", str(Path(opt.source).resolve()), *common], cwd


def run_once(argv: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """Run argv to the end; (wall seconds, peak RSS MiB of the process). RuntimeError on a non-zero exit."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def environment(opt: argparse.Namespace, side: str, cache: Path) -> dict:
    """Environment of a run: passive OpenMP waits, optional thread count, and (ours, --cold) a fresh cache."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    if opt.threads:
        env["OMP_NUM_THREADS"] = str(opt.threads)
    if side == "ours" and opt.cold:
        env["SLIDEYOLO_CACHE"] = tempfile.mkdtemp(dir=cache)
    return env


def bench(opt: argparse.Namespace) -> list[dict]:
    """Time every command: one warm-up each, then --runs alternating rounds; returns one summary row per command."""
    sides = ["ours"] + (["upstream"] if opt.upstream else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_yaml = absolute_data_yaml(opt.data, tmp)
        if opt.video_frames:
            opt.source = str(looped_source(opt.source, opt.video_frames, tmp))
        counts = count_inputs(opt, data_yaml)
        for which in opt.commands:
            times: dict[str, list[tuple[float, float]]] = {s: [] for s in sides}
            bar = tqdm(range(opt.runs + 1), desc=f"{which}.py", unit="round")
            for i in bar:
                for side in sides:
                    argv, cwd = command(which, side, opt, data_yaml, tmp / "out")
                    result = run_once(argv, cwd, environment(opt, side, tmp))
                    if i:  # round 0 is the warm-up
                        times[side].append(result)
            rows.append(summarise(which, times, counts[which]))
    return rows


def summarise(which: str, times: dict[str, list[tuple[float, float]]], n: int) -> dict:
    """Medians, ranges, ms per image, and the median ratio ours / upstream paired by round."""
    row = {"command": which, "images": n}
    for side, runs in times.items():
        walls = [w for w, _ in runs]
        row[side] = (statistics.median(walls), min(walls), max(walls), max(r for _, r in runs))
    if "upstream" in times:
        row["ratio"] = statistics.median(a / b for (a, _), (b, _) in zip(times["ours"], times["upstream"]))
    return row


def print_table(rows: list[dict]) -> None:
    """One line per command."""
    print(f"{'command':8} {'images':>6} {'ours s (min-max)':>22} {'ms/img':>7} {'peak MiB':>9} "
          f"{'upstream s (min-max)':>24} {'peak MiB':>9} {'ratio':>6}")
    for r in rows:
        med, lo, hi, rss = r["ours"]
        line = f"{r['command']:8} {r['images']:6d} {med:8.2f} ({lo:6.2f}-{hi:6.2f}) {1000 * med / r['images']:7.1f} "
        line += f"{rss:9.0f}"
        if "upstream" in r:
            umed, ulo, uhi, urss = r["upstream"]
            line += f" {umed:10.2f} ({ulo:6.2f}-{uhi:6.2f}) {urss:9.0f} {r['ratio']:6.3f}"
        print(line)


def main(opt: argparse.Namespace) -> list[dict]:
    """Benchmark and print."""
    rows = bench(opt)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main(parse_opt())
