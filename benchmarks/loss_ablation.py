"""Loss ablation: one ordinary train.py run per hyp file and seed, resumable, with mean, spread and paired differences.

Usage (from the project root):
    python benchmarks/loss_ablation.py --hyps hyp.scratch-low.yaml hyp.slide.yaml --seeds 0 1 2 \
        --project runs/ablation/shapes
    python benchmarks/loss_ablation.py --data ../shared/data/facemask/facemask.yaml \
        --hyps hyp.scratch-low.yaml hyp.focal.yaml --seeds 0 1 2 3 4 --project runs/ablation/facemask \
        --weights ../shared/weights/yolov5n_v6.1_coco80.pt --optimizer auto --epochs 12 --imgsz 320

    python benchmarks/loss_ablation.py ... --jobs 2                  # two runs at once (many cores, or one GPU)
    python benchmarks/loss_ablation.py ... --ledger docs/ablation/facemask.jsonl   # keep finished rows elsewhere
    python benchmarks/loss_ablation.py ... --report     # tables and plot of what has finished, nothing trained

Every other option goes to train.py unchanged. Runs go to DIR/<hyp stem>/seed<k>. A finished run is skipped, an
interrupted one continues with ``train.py --resume``, so killing and restarting the command loses at most the epoch in
progress. With ``--ledger FILE`` every finished run's row is also appended to FILE (JSON lines, with the data file
and train.py options it was measured with), and a run already in FILE is not trained again even if its folder is
gone. Writes DIR/ablation.csv (one row per run), DIR/ablation.md (mean ± std per hyp file, the first hyp file as
the reference for differences paired by seed) and DIR/ablation.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from utils.data.data_config import check_dataset  # noqa: E402
from utils.errors import SlideYoloError  # noqa: E402
from utils.paths import write_atomic  # noqa: E402
from utils.train.ablation import (  # noqa: E402
    DONE_FILE,
    RECIPE_FILE,
    AblationRun,
    append_ledger,
    markdown_table,
    plan_runs,
    plot_ablation,
    read_ledger,
    read_run_metrics,
    recipe_key,
    write_csv,
)
from utils.train.hyp import load_hyp  # noqa: E402


def parse_opt(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """The ablation's own options, and the rest for train.py."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/shapes.yaml", help="dataset.yaml for every run")
    p.add_argument("--hyps", nargs="+", required=True, help="hyp files; the first is the reference")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    p.add_argument("--project", required=True, help="folder of the ablation (runs and tables)")
    p.add_argument("--jobs", type=int, default=1,
                   help="train.py runs at once; each gets cores/jobs intra-op threads unless OMP_NUM_THREADS is set")
    p.add_argument("--ledger", type=Path, default=None,
                   help="JSON-lines file of finished rows that outlives the run folders; its runs are not retrained")
    p.add_argument("--report", action="store_true",
                   help="train nothing: write the tables and plot from the runs finished so far (folders and ledger)")
    opt, extra = p.parse_known_args(argv)
    if opt.jobs < 1:
        p.error(f"--jobs must be at least 1, got {opt.jobs}")
    return opt, extra


