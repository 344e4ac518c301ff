"""Issue #9's targets read off ablation rows: drops, the best recipe's gains, CE's spread, and "so far"."""

from __future__ import annotations

from utils.train.ablation_targets import best_recipe_row, ce_spread_row, drop_rows, targets_table


def row(hyp: str, seed: int, map50: float, minority: float) -> dict:
    """A finished run with two classes: 'a' (frequent) and 'b' (the minority, AP50 = minority)."""
    return {"hyp": hyp, "seed": seed, "P": 0.5, "R": 0.5, "mAP50": map50, "mAP50-95": map50 / 2, "epochs": 3,
            "wall_s": 10.0, "classes": {"a": {"AP50": 2 * map50 - minority, "instances": 50},
                                        "b": {"AP50": minority, "instances": 5}}}


def rows_for(recipes: dict[str, list[tuple[float, float]]]) -> list[dict]:
    """Rows of each recipe at seeds 0, 1, ... from its (mAP50, minority AP50) pairs; the first is the reference."""
    return [row(h, s, m, r) for h, runs in recipes.items() for s, (m, r) in enumerate(runs)]


def test_a_drop_beyond_002_misses_and_controls_are_exempt():
    rows = rows_for({"base": [(0.50, 0.2), (0.60, 0.3)], "worse": [(0.47, 0.2), (0.57, 0.3)],
                     "level": [(0.49, 0.2), (0.59, 0.3)], "hyp.slide-gain-control": [(0.1, 0.1), (0.1, 0.1)]})
    found = {r[1].split()[0]: r for r in drop_rows("facemask", rows, planned=2)}
    assert set(found) == {"worse", "level"}  # the reference and the control are not held to it
    assert found["worse"][2] == "-0.030 ± 0.000" and found["worse"][3] == "missed"
    assert found["level"][3] == "met"
    assert drop_rows("facemask", rows, planned=5)[0][3] == "missed so far (2 of 5 seeds)"


def test_best_recipe_needs_both_gains():
    rows = rows_for({"base": [(0.50, 0.20), (0.60, 0.30)], "rare": [(0.505, 0.26), (0.605, 0.36)],
                     "both": [(0.52, 0.24), (0.62, 0.34)]})
    best = best_recipe_row("facemask", rows, planned=2)
    assert "(rare)" in best[1] and best[3] == "missed"  # largest minority gain (+0.06) but mAP50 only +0.005
    rows = rows_for({"base": [(0.50, 0.20), (0.60, 0.30)], "both": [(0.52, 0.24), (0.62, 0.34)]})
    assert best_recipe_row("facemask", rows, planned=2)[3] == "met"


def test_ce_spread_compares_sample_stds():
    rows = rows_for({"base": [(0.50, 0.2), (0.52, 0.2), (0.54, 0.2)], "hyp.ce": [(0.40, 0.2), (0.55, 0.2), (0.5, 0.2)]})
    spread = ce_spread_row("facemask", rows, planned=3)
    assert spread[2] == "std 0.076 against 0.020" and spread[3] == "missed"
    assert ce_spread_row("facemask", rows[:4], planned=3) is None  # hyp.ce has one seed: nothing to compare


def test_table_has_the_facemask_only_target_once():
    rows = rows_for({"base": [(0.50, 0.2), (0.60, 0.3)], "x": [(0.51, 0.25), (0.61, 0.35)]})
    table = targets_table({"facemask": (rows, 5), "built-in": (rows, 3), "empty": ([], 3)})
    assert table.count("best recipe") == 1 and table.count("| built-in |") == 1 and "empty" not in table
    assert table.splitlines()[0].startswith("| data | target |")
