"""Loss ablations: one ordinary train.py run per (hyp file, seed), resumable, summarised with mean, spread and
differences paired by seed.

``benchmarks/loss_ablation.py`` is the command line; this module holds the pieces: the run plan and each run's
state on disk (``AblationRun``), reading a finished run's metrics, ``ablation.csv`` / ``ablation.md`` /
``ablation.png``. Seeds move every recipe together (the same images are augmented the same way), so the difference
of a recipe from the first one, paired by seed, is far less noisy than the difference of their means.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from utils.errors import SlideYoloError

BASE_COLUMNS = ("hyp", "seed", "P", "R", "mAP50", "mAP50-95")
DONE_FILE = "ablation_done.json"  # written into a run folder once its train.py run has finished
RECIPE_FILE = "ablation_recipe.txt"  # the recipe_key a run folder was started with


@dataclass(frozen=True)
class AblationRun:
    """One (hyp file, seed) run and its folder DIR/<hyp stem>/seed<k>."""

    hyp: str
    seed: int
    project: Path

    @property
    def name(self) -> str:
        """The hyp file's stem, e.g. 'hyp.slide'."""
        return Path(self.hyp).stem

    @property
    def folder(self) -> Path:
        """The train.py run folder."""
        return self.project / self.name / f"seed{self.seed}"

    @property
    def last_pt(self) -> Path:
        """The run's last checkpoint (present once an epoch has finished)."""
        return self.folder / "weights" / "last.pt"

    def check_recipe(self, recipe: str) -> None:
        """SlideYoloError if this run's folder was started with another recipe (data and train.py options); a folder
        from before recipes were recorded is taken as it is."""
        f = self.folder / RECIPE_FILE
        saved = f.read_text().strip() if f.is_file() else recipe
        if saved != recipe:
            raise SlideYoloError(f"{self.folder}: started with other options ({saved}), not ({recipe}); use another "
                                 "--project, or the options it was started with")

    def done(self) -> dict | None:
        """The finished run's row (from its done file), or None if it has not finished."""
        f = self.folder / DONE_FILE
        return json.loads(f.read_text()) if f.is_file() else None


def plan_runs(hyps: list[str], seeds: list[int], project: Path) -> list[AblationRun]:
    """Every (hyp, seed) pair, hyps inner: an ablation stopped part-way has every recipe at its first seeds, so
    paired differences are available early. The first hyp is the reference."""
    return [AblationRun(h, s, project) for s in seeds for h in hyps]


def read_run_metrics(folder: Path) -> dict:
    """P, R, mAP50, mAP50-95 (the 'all' row) and AP50 per class of a finished run's per_class.csv, plus epochs."""
    f = folder / "per_class.csv"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: missing; the run did not finish its final validation")
    with f.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    overall = next(r for r in rows if r["class"] == "all")
    out = {"P": float(overall["P"]), "R": float(overall["R"]), "mAP50": float(overall["mAP50"]),
           "mAP50-95": float(overall["mAP50-95"])}
    out["classes"] = {r["class"]: {"AP50": float(r["mAP50"]), "instances": int(r["instances"])}
                      for r in rows if r["class"] != "all"}
    results = folder / "results.csv"
    out["epochs"] = max(0, sum(1 for _ in results.open()) - 1) if results.is_file() else 0
    return out


def recipe_key(data: str, extra: list[str]) -> str:
    """What makes two runs of one (hyp, seed) comparable: the data file and every train.py option, as one line."""
    return " ".join([f"--data {data}", *extra])


def read_ledger(path: Path | None, recipe: str) -> dict[tuple[str, int], dict]:
    """Finished rows of this recipe from a ledger (JSON lines, one row per finished run), keyed by (hyp, seed).

    The ledger is a small file that outlives the run folders (it can be committed, copied, or kept on another disk),
    so an ablation resumes from it even after its folders are gone. Rows of another recipe are not used.
    """
    if path is None or not path.is_file():
        return {}
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = (row["hyp"], int(row["seed"]))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON row of the ablation ledger ({e.msg})") from None
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{n}: a ledger row needs 'hyp' and an integer 'seed'") from None
        if row.get("recipe") == recipe:
            out[key] = {k: v for k, v in row.items() if k != "recipe"}
    return out