def job_env(jobs: int) -> dict[str, str]:
    """The environment of every train.py process: with several jobs, the cores are shared out between them."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def train_command(run: AblationRun, data: str, extra: list[str]) -> list[str]:
    """The train.py command of a run: resume its last.pt when there is one, else start it afresh.

    Unless the recipe names ``--cpu-dp``, runs train the batch in one part (``--cpu-dp 1``), as every ledger row
    before ``--cpu-dp auto`` became train.py's default was trained, so old and new rows of a recipe stay comparable.
    """
    train = [sys.executable, str(ROOT / "train.py")]
    if run.last_pt.is_file():
        return [*train, "--resume", str(run.last_pt)]
    pin = [] if any(a.startswith("--cpu-dp") for a in extra) else ["--cpu-dp", "1"]  # the ledgers' rows: one part
    return [*train, "--data", data, "--hyp", run.hyp, "--seed", str(run.seed), "--project",
            str(run.folder.parent), "--name", run.folder.name, "--exist-ok", *extra, *pin]


def execute(run: AblationRun, data: str, extra: list[str], env: dict[str, str] | None = None) -> dict:
    """Run (or resume) one train.py run to the end; log to its train.log; return and record its row.

    A run whose train.py finished (per_class.csv is written by its last step, the validation of best.pt) while the
    ablation itself was stopped is recorded without training again.
    """
    env = env or job_env(1)
    if not (run.folder / "per_class.csv").is_file():
        train(run, data, extra, env)
    row = {"hyp": run.name, "seed": run.seed, **read_run_metrics(run.folder),
           "wall_s": _seconds(run.folder / "ablation_wall_s.txt"), "cpu_s": _seconds(run.folder / "ablation_cpu_s.txt"),
           "threads": env.get("OMP_NUM_THREADS", "default"), "cpu": cpu_model(), "commit": code_commit()}
    write_atomic(run.folder / DONE_FILE, json.dumps(row, indent=1))
    return row


def _seconds(path: Path) -> float:
    """Seconds recorded in a run folder's counter file (0 when absent)."""
    return float(path.read_text()) if path.is_file() else 0.0


def cpu_model() -> str:
    """The CPU's model name and widest vector unit, e.g. 'AMD EPYC (avx512)', from /proc/cpuinfo on Linux (else
    platform.processor()), recorded with each row: VMs with the same name differ in AVX-512 and run at different
    speeds."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    name = next((x.split(":", 1)[1].strip() for x in info if x.startswith("model name")), "")
    flags = set(next((x.split(":", 1)[1].split() for x in info if x.startswith("flags")), []))
    vector = next((v for v, f in (("avx512", "avx512f"), ("avx2", "avx2")) if f in flags), "")
    if name:
        return f"{name} ({vector})" if vector else name
    import platform

    return platform.processor() or "unknown"


def code_commit() -> str:
    """The git commit of the code that ran (recorded with each row), or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def train(run: AblationRun, data: str, extra: list[str], env: dict[str, str]) -> None:
    """One train.py process for the run (fresh, or --resume of its last.pt); wall and CPU seconds spent (CPU: the
    process and its dataloader workers, which a paused run does not accrue) add up in the folder."""
    if not run.last_pt.is_file() and run.folder.exists():
        shutil.rmtree(run.folder)  # started but no epoch finished: nothing worth keeping
    run.folder.mkdir(parents=True, exist_ok=True)
    write_atomic(run.folder / RECIPE_FILE, recipe_key(data, extra))
    spent_file, cpu_file = run.folder / "ablation_wall_s.txt", run.folder / "ablation_cpu_s.txt"
    spent, cpu = _seconds(spent_file), _seconds(cpu_file)
    cmd = train_command(run, data, extra)
    t0, used = time.time(), 0.0
    try:
        with (run.folder / "train.log").open("a") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = rc = os.waitstatus_to_exitcode(status)
            used = usage.ru_utime + usage.ru_stime
    finally:
        write_atomic(spent_file, f"{spent + time.time() - t0:.1f}")
        write_atomic(cpu_file, f"{cpu + used:.1f}")
    if rc in (130, -2):  # train.py stopped by Ctrl-C (which reached this process too)
        raise KeyboardInterrupt
    if rc != 0:
        raise SystemExit(f"loss_ablation: {run.name} seed {run.seed} failed (exit {rc}): {last_line(run.folder)}; "
                         f"see {run.folder}/train.log")


def last_line(folder: Path) -> str:
    """The last non-empty line of a run's train.log (train.py's one-line error), progress-bar redraws dropped."""
    lines = (folder / "train.log").read_text(errors="replace").replace("\r", "\n").splitlines()
    return next((line.strip() for line in reversed(lines) if line.strip()), "no output")


