"""Whole-process speed of val.py, detect.py and train.py (and upstream YOLOv5's, side by side): wall seconds, ms per
image and peak RSS, median of --runs alternating runs after one warm-up.

Usage:
    python benchmarks/cli_speed.py --weights ../shared/weights/yolov5n_v6.1_coco80.pt \\
        --data ../shared/data/coco128/coco128.yaml --source ../shared/samples
    python benchmarks/cli_speed.py ... --upstream /path/to/yolov5 --upstream-python /path/to/venv/bin/python
    python benchmarks/cli_speed.py ... --cold      # a fresh onnxruntime-engine cache for each run (export included)
    python benchmarks/cli_speed.py --commands train --upstream ... --variant "--cpu-dp 1" --variant "--bf16"
    python benchmarks/cli_speed.py --commands train --train-epochs 1 3 --upstream ...   # and the time per epoch
    python benchmarks/cli_speed.py --commands train --baseline /path/to/older/checkout  # against this project's past
    python benchmarks/cli_speed.py --commands train --train-epochs 1 3 --upstream ... --save runs/bench/a.json
    python benchmarks/cli_speed.py --pool runs/bench/a.json runs/bench/b.json   # the rounds of several runs as one

Each run is a new process (start-up, imports, model loading, data, plots: everything a user waits for). Peak RSS is
the main process's own (``os.wait4``), without dataloader workers. Upstream is given the same weights, data (with
its ``path:`` made absolute), source and sizes; the ratio is ours / upstream per pair of runs, so a machine whose
speed drifts moves both sides. ``train`` is one epoch of yolov5n from scratch (320, batch 16, ``--noval
--noplots``) on --train-images generated built-in images (each side its own copy, as the label caches differ);
with ``--train-epochs 1 3`` it runs at both lengths in every round, and a "train per epoch" row gives each side's
time per added epoch, (T3 - T1) / 2 per round, which leaves out the start-up and the end of a run.
Every ``--variant`` is one more side of ours with those options added, timed in the same rounds; ``--baseline`` is
one more side too: another checkout of this project (a ``git worktree`` at an earlier commit), run with the same
Python and data, so a change's cost in time or memory is measured on the machine at hand. Run it on an otherwise
idle machine.

``--save FILE`` writes every round's raw times to a JSON file as soon as the round ends; a run started again with
the same options and file keeps the rounds already there and times only the missing ones (after a new warm-up), so
an interrupted benchmark resumes and a finished one can be extended with a larger --runs. ``--pool`` summarises the
rounds of several such files together (same commands and sides), for a figure over more rounds than one sitting.
The ratio column is the median of the per-round ratios, with their range beside it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
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

from benchmarks.rounds import Times, load_saved, pool, save_rounds, summary_rows  # noqa: E402
from utils.data.data_config import check_dataset  # noqa: E402
from utils.data.label_scan import list_image_files  # noqa: E402
from utils.errors import ConfigError, SlideYoloError  # noqa: E402


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Whole-process val.py / detect.py timings, optionally against upstream")
    p.add_argument("--weights", default=None, help="a .pt file both projects can load (val, detect)")
    p.add_argument("--data", default=None, help="data YAML for val.py")
    p.add_argument("--source", default=None, help="detect.py source (images, a video, a folder of both)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=32, help="val.py batch size")
    p.add_argument("--runs", type=int, default=3, help="timed runs per command (after one warm-up)")
    p.add_argument("--commands", nargs="+", default=["val", "detect"], choices=["val", "detect", "train"])
    p.add_argument("--train-images", type=int, default=512, help="generated training images for train")
    p.add_argument("--train-imgsz", type=int, default=320, help="train: image size of the generated images and --img")
    p.add_argument("--train-epochs", type=int, nargs="+", default=[1], metavar="E",
                   help="train's --epochs; two values (1 3) add the time per epoch between them")
    p.add_argument("--variant", action="append", default=[], metavar="ARGS",
                   help="options added to our command, timed as one more side (repeatable), e.g. '--cpu-dp 2'")
    p.add_argument("--upstream", default=None, help="an upstream YOLOv5 checkout to time alongside")
    p.add_argument("--upstream-python", default=sys.executable, help="the Python that runs --upstream")
    p.add_argument("--baseline", default=None,
                   help="another checkout of this project (e.g. a git worktree at an older commit) timed as a side")
    p.add_argument("--cold", action="store_true", help="empty onnxruntime-engine cache for every run of ours")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both (default: unset)")
    p.add_argument("--video-frames", type=int, default=0,
                   help="detect on --source's images plus its first video looped (forth and back) to this many frames")
    p.add_argument("--save", type=Path, default=None,
                   help="JSON file of every round's raw times, written after each round; resumes a run with it")
    p.add_argument("--pool", type=Path, nargs="+", default=None, metavar="FILE",
                   help="summarise the rounds of these --save files together (no timing)")
    opt = p.parse_args(argv)
    if opt.pool:
        return opt
    need = {"val": ("weights", "data"), "detect": ("weights", "source")}
    missing = sorted({f"--{k}" for c in opt.commands for k in need.get(c, ()) if getattr(opt, k) is None})
    if missing:
        p.error(f"{', '.join(missing)} needed for {' and '.join(c for c in opt.commands if c in need)}")
    return opt


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


def train_data(n_train: int, folder: Path, sides: list[str], imgsz: int = 320) -> dict[str, Path]:
    """A generated built-in set of n_train images (32 val) at imgsz; a copy and data YAML per project (ours,
    upstream)."""
    from utils.data import synth

    root = synth.generate(folder / "shapes", seed=0, n_train=n_train, n_val=32, imgsz=imgsz)
    names = yaml.safe_load((ROOT / "data" / "shapes.yaml").read_text())["names"]
    out = {}
    for project in {"upstream" if s == "upstream" else "ours" for s in sides}:
        copy = folder / project / "shapes"
        shutil.copytree(root, copy)
        out[project] = folder / project / "data.yaml"
        out[project].write_text(yaml.safe_dump({"path": str(copy), "train": "images/train", "val": "images/val",
                                                "names": names}))
    return out


def count_inputs(opt: argparse.Namespace, data_yaml: Path | None) -> dict[str, int]:
    """Images per command: the val split's images; detect's images plus video frames; train's generated images."""
    import cv2

    counts = {"train": opt.train_images}
    if data_yaml is not None:
        counts["val"] = len(list_image_files(check_dataset(str(data_yaml))["val"]))
    if opt.source is None:
        return counts
    frames = 0
    src = Path(opt.source)
    for f in sorted(src.iterdir()) if src.is_dir() else [src]:
        if f.suffix.lower() in VIDEO_SUFFIXES:
            frames += int(cv2.VideoCapture(str(f)).get(cv2.CAP_PROP_FRAME_COUNT))
        elif f.suffix.lower()[1:] in IMAGE_SUFFIXES:
            frames += 1
    return {**counts, "detect": frames}


