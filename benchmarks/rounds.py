"""The timed rounds of benchmarks/cli_speed.py: saved to a JSON file after each round (``--save``), read back to resume
or pooled over several files (``--pool``), and summarised as medians, ranges and ratios paired by round."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from utils.paths import write_atomic

Times = dict[str, dict[str, dict[str, list]]]  # command -> epochs (str) -> side -> [(wall s, peak MiB) per round]


def read_saved(path: Path, option: str) -> dict:
    """A file --save wrote ({"config", "counts", "times"}); SystemExit naming the option and file if it is not one."""
    try:
        saved = json.loads(Path(path).read_text())
        if not {"config", "counts", "times"} <= saved.keys():
            raise KeyError("config, counts and times")
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise SystemExit(f"{option} {path}: not a file this benchmark wrote ({e})") from e
    return saved


def load_saved(path: Path | None, config: dict) -> Times:
    """The rounds an earlier run with the same options saved to path (--save); empty if there is no such file."""
    if path is None or not path.exists():
        return {}
    saved = read_saved(path, "--save")
    if saved["config"] != config:
        raise SystemExit(f"--save {path}: saved by a run with other options; give another file or the same options "
                         f"(saved: {saved['config']})")
    return saved["times"]


def save_rounds(path: Path | None, config: dict, times: Times, counts: dict[str, int]) -> None:
    """Write the raw times to path atomically (a temporary file renamed over it)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"config": config, "counts": counts, "times": times}, indent=1))


def summary_rows(times: Times, counts: dict[str, int]) -> list[dict]:
    """One row per command and length, plus "train per epoch" where train ran at two lengths."""
    rows = []
    for which, by_length in times.items():
        lengths = sorted(by_length, key=int)
        runs = {e: {side: [tuple(r) for r in rs] for side, rs in by_length[e].items()} for e in lengths}
        for e in lengths:
            rows.append(summarise(which if len(lengths) == 1 else f"{which} e{e}", runs[e], counts.get(which, 0)))
        if len(lengths) > 1:
            rows.append(summarise("train per epoch", per_epoch(runs[lengths[0]], runs[lengths[-1]],
                                                               int(lengths[-1]) - int(lengths[0])),
                                  counts.get(which, 0)))
    return rows


def layout(times: Times) -> dict:
    """Commands, lengths and sides of saved times (what pooled files must share)."""
    return {w: {e: sorted(sides) for e, sides in by.items()} for w, by in times.items()}


def pool(files: list[Path]) -> list[dict]:
    """Summary rows over the rounds of several --save files (same commands, lengths and sides) taken together."""
    merged: Times = {}
    for f in files:
        saved = read_saved(f, "--pool")
        times, counts = saved["times"], saved["counts"]
        if merged and layout(times) != layout(merged):
            raise SystemExit(f"--pool {f}: other commands, lengths or sides than {files[0]}")
        for w, by in times.items():
            for e, sides in by.items():
                for side, rs in sides.items():
                    merged.setdefault(w, {}).setdefault(e, {}).setdefault(side, []).extend(rs)
    return summary_rows(merged, counts)


def per_epoch(short: dict[str, list[tuple[float, float]]], long: dict[str, list[tuple[float, float]]],
              extra_epochs: int) -> dict[str, list[tuple[float, float]]]:
    """Each side's seconds per added epoch in every round, (long - short) / extra_epochs, with the longer run's RSS."""
    return {side: [((b - a) / extra_epochs, rss) for (a, _), (b, rss) in zip(short[side], long[side])]
            for side in short}


def paired_ratios(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[float]:
    """a's seconds / b's seconds in each round."""
    return [x / y for (x, _), (y, _) in zip(a, b)]


def paired_ratio(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Median over rounds of a's seconds / b's seconds in the same round."""
    return statistics.median(paired_ratios(a, b))


def summarise(which: str, times: dict[str, list[tuple[float, float]]], n: int) -> dict:
    """Medians, ranges, ms per image, and median ratios paired by round: every other side against upstream
    ("ratio" for ours, "ratio <side>" for the rest) and against --baseline ("vs baseline <side>")."""
    row = {"command": which, "images": n}
    for side, runs in times.items():
        walls = [w for w, _ in runs]
        row[side] = (statistics.median(walls), min(walls), max(walls), max(r for _, r in runs))
    if "upstream" in times:
        for side in (s for s in times if s != "upstream"):
            row["ratio" if side == "ours" else f"ratio {side}"] = paired_ratio(times[side], times["upstream"])
        ours = paired_ratios(times["ours"], times["upstream"])
        row["ratio range"] = (min(ours), max(ours), len(ours))
    if "baseline" in times:
        for side in (s for s in times if s.startswith("ours")):
            row[f"vs baseline {side}"] = paired_ratio(times[side], times["baseline"])
    return row