def append_ledger(path: Path | None, row: dict, recipe: str) -> None:
    """Add one finished run's row to the ledger (one line, flushed at once)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({**row, "recipe": recipe}) + "\n")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def class_order(rows: list[dict]) -> list[str]:
    """Class names from most to fewest validation instances (the last is the rarest)."""
    counts: dict[str, int] = {}
    for r in rows:
        for c, v in r["classes"].items():
            counts[c] = max(counts.get(c, 0), v["instances"])
    return sorted(counts, key=lambda c: -counts[c])


def minority_ap50(row: dict, order: list[str]) -> float:
    """Mean AP50 over every class but the most frequent one."""
    rest = order[1:] or order
    return statistics.fmean(row["classes"].get(c, {"AP50": 0.0})["AP50"] for c in rest)


def write_csv(rows: list[dict], path: Path) -> Path:
    """ablation.csv: one row per run, with AP50 of every class, epochs and wall seconds."""
    order = class_order(rows)
    cols = [*BASE_COLUMNS, *(f"AP50 {c}" for c in order), "epochs", "wall_s"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            aps = [f"{r['classes'].get(c, {'AP50': 0.0})['AP50']:.4f}" for c in order]
            w.writerow([r["hyp"], r["seed"], *(f"{r[k]:.4f}" for k in BASE_COLUMNS[2:]), *aps, r["epochs"],
                        f"{r['wall_s']:.0f}"])
    return path


def metric(row: dict, key: str, order: list[str]) -> float:
    """One figure of a run: an overall metric, 'rare' (rarest class AP50) or 'minority' (minority-class AP50)."""
    if key in ("rare", "minority") and not order:
        return 0.0
    if key == "rare":
        return row["classes"].get(order[-1], {"AP50": 0.0})["AP50"]
    if key == "minority":
        return minority_ap50(row, order)
    return row[key]


def paired_difference(rows: list[dict], hyp: str, ref: str, key: str, order: list[str]) -> list[float]:
    """hyp minus ref, per seed that both have finished."""
    a = {r["seed"]: metric(r, key, order) for r in rows if r["hyp"] == hyp}
    b = {r["seed"]: metric(r, key, order) for r in rows if r["hyp"] == ref}
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def summarise(rows: list[dict]) -> list[dict]:
    """Per hyp (first-seen order): n, mean and std of each figure, and the paired differences from the first hyp."""
    order = class_order(rows)
    hyps = list(dict.fromkeys(r["hyp"] for r in rows))
    out = []
    for h in hyps:
        mine = [r for r in rows if r["hyp"] == h]
        s = {"hyp": h, "n": len(mine)}
        for key in ("mAP50", "mAP50-95", "P", "R", "rare", "minority"):
            s[key] = mean_std([metric(r, key, order) for r in mine])
            s["d_" + key] = mean_std(paired_difference(rows, h, hyps[0], key, order)) if h != hyps[0] else None
        s["pairs"] = len(paired_difference(rows, h, hyps[0], "mAP50", order))
        s["wall_s"] = statistics.fmean(r["wall_s"] for r in mine)
        cpu = [r["cpu_s"] for r in mine if r.get("cpu_s")]
        s["cpu_s"] = (statistics.fmean(cpu), len(cpu)) if cpu else None  # rows recorded before cpu_s have none
        out.append(s)
    return out


def _fmt(ms: tuple[float, float], n: int, bold: bool = False) -> str:
    """'0.512 ± 0.013' (the value alone for one seed), bold when asked."""
    text = f"{ms[0]:.3f} ± {ms[1]:.3f}" if n > 1 else f"{ms[0]:.3f}"
    return f"**{text}**" if bold else text


# Two-sided 95 % critical values of Student's t by degrees of freedom (n - 1 for n paired seeds); past 10 the
# value for 10 is used, which is slightly stricter than the exact one.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_halfwidth(std: float, n: int) -> float:
    """Half-width of the two-sided 95 % t interval of a mean of n values: t95(n - 1) * std / sqrt(n)."""
    return T95[min(n - 1, 10)] * std / math.sqrt(n)


def within_noise(mean: float, std: float, n: int) -> bool:
    """True when a paired difference's mean is not distinguishable from 0: |mean| < t95(n - 1) * std / sqrt(n).

    The one-sample t test at 95 % (two-sided) on the n per-seed differences; with 2 seeds only a difference 9 times its
    spread counts, with 5 seeds about 1.2 times (the normal approximation, 2 standard errors, is far too lenient here).
    """
    if n < 2:
        return True
    return abs(mean) < t_halfwidth(std, n)


def fmt_diff(d: tuple[float, float] | None, n: int) -> str:
    """Paired difference 'mean +- std', with '(noise)' when the t test cannot tell it from 0 (``within_noise``)."""
    if d is None:
        return "reference"
    if n < 2:
        return f"{d[0]:+.3f} (1 seed)"
    return f"{d[0]:+.3f} ± {d[1]:.3f}" + (" (noise)" if within_noise(d[0], d[1], n) else "")


def _fmt_cpu(cpu: tuple[float, int] | None, n: int) -> str:
    """Mean CPU seconds per run, '(k of n runs)' when only some rows recorded it, '-' when none did."""
    if cpu is None:
        return "-"
    return f"{cpu[0]:.0f}" + (f" ({cpu[1]} of {n} runs)" if cpu[1] < n else "")


def markdown_table(rows: list[dict]) -> str:
    """ablation.md: mean ± std per hyp (best in bold), rarest-class and minority AP50, paired differences."""
    order = class_order(rows)
    summary = summarise(rows)
    keys = ("mAP50", "mAP50-95", "P", "R", "rare", "minority")
    best = {k: max(s[k][0] for s in summary) for k in keys}
    rare = order[-1] if order else "-"
    head = (f"| hyp | seeds | mAP50 | mAP50-95 | P | R | AP50 {rare} (rarest) | minority AP50 | Δ mAP50 paired | "
            f"Δ {rare} paired | Δ minority paired | wall s/run | CPU s/run |")
    lines = [head, "|" + "---|" * 2 + "---:|" * 11]
    for s in summary:
        n_pairs = s["pairs"]
        cells = [_fmt(s[k], s["n"], bold=len(summary) > 1 and s[k][0] == best[k]) for k in keys]
        diffs = [fmt_diff(s["d_" + k], n_pairs) for k in ("mAP50", "rare", "minority")]
        lines.append(f"| {s['hyp']} | {s['n']} | " + " | ".join(cells + diffs) + f" | {s['wall_s']:.0f} | "
                     + _fmt_cpu(s["cpu_s"], s["n"]) + " |")
    note = (f"\nMean ± sample std over seeds. Δ: difference from {summary[0]['hyp'] if summary else '-'} paired by "
            "seed, mean ± std; '(noise)' when a t test (95 %, two-sided) cannot tell its mean from 0. Minority AP50: "
            "mean over "
            f"every class but the most frequent ({order[0] if order else '-'}). Classes by validation instances: "
            + ", ".join(order) + ".\n")
    return "\n".join(lines) + "\n" + note


def plot_ablation(rows: list[dict], path: Path) -> Path:
    """ablation.png, one row per hyp: mAP50 of every seed with mean +- std, then the paired differences from the first
    hyp in mAP50 and in the rarest class's AP50 with their 95 % t intervals (coloured where they exclude 0)."""
    from utils.plots import pyplot_agg, save_figure

    order, summary = class_order(rows), summarise(rows)
    plt = pyplot_agg()
    fig, axes = plt.subplots(1, 3, figsize=(15, 1.6 + 0.45 * len(summary)), sharey=True, tight_layout=True)
    y = list(range(len(summary)))[::-1]  # the first hyp on top
    for yi, s in zip(y, summary):
        pts = [metric(r, "mAP50", order) for r in rows if r["hyp"] == s["hyp"]]
        axes[0].plot(pts, [yi] * len(pts), "k.", markersize=6, alpha=0.6)
        axes[0].errorbar(s["mAP50"][0], yi, xerr=s["mAP50"][1] if s["n"] > 1 else None, fmt="o", color="tab:blue",
                         capsize=4)
    axes[0].set(title="mAP50 (each seed, mean ± std)", xlabel="mAP50")
    rare = order[-1] if order else ""
    ref = summary[0]["hyp"] if summary else "-"
    for ax, key, title in ((axes[1], "mAP50", "Δ mAP50"), (axes[2], "rare", f"Δ AP50 {rare} (rarest)")):
        _plot_paired(ax, rows, summary, key, order, y)
        ax.set(title=f"{title} vs {ref}\npaired by seed, 95 % t interval", xlabel="difference")
    axes[0].set_yticks(y, [s["hyp"] for s in summary], fontsize=9)
    return save_figure(plt, fig, path, dpi=120)


def _plot_paired(ax, rows: list[dict], summary: list[dict], key: str, order: list[str], y: list[int]) -> None:
    """One panel of paired differences: each seed's as a dot, the mean with its t interval, a line at 0."""
    ref = summary[0]["hyp"] if summary else ""
    ax.axvline(0.0, color="grey", linewidth=1)
    for yi, s in zip(y[1:], summary[1:]):
        d = paired_difference(rows, s["hyp"], ref, key, order)
        if not d:
            continue
        mean, std = mean_std(d)
        half = t_halfwidth(std, len(d)) if len(d) > 1 else None
        noise = within_noise(mean, std, len(d))
        colour = "tab:grey" if noise else ("tab:green" if mean > 0 else "tab:red")
        ax.plot(d, [yi] * len(d), "k.", markersize=6, alpha=0.6)
        ax.errorbar(mean, yi, xerr=half, fmt="o", color=colour, capsize=4)