def command(which: str, side: str, opt: argparse.Namespace, data: dict, out: Path,
            epochs: int = 1) -> tuple[list[str], Path]:
    """(argv, cwd) of one val.py / detect.py / train.py (of ``epochs`` epochs) run of upstream's, the --baseline
    checkout's, ours, or ours with a --variant's options (side "ours --cpu-dp 2"); data holds the val YAML ("val")
    and each project's train YAML."""
    upstream = side == "upstream"
    python, cwd = {"upstream": (opt.upstream_python, opt.upstream),
                   "baseline": (sys.executable, opt.baseline)}.get(side, (sys.executable, ROOT))
    cwd = Path(cwd)
    extra = shlex.split(side[len("ours"):]) if side.startswith("ours") else []
    project = ["--project", str(out / str(abs(hash(side))))]
    if which == "train":
        yaml_file = data["upstream" if upstream else "ours"]
        return [python, "train.py", "--data", str(yaml_file), "--cfg", "models/yolov5n.yaml", "--weights", "",
                "--epochs", str(epochs), "--img", str(opt.train_imgsz), "--batch-size", "16", "--noval", "--noplots",
                *project, *extra], cwd
    common = ["--weights", str(Path(opt.weights).resolve()), "--img", str(opt.imgsz), *project, *extra]
    if which == "val":
        return [python, "val.py", "--data", str(data["val"]), "--batch-size", str(opt.batch_size), *common], cwd
    return [python, "detect.py", "--source", str(Path(opt.source).resolve()), *common], cwd


