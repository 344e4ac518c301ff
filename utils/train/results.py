"""results.csv of a training run: one row per epoch, YOLOv5's column names, appended so a resumed run continues it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from utils.paths import write_atomic

RESULT_COLUMNS = ("epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
                  "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss",
                  "val/cls_loss", "x/lr0", "x/lr1", "x/lr2")


def results_row(epoch: int, train_loss: Sequence[float], val_results: Sequence[float], lrs: Sequence[float]) -> list:
    """One row: epoch, 3 train losses, (P, R, mAP50, mAP50-95, 3 val losses), 3 learning rates."""
    values = [*train_loss, *val_results, *lrs]
    if len(values) != len(RESULT_COLUMNS) - 1:
        raise ValueError(f"results row needs {len(RESULT_COLUMNS) - 1} values after the epoch, got {len(values)}")
    return [int(epoch), *(float(v) for v in values)]


def append_results(path: str | Path, epoch: int, train_loss: Sequence[float], val_results: Sequence[float],
                   lrs: Sequence[float]) -> Path:
    """Append one epoch's row to results.csv, writing the header first if the file is new."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(RESULT_COLUMNS)
        row = results_row(epoch, train_loss, val_results, lrs)
        w.writerow([row[0], *(f"{v:.6g}" for v in row[1:])])
    return path


def keep_results_before(path: str | Path, epoch: int) -> None:
    """Drop results.csv rows of epoch and later (atomically): a resumed run redoes them from its checkpoint."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [ln for ln in lines[1:] if ln.strip() and int(ln.split(",", 1)[0]) < epoch]
    if len(kept) != len(lines):
        write_atomic(path, "".join(kept))


def read_results(path: str | Path) -> list[dict[str, float]]:
    """The rows of a results.csv as dicts of column -> float (epoch as int)."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k.strip(): (int(v) if k.strip() == "epoch" else float(v)) for k, v in r.items()} for r in rows]
