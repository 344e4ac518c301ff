"""benchmarks/loss_ablation.py on tiny data; the summary statistics of utils/train/ablation.py by hand."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys

import cv2
import pytest
import torch
from conftest import ROOT, press_ctrl_c_when, tiny_shapes_yaml

from utils.errors import SlideYoloError
from utils.train.ablation import (
    AblationRun,
    markdown_table,
    paired_difference,
    plot_ablation,
    summarise,
    t_halfwidth,
    within_noise,
)


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_runner():
    """The ablation runner, benchmarks/loss_ablation.py."""
    return load_benchmark("loss_ablation")


def row(hyp: str, seed: int, map50: float, rare: float) -> dict:
    """A finished run's row as the runner records it (two classes, 'b' the rarer)."""
    return {"hyp": hyp, "seed": seed, "P": 0.5, "R": 0.5, "mAP50": map50, "mAP50-95": map50 / 2, "epochs": 3,
            "wall_s": 10.0, "classes": {"a": {"AP50": 2 * map50 - rare, "instances": 50},
                                        "b": {"AP50": rare, "instances": 5}}}


def test_paired_differences_cancel_what_seeds_share():
    rows = [row("base", 0, 0.50, 0.1), row("base", 1, 0.60, 0.3), row("new", 0, 0.52, 0.2), row("new", 1, 0.62, 0.4)]
    assert paired_difference(rows, "new", "base", "mAP50", ["a", "b"]) == pytest.approx([0.02, 0.02])
    s = {x["hyp"]: x for x in summarise(rows)}
    assert s["base"]["mAP50"][1] == pytest.approx(0.0707, abs=1e-4)  # raw spread over seeds: 0.07
    assert s["new"]["d_mAP50"] == pytest.approx((0.02, 0.0))  # paired: exactly +0.02 each time
    assert s["new"]["rare"][0] == pytest.approx(0.3) and s["base"]["d_mAP50"] is None
    table = markdown_table(rows)
    assert "| new | 2 | **0.570 ± 0.071**" in table and "+0.020 ± 0.000" in table and "reference" in table
    assert "AP50 b (rarest)" in table


def test_noise_is_a_t_test_on_the_paired_differences():
    # two seeds: a difference must be about 9 times its spread (t 12.7 / sqrt 2) to count
    assert within_noise(-0.003, 0.001, 2) and not within_noise(-0.010, 0.001, 2)
    # five seeds: t 2.776 / sqrt 5 = 1.24 times the spread
    assert within_noise(0.012, 0.010, 5) and not within_noise(0.013, 0.010, 5)
    assert within_noise(0.5, 0.0, 1)  # one seed says nothing
    assert not within_noise(0.02, 0.0, 2)  # the same difference on every seed
    # the plot's error bar is the same interval: 4.303 * 0.01 / sqrt(3) for three seeds
    assert t_halfwidth(0.01, 3) == pytest.approx(0.024843, abs=1e-6)


def test_plot_has_a_row_per_hyp(tmp_path):
    rows = [row("base", s, 0.5 + 0.01 * s, 0.1) for s in range(3)]
    few = cv2.imread(str(plot_ablation(rows + [row("new", 0, 0.6, 0.2)], tmp_path / "two.png")))
    many = cv2.imread(str(plot_ablation(rows + [row(f"h{i}", s, 0.4, 0.2) for i in range(8) for s in range(3)],
                                        tmp_path / "nine.png")))
    assert few is not None and many is not None and many.shape[0] > few.shape[0]  # taller with more recipes
    assert cv2.imread(str(plot_ablation(rows[:1], tmp_path / "one.png"))) is not None  # one run: no differences


def test_cpu_seconds_are_shown_for_the_runs_that_recorded_them():
    rows = [row("base", 0, 0.5, 0.1), {**row("base", 1, 0.5, 0.1), "cpu_s": 300.0}, row("new", 0, 0.6, 0.2)]
    table = markdown_table(rows)
    assert "| 10 | 300 (1 of 2 runs) |" in table  # wall 10 s each; CPU time from the one row that has it
    assert table.splitlines()[3].endswith("| 10 | - |")  # no row of 'new' recorded CPU time