def run_once(argv: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """Run argv to the end; (wall seconds, peak RSS MiB of the process). RuntimeError on a non-zero exit."""
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a pipe nobody reads blocks a chatty child
        t = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{tail}")
    return wall, usage.ru_maxrss / 1024


def environment(opt: argparse.Namespace, side: str, cache: Path) -> dict:
    """Environment of a run: passive OpenMP waits, optional thread count, and (ours, --cold) a fresh cache."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    if opt.threads:
        env["OMP_NUM_THREADS"] = str(opt.threads)
    if side == "ours" and opt.cold:
        env["SLIDEYOLO_CACHE"] = tempfile.mkdtemp(dir=cache)
    return env


def tasks(opt: argparse.Namespace) -> list[tuple[str, int]]:
    """(command, train epochs) in the order they are timed: train once per --train-epochs value."""
    return [(w, e) for w in opt.commands for e in (opt.train_epochs if w == "train" else [1])]


def side_names(opt: argparse.Namespace) -> list[str]:
    """The sides timed in every round: ours, ours with each --variant, --baseline, upstream."""
    return (["ours"] + [f"ours {v}" for v in opt.variant] + (["baseline"] if opt.baseline else [])
            + (["upstream"] if opt.upstream else []))


def run_config(opt: argparse.Namespace) -> dict:
    """What must match for saved rounds to be continued (--save): everything timed, except --runs."""
    keys = ("commands", "variant", "baseline", "upstream", "upstream_python", "weights", "data", "source", "imgsz",
            "batch_size", "train_images", "train_epochs", "cold", "threads", "video_frames")
    extra = {"train_imgsz": opt.train_imgsz} if getattr(opt, "train_imgsz", 320) != 320 else {}  # rounds saved before
    return {**{k: getattr(opt, k) for k in keys}, **extra}


def time_rounds(opt: argparse.Namespace, which: str, times: Times, counts: dict, data: dict, out: Path) -> None:
    """Time the rounds of one command still missing from times[which] (after one warm-up round), saving each."""
    sides, lengths = side_names(opt), [e for w, e in tasks(opt) if w == which]
    cmd = times.setdefault(which, {})
    done = min(len(cmd.get(str(e), {}).get(side, [])) for e in lengths for side in sides)
    for e in lengths:  # rounds are saved whole, so every side has the same count
        cmd[str(e)] = {side: cmd.get(str(e), {}).get(side, [])[:done] for side in sides}
    todo = max(0, opt.runs - done)
    for i in tqdm(range(todo + 1 if todo else 0), desc=f"{which}.py", unit="round"):
        results = {(e, side): run_once(*command(which, side, opt, data, out, epochs=e),
                                       environment(opt, side, out.parent)) for e in lengths for side in sides}
        if i:  # round 0 is the warm-up
            for (e, side), result in results.items():
                cmd[str(e)][side].append(list(result))
            save_rounds(opt.save, run_config(opt), times, counts)


def check_sides(opt: argparse.Namespace) -> None:
    """ConfigError, before anything is timed, for an --upstream or --baseline checkout or a Python that is not there."""
    for flag, folder in (("--upstream", opt.upstream), ("--baseline", opt.baseline)):
        if folder and not (Path(folder) / "train.py").is_file():
            raise ConfigError(f"{flag} {folder}: not a YOLOv5-style checkout (no train.py there)")
    if opt.upstream and not shutil.which(opt.upstream_python):
        raise ConfigError(f"--upstream-python {opt.upstream_python}: no such Python")


def bench(opt: argparse.Namespace) -> list[dict]:
    """Time every command: one warm-up each, then --runs alternating rounds; returns one summary row per command."""
    check_sides(opt)
    config = run_config(opt)
    times = load_saved(opt.save, config)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = {"val": absolute_data_yaml(opt.data, tmp) if opt.data else None}
        if "train" in opt.commands:
            data.update(train_data(opt.train_images, tmp / "train_data", side_names(opt), opt.train_imgsz))
        if opt.video_frames:
            opt.source = str(looped_source(opt.source, opt.video_frames, tmp))
        counts = count_inputs(opt, data["val"])
        for which in opt.commands:
            time_rounds(opt, which, times, counts, data, tmp / "out")
    return summary_rows({w: times[w] for w in opt.commands}, counts)


def print_table(rows: list[dict]) -> None:
    """One line per command."""
    print(f"{'command':15} {'images':>6} {'ours s (min-max)':>22} {'ms/img':>7} {'peak MiB':>9} "
          f"{'upstream s (min-max)':>24} {'peak MiB':>9} {'ratio (per-round range)':>6}")
    for r in rows:
        med, lo, hi, rss = r["ours"]
        line = f"{r['command']:15} {r['images']:6d} {med:8.2f} ({lo:6.2f}-{hi:6.2f}) {1000 * med / r['images']:7.1f} "
        line += f"{rss:9.0f}"
        if "upstream" in r:
            umed, ulo, uhi, urss = r["upstream"]
            lo_r, hi_r, n = r["ratio range"]
            line += (f" {umed:10.2f} ({ulo:6.2f}-{uhi:6.2f}) {urss:9.0f} {r['ratio']:6.3f}"
                     f" ({lo_r:.3f}-{hi_r:.3f}, {n} rounds)")
        print(line)
        for side in [k for k in r if k.startswith("ours ") or k == "baseline"]:
            med, lo, hi, rss = r[side]
            ratio = f" ratio {r['ratio ' + side]:.3f}" if "ratio " + side in r else ""
            print(f"  {side}: {med:.2f} s ({lo:.2f}-{hi:.2f}), {1000 * med / r['images']:.1f} ms/img, "
                  f"peak {rss:.0f} MiB{ratio}")
        against = [f"{k[len('vs baseline '):]} {v:.3f}" for k, v in r.items() if k.startswith("vs baseline ")]
        if against:
            print(f"  time against the baseline (paired median): {', '.join(against)}")


def main(opt: argparse.Namespace) -> list[dict]:
    """Benchmark (or --pool saved runs) and print."""
    rows = pool(opt.pool) if opt.pool else bench(opt)
    print_table(rows)
    return rows


if __name__ == "__main__":
    try:
        main(parse_opt())
    except SlideYoloError as e:
        sys.exit(f"cli_speed.py: {e}")