def write_outputs(rows: list[dict], project: Path) -> None:
    """ablation.csv, ablation.md, ablation.png and ablation.json (the rows as recorded) from the finished runs."""
    project.mkdir(parents=True, exist_ok=True)
    write_csv(rows, project / "ablation.csv")
    write_atomic(project / "ablation.json", json.dumps(rows, indent=1))
    write_atomic(project / "ablation.md", markdown_table(rows))
    plot_ablation(rows, project / "ablation.png")


def main(argv: list[str] | None = None) -> list[dict]:
    """Run what is missing (--jobs at a time), then write the three outputs; returns the rows in plan order."""
    opt, extra = parse_opt(argv)
    for h in opt.hyps:
        load_hyp(h)  # a bad hyp file fails here, before hours of other runs
    if opt.jobs > 1:
        check_dataset(opt.data)  # generate the built-in data once, not in several runs at the same time
    project = Path(opt.project)
    runs = plan_runs(opt.hyps, opt.seeds, project)
    recipe = recipe_key(opt.data, extra)
    try:
        ledger = read_ledger(opt.ledger, recipe)
    except ValueError as e:
        raise SlideYoloError(str(e)) from None
    rows: dict[int, dict] = {}
    bar = tqdm(total=len(runs), desc="ablation", unit="run", file=sys.stdout)

    def record(i: int, row: dict, status: str, seconds: float) -> None:
        rows[i] = row
        if (row["hyp"], row["seed"]) not in ledger and not opt.report:  # a report's recipe may not be the runs'
            ledger[(row["hyp"], row["seed"])] = row
            append_ledger(opt.ledger, row, recipe)
        write_outputs([rows[k] for k in sorted(rows)], project)
        bar.update(1)
        bar.write(f"{runs[i].name} seed {runs[i].seed}: {status}, mAP50 {row['mAP50']:.3f}, "
                  f"mAP50-95 {row['mAP50-95']:.3f} ({seconds:.0f} s)")

    for run in runs if not opt.report else ():  # a report trains nothing: it shows what each folder holds
        run.check_recipe(recipe)  # a finished or half-done run of other options is never reused under these
    todo = []
    for i, run in enumerate(runs):
        row = run.done() or ledger.get((run.name, run.seed))
        if row:
            record(i, row, "done before", 0.0)
        else:
            todo.append(i)
    if not opt.report:
        run_pool(todo, runs, opt, extra, record)
    bar.close()
    ordered = [rows[k] for k in sorted(rows)]
    if not ordered:
        print(f"No finished runs in {project}" + (f" or {opt.ledger}" if opt.ledger else ""))
        return ordered
    print(f"\n{markdown_table(ordered)}\nResults: {project / 'ablation.md'}, ablation.csv, ablation.png")
    return ordered


def run_pool(todo: list[int], runs: list[AblationRun], opt: argparse.Namespace, extra: list[str], record) -> None:
    """Train the runs numbered in todo, opt.jobs at a time in plan order; the first failure stops new starts."""
    env = job_env(opt.jobs)

    def timed(i: int) -> tuple[dict, float]:
        t0 = time.time()
        return execute(runs[i], opt.data, extra, env), time.time() - t0

    pool = ThreadPoolExecutor(max_workers=opt.jobs)
    futures = {pool.submit(timed, i): i for i in todo}
    try:
        for future in as_completed(futures):
            row, seconds = future.result()
            record(futures[future], row, "trained", seconds)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on a failure, let the running ones finish, start no more


if __name__ == "__main__":
    try:
        main()
    except SlideYoloError as e:  # a bad hyp or data file: one line that names it, no traceback
        print(f"loss_ablation.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("loss_ablation.py: interrupted; finished runs are kept and an interrupted one continues from its "
              "last.pt: run the same command again", file=sys.stderr)
        sys.exit(130)