def test_within_noise_is_said():
    rows = [row("base", s, 0.5, 0.1) for s in range(3)] + [row("new", s, 0.5 + d, 0.1)
                                                          for s, d in enumerate((0.03, -0.02, 0.0))]
    assert "(noise)" in markdown_table(rows)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    """12 train / 4 val generated images at 96 px and their data YAML."""
    return tiny_shapes_yaml(tmp_path_factory.mktemp("abl"), seed=5, n_train=12, n_val=4)


@pytest.mark.slow
def test_tiny_ablation_writes_its_outputs_and_resumes(tiny_data, tmp_path):
    runner = load_runner()
    project = tmp_path / "abl"
    argv = ["--data", tiny_data, "--hyps", "hyp.scratch-low.yaml", "hyp.slide.yaml", "--seeds", "0",
            "--project", str(project), "--epochs", "1", "--imgsz", "64", "--batch-size", "4", "--workers", "0",
            "--noplots"]
    rows = runner.main([*argv, "--jobs", "2"])  # both runs at once, one thread each; rows still in plan order
    assert [r["hyp"] for r in rows] == ["hyp.scratch-low", "hyp.slide"]
    with (project / "ablation.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and {"hyp", "seed", "P", "R", "mAP50", "mAP50-95", "epochs", "wall_s"} <= set(table[0])
    assert table[0]["epochs"] == "1" and float(table[0]["wall_s"]) > 0
    assert "| hyp.slide | 1 |" in (project / "ablation.md").read_text()
    assert (project / "ablation.png").stat().st_size > 1000
    assert json.loads((project / "ablation.json").read_text()) == rows  # the rows as recorded, for other tools
    done = project / "hyp.slide" / "seed0" / "ablation_done.json"
    recorded = json.loads(done.read_text())
    assert recorded["commit"] == runner.code_commit() and recorded["commit"]  # which code measured the row
    assert 0 < recorded["cpu_s"] and recorded["cpu"] == runner.cpu_model()  # CPU time survives pauses; which CPU
    assert recorded["threads"] == runner.job_env(2).get("OMP_NUM_THREADS", "default")  # --jobs 2: cores shared
    log = project / "hyp.slide" / "seed0" / "train.log"
    size = log.stat().st_size
    again = runner.main(argv)  # everything finished: nothing is trained again
    assert log.stat().st_size == size and again[1]["mAP50"] == recorded["mAP50"]
    assert (project / "hyp.slide" / "seed0" / "ablation_recipe.txt").read_text().endswith("--epochs 1 --imgsz 64 "
                                                                                          "--batch-size 4 --workers 0 "
                                                                                          "--noplots")
    other = [a if a != "1" else "2" for a in argv]  # --epochs 2: these folders' rows are not its rows
    with pytest.raises(SlideYoloError, match=r"seed0: started with other options \(--data .* --epochs 1 "):
        runner.main(other)
    report = runner.main(["--hyps", "hyp.scratch-low.yaml", "hyp.slide.yaml", "--seeds", "0", "--project",
                          str(project), "--report"])  # a report trains nothing: no training options needed
    assert [r["mAP50"] for r in report] == [r["mAP50"] for r in rows]


def test_a_failed_run_is_reported_with_the_last_line_of_its_log(tmp_path):
    runner = load_runner()
    (tmp_path / "train.log").write_text("$ python train.py\nscan 10%\rscan 100%\n"
                                        "train.py: data YAML not found: nosuch.yaml\n\n")
    assert runner.last_line(tmp_path) == "train.py: data YAML not found: nosuch.yaml"


@pytest.mark.slow
def test_ctrl_c_stops_the_ablation_and_the_same_command_finishes_it(tiny_data, tmp_path):
    project = tmp_path / "abl"
    cmd = [sys.executable, "benchmarks/loss_ablation.py", "--data", tiny_data, "--hyps", "hyp.scratch-low.yaml",
           "--seeds", "0", "--project", str(project), "--epochs", "5", "--imgsz", "64", "--batch-size", "2",
           "--workers", "2", "--noval", "--noplots"]
    last = project / "hyp.scratch-low" / "seed0" / "weights" / "last.pt"
    r = press_ctrl_c_when(cmd, last)
    assert r.returncode == 130 and "Traceback" not in r.stdout, r.stdout[-3000:]
    assert "loss_ablation.py: interrupted; finished runs are kept" in r.stdout
    assert "holds epoch" in (last.parent.parent / "train.log").read_text()  # train.py's own hint, in the run's log
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (last.parent.parent / "train.log").read_text()
    assert "--resume" in log.split("$ ")[-1].splitlines()[0]  # the second command continued the run
    assert json.loads((project / "ablation.json").read_text())[0]["epochs"] == 5


def test_jobs_share_the_cores_unless_threads_are_set(monkeypatch):
    runner = load_runner()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 8)
    assert runner.job_env(2)["OMP_NUM_THREADS"] == "4" and runner.job_env(16)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in runner.job_env(1)  # one job: torch's own default
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runner.job_env(2)["OMP_NUM_THREADS"] == "3"
    with pytest.raises(SystemExit):
        runner.parse_opt(["--hyps", "hyp.scratch-low.yaml", "--project", "p", "--jobs", "0"])


