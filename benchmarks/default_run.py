"""The headline figure: wall time and mAP of ``python train.py`` with no arguments (the built-in dataset).

Usage:
    python benchmarks/default_run.py                    # the default run, into a temporary project folder
    python benchmarks/default_run.py --hyp data/hyps/hyp.slide.yaml --epochs 20

Runs ``train.run`` with the defaults of ``python train.py`` (plus any train.py option given as --key value) in a
temporary ``--project``, generating the built-in dataset first if it is missing (timed separately), and prints the
minutes taken and the final validation of best.pt against the target: under 15 minutes and mAP50 >= 0.5 on 2 cores.
Measure on an otherwise idle machine; the figure depends on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from utils.data.data_config import check_dataset  # noqa: E402
from utils.errors import SlideYoloError  # noqa: E402

TARGET_MINUTES, TARGET_MAP50 = 15.0, 0.5


def parse_opt(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict]:
    """(--data, the other train.py options given as --key value) from the command line."""
    p = argparse.ArgumentParser(description="Time python train.py on the built-in data", allow_abbrev=False)
    p.add_argument("--data", default="data/shapes.yaml", help="dataset YAML (generated first when built-in)")
    opt, rest = p.parse_known_args(argv)
    given = train.parse_opt(["--data", opt.data, *rest])
    defaults = train.parse_opt([])
    return opt, {k: v for k, v in vars(given).items() if k != "data" and v != getattr(defaults, k)}


def main(opt: argparse.Namespace, overrides: dict) -> tuple[float, float]:
    """Generate the data, train, print the figures; return (minutes, mAP50)."""
    t0 = time.perf_counter()
    check_dataset(opt.data)
    t_data = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as project:
        t1 = time.perf_counter()
        p, r, map50, map_, *_ = train.run(**{**overrides, "data": opt.data, "project": project})
        t_train = time.perf_counter() - t1
    minutes = (t_data + t_train) / 60
    ok = minutes < TARGET_MINUTES and map50 >= TARGET_MAP50
    print(f"\ndefault run: dataset {t_data:.0f} s, training {t_train / 60:.1f} min, total {minutes:.1f} min; best.pt "
          f"P {p:.3f} R {r:.3f} mAP50 {map50:.3f} mAP50-95 {map_:.3f} -> target (< {TARGET_MINUTES:g} min, mAP50 >= "
          f"{TARGET_MAP50}) {'met' if ok else 'NOT met'}")
    return minutes, map50


if __name__ == "__main__":
    try:
        main(*parse_opt())
    except SlideYoloError as e:
        print(f"default_run.py: error: {e}", file=sys.stderr)
        sys.exit(1)