def test_a_failed_run_stops_the_ablation_before_the_next_starts(tmp_path, monkeypatch):
    runner = load_runner()
    started = []

    def failing(run, data, extra, env=None):
        started.append(run.name)
        raise SystemExit(f"loss_ablation: {run.name} seed {run.seed} failed (exit 1)")

    monkeypatch.setattr(runner, "execute", failing)
    with pytest.raises(SystemExit, match="hyp.scratch-low seed 0 failed"):
        runner.main(["--hyps", "hyp.scratch-low.yaml", "hyp.slide.yaml", "--seeds", "0", "1",
                     "--project", str(tmp_path / "p")])
    assert started == ["hyp.scratch-low"]


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path):
    runner = load_runner()
    run = AblationRun("hyp.slide.yaml", 3, tmp_path)
    fresh = runner.train_command(run, "data.yaml", ["--epochs", "5"])
    assert fresh[-4:] == ["--epochs", "5", "--cpu-dp", "1"]  # one part, as the ledgers' rows were trained
    assert "--resume" not in fresh and fresh[fresh.index("--seed") + 1] == "3"
    assert runner.train_command(run, "data.yaml", ["--cpu-dp", "2"])[-2:] == ["--cpu-dp", "2"]  # a recipe's own
    run.last_pt.parent.mkdir(parents=True)
    run.last_pt.write_bytes(b"checkpoint")
    assert runner.train_command(run, "data.yaml", ["--epochs", "5"])[-2:] == ["--resume", str(run.last_pt)]


def test_a_run_stopped_by_ctrl_c_stops_the_ablation_as_interrupted(tmp_path, monkeypatch):
    runner = load_runner()
    run = AblationRun("hyp.slide.yaml", 0, tmp_path)
    monkeypatch.setattr(runner, "train_command", lambda *a: [sys.executable, "-c", "raise SystemExit(130)"])
    with pytest.raises(KeyboardInterrupt):  # train.py's exit status for Ctrl-C, not "failed (exit 130)"
        runner.train(run, "data.yaml", [], runner.job_env(1))
    assert (run.folder / "ablation_wall_s.txt").is_file()  # the time spent so far is kept


def test_a_bad_hyp_file_fails_before_any_run(tmp_path):
    runner = load_runner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss_norm: median\n")
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match="bad.yaml"):
        runner.main(["--hyps", "hyp.scratch-low.yaml", str(bad), "--seeds", "0", "--project", str(tmp_path / "p")])
    assert not (tmp_path / "p").exists()


def test_a_missing_data_file_is_one_error_line(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, str(ROOT / "benchmarks" / "loss_ablation.py"), "--data", str(tmp_path / "none.yaml"),
           "--hyps", "hyp.scratch-low.yaml", "--project", str(tmp_path / "p"), "--jobs", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"loss_ablation.py: error: data YAML not found: {tmp_path / 'none.yaml'}" in out.stderr


def test_plan_runs_every_recipe_at_each_seed_first(tmp_path):
    from utils.train.ablation import plan_runs

    runs = plan_runs(["hyp.a.yaml", "hyp.b.yaml"], [0, 1], tmp_path)
    assert [(r.name, r.seed) for r in runs] == [("hyp.a", 0), ("hyp.b", 0), ("hyp.a", 1), ("hyp.b", 1)]
    assert runs[1].folder == tmp_path / "hyp.b" / "seed0"


def test_loss_scale_prints_ratios_to_the_first_hyp(tiny_data, capsys):
    module = load_benchmark("loss_scale")
    rows = module.main(["--data", tiny_data, "--hyps", "hyp.scratch-low.yaml", "hyp.focal.yaml", "hyp.ce-balanced.yaml",
                        "--imgsz", "64", "--batch-size", "4", "--batches", "1"])
    base, focal = rows[0], rows[1]
    assert base["grads"][1] > 0 and focal["values"][0] == pytest.approx(base["values"][0])  # same box term
    assert "x ref" in capsys.readouterr().out


def test_model_zoo_table_with_a_short_training(tiny_data, tmp_path):
    module = load_benchmark("model_zoo")
    argv = ["yolov5n.yaml", "yolov5-mobilenetv3s.yaml", "--sizes", "64", "--warmup", "1", "--runs", "2",
            "--epochs", "1", "--data", tiny_data, "--imgsz", "64", "--project", str(tmp_path / "zoo")]
    rows = module.main(argv)
    assert [r["model"] for r in rows] == ["yolov5n", "yolov5-mobilenetv3s"]
    assert rows[0]["params"] == 1_872_157 and all(r["onnxruntime ms 64"] > 0 and 0 <= r["mAP50"] <= 1 for r in rows)
    assert rows[0]["onnxruntime speed-up 64"] == 1.0  # the first model is the reference
    ms = [r["onnxruntime ms 64"] for r in rows]
    assert rows[1]["onnxruntime speed-up 64"] == pytest.approx(ms[0] / ms[1])
    assert "| yolov5-mobilenetv3s | 1,663,069 |" in (tmp_path / "zoo" / "model_zoo.md").read_text()
    assert (tmp_path / "zoo" / "model_zoo.png").stat().st_size > 1000  # speed against accuracy
    again = module.main(argv)  # the training runs are read back, not repeated
    assert again[1]["mAP50"] == rows[1]["mAP50"]


def test_a_ledger_outlives_the_run_folders(tmp_path, monkeypatch):
    import shutil

    runner = load_runner()
    trained = []

    def fake(run, data, extra, env=None):
        trained.append((run.name, run.seed))
        return row(run.name, run.seed, 0.5 + run.seed / 10, 0.1)

    monkeypatch.setattr(runner, "execute", fake)
    ledger, project = tmp_path / "kept" / "ledger.jsonl", tmp_path / "p"
    argv = ["--hyps", "hyp.scratch-low.yaml", "hyp.slide.yaml", "--seeds", "0", "1", "--project", str(project),
            "--ledger", str(ledger), "--epochs", "3"]
    runner.main(argv)
    assert len(trained) == 4 and len(ledger.read_text().splitlines()) == 4
    shutil.rmtree(project)  # e.g. a new checkout: the run folders are gone, the committed ledger is not
    rows = runner.main(argv)
    assert len(trained) == 4 and [r["mAP50"] for r in rows] == [0.5, 0.5, 0.6, 0.6]
    assert (project / "ablation.md").is_file()  # the tables are written again from the ledger alone
    report = tmp_path / "report"
    rows = runner.main([*argv, "--report", "--project", str(report), "--seeds", "0", "1", "2"])
    assert len(trained) == 4 and len(rows) == 4  # --report trains nothing; seed 2 is simply missing
    assert "| hyp.slide | 2 |" in (report / "ablation.md").read_text()
    runner.main([*argv[:-1], "5"])  # another recipe (--epochs 5): the ledger's rows are not its rows
    assert len(trained) == 8 and len(ledger.read_text().splitlines()) == 8
    folder = tmp_path / "other" / "hyp.slide" / "seed7"  # a finished run of some recipe, not in the ledger
    folder.mkdir(parents=True)
    (folder / "ablation_done.json").write_text(json.dumps(row("hyp.slide", 7, 0.7, 0.2)))
    before = ledger.read_text()
    rows = runner.main(["--hyps", "hyp.slide.yaml", "--seeds", "7", "--project", str(tmp_path / "other"),
                        "--ledger", str(ledger), "--report"])
    assert rows[0]["mAP50"] == 0.7 and ledger.read_text() == before  # shown, never filed under the report's recipe


def test_a_damaged_ledger_is_named(tmp_path):
    runner = load_runner()
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text('{"hyp": "hyp.slide", "seed": 0}\n{not json\n')
    argv = ["--hyps", "hyp.scratch-low.yaml", "--seeds", "0", "--project", str(tmp_path / "p"), "--ledger", str(ledger)]
    with pytest.raises(SlideYoloError, match=r"ledger.jsonl:2: not a JSON row"):
        runner.main(argv)
    ledger.write_text('{"hyp": "hyp.slide", "seed": "first"}\n')
    with pytest.raises(SlideYoloError, match=r"ledger.jsonl:1: a ledger row needs 'hyp' and an integer 'seed'"):
        runner.main(argv)


def load_readme_tool():
    """benchmarks/ablation_readme.py as a module."""
    return load_benchmark("ablation_readme")


def test_every_refreshed_ablation_has_its_table_markers_and_ledger():
    module = load_readme_tool()
    readme = (ROOT / "README.md").read_text()
    for name, script in module.ABLATIONS.items():
        assert f"<!-- {name}-table -->" in readme and f"<!-- /{name}-table -->" in readme, name
        ledger = re.search(r"--ledger \"\$\{LEDGER:-(docs/ablation/[\w.-]+\.jsonl)\}\"", (ROOT / script).read_text())
        assert ledger and (ROOT / ledger.group(1)).stat().st_size > 0, script


def test_readme_tables_are_replaced_between_their_markers():
    module = load_readme_tool()
    readme = "intro\n<!-- shapes-table -->\n| old |\n<!-- /shapes-table -->\nafter\n"
    assert module.replace_table(readme, "shapes", "| new |\n") == (
        "intro\n<!-- shapes-table -->\n| new |\n<!-- /shapes-table -->\nafter\n")
    with pytest.raises(ValueError, match="facemask-table"):
        module.replace_table(readme, "facemask", "| new |")


def load_score_ranking():
    """benchmarks/score_ranking.py as a module."""
    return load_benchmark("score_ranking")


def test_score_ranking_neutralises_one_score_at_a_time():
    module = load_score_ranking()
    y = torch.tensor([[[5.0, 5.0, 2.0, 2.0, 0.3, 0.2, 0.7]]])  # one box: xywh, objectness 0.3, two classes
    backend = lambda im: (y, None)  # noqa: E731  (a PyTorch model in eval mode returns (predictions, raw))
    assert module.rescored(backend, "obj x cls")(None).tolist() == y.tolist()
    assert module.rescored(backend, "cls only")(None)[0, 0, 4:].tolist() == pytest.approx([1.0, 0.2, 0.7])
    assert module.rescored(backend, "obj only")(None)[0, 0, 4:].tolist() == pytest.approx([0.3, 0.0, 1.0])
    assert y[0, 0, 4] == pytest.approx(0.3)  # the model's own output is left alone


def test_score_ranking_scores_a_checkpoint_three_ways(tiny_data, tmp_path, capsys):
    from models.yolo import DetectionModel
    from utils.checkpoint import save_checkpoint
    from utils.train.hyp import load_hyp

    model = DetectionModel("yolov5n.yaml", nc=6)
    model.hyp = load_hyp("hyp.scratch-low.yaml")
    weights = save_checkpoint({"model": model, "epoch": -1}, tmp_path / "w.pt")
    rows = load_score_ranking().main(["--data", tiny_data, "--weights", str(weights), "--imgsz", "64",
                                      "--batch-size", "4", "--threads", "1"])
    assert list(rows[0]) == ["weights", "obj x cls", "cls only", "obj only"]
    assert all(0.0 <= m50 <= 1.0 and 0.0 <= m <= m50 + 1e-9 for m50, m in list(rows[0].values())[1:])
    assert "obj only mAP50 / 50-95" in capsys.readouterr().out
