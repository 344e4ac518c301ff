"""benchmarks/cli_speed.py and benchmarks/rounds.py: the looped detect source, input counts, paired ratios, saved
and pooled rounds, and one real timed run."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys

import cv2
import numpy as np
import pytest
import yaml

from benchmarks.rounds import per_epoch, summarise
from tests.conftest import ROOT, tiny_shapes_yaml
from utils.checkpoint import save_checkpoint


def load_cli_speed():
    """The benchmark script as a module."""
    spec = importlib.util.spec_from_file_location("cli_speed", ROOT / "benchmarks" / "cli_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_clip(path, frames: int) -> None:
    """A small mp4 whose frame i is filled with grey level 40 * i + 20."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
    for i in range(frames):
        out.write(np.full((48, 64, 3), 40 * i + 20, np.uint8))
    out.release()


def test_looped_source_plays_the_clip_forth_and_back(tmp_path):
    cli = load_cli_speed()
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
    write_clip(src / "clip.mp4", 5)
    out = cli.looped_source(str(src), 12, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "clip_12f.mp4"]
    cap, levels = cv2.VideoCapture(str(out / "clip_12f.mp4")), []
    while (frame := cap.read()[1]) is not None:
        levels.append(round((float(frame.mean()) - 20) / 40))
    assert levels == [0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 0, 1]


def test_ratio_is_the_median_of_paired_runs():
    row = summarise("val", {"ours": [(10.0, 100), (30.0, 120), (12.0, 110)],
                            "upstream": [(20.0, 200), (40.0, 210), (48.0, 205)]}, 100)
    assert row["ours"] == (12.0, 10.0, 30.0, 120)
    assert row["ratio"] == pytest.approx(0.5)  # pairs 0.5, 0.75, 0.25; the raw medians would give 12 / 40


@pytest.mark.slow
def test_times_our_val_and_detect(tmp_path, capsys):
    from models.yolo import DetectionModel

    cli = load_cli_speed()
    data = tiny_shapes_yaml(tmp_path, seed=0, n_train=2, n_val=4)
    model = DetectionModel("yolov5n.yaml", nc=6)
    model.names = dict(enumerate(yaml.safe_load(open(data))["names"].values()))
    weights = save_checkpoint({"model": model}, tmp_path / "m.pt")
    src = tmp_path / "src"
    src.mkdir()
    write_clip(src / "clip.mp4", 3)
    opt = cli.parse_opt(["--weights", str(weights), "--data", data, "--source", str(src), "--imgsz", "64",
                         "--runs", "1", "--video-frames", "4"])
    (val_row, detect_row) = cli.main(opt)
    assert (val_row["images"], detect_row["images"]) == (4, 4)
    assert val_row["ours"][0] > 0 and detect_row["ours"][3] > 0  # wall seconds, peak MiB
    assert "ms/img" in capsys.readouterr().out


def test_train_command_and_variants_are_sides_paired_with_upstream(tmp_path):
    cli = load_cli_speed()
    opt = cli.parse_opt(["--commands", "train", "--upstream", str(tmp_path), "--upstream-python", "/up/python",
                         "--variant", "--cpu-dp 2"])
    data = {"ours": tmp_path / "ours.yaml", "upstream": tmp_path / "up.yaml"}
    argv, cwd = cli.command("train", "ours --cpu-dp 2", opt, data, tmp_path / "out")
    assert cwd == ROOT and argv[1:3] == ["train.py", "--data"] and argv[3] == str(data["ours"])
    assert argv[-2:] == ["--cpu-dp", "2"] and {"--noval", "--noplots"} <= set(argv)
    up, up_cwd = cli.command("train", "upstream", opt, data, tmp_path / "out")
    assert up[0] == "/up/python" and up_cwd == tmp_path and up[3] == str(data["upstream"]) and "--cpu-dp" not in up
    row = summarise("train", {"ours": [(30.0, 1)], "ours --cpu-dp 2": [(20.0, 1)], "upstream": [(40.0, 1)]}, 512)
    assert row["ratio"] == pytest.approx(0.75) and row["ratio ours --cpu-dp 2"] == pytest.approx(0.5)
    with pytest.raises(SystemExit):  # val needs --weights and --data
        cli.parse_opt(["--commands", "val"])


def test_an_older_checkout_of_ours_is_a_baseline_side(tmp_path):
    cli = load_cli_speed()
    opt = cli.parse_opt(["--commands", "train", "--baseline", str(tmp_path / "old"), "--variant", "--cpu-dp 1"])
    data = {"ours": tmp_path / "ours.yaml"}
    argv, cwd = cli.command("train", "baseline", opt, data, tmp_path / "out")
    assert cwd == tmp_path / "old" and argv[0] == sys.executable and argv[3] == str(data["ours"])
    assert "--cpu-dp" not in argv  # the baseline runs with its own defaults
    row = summarise("train", {"ours": [(30.0, 1), (33.0, 1)], "ours --cpu-dp 1": [(36.0, 1), (40.0, 1)],
                                  "baseline": [(40.0, 1), (44.0, 1)]}, 512)
    assert row["vs baseline ours"] == pytest.approx(0.75) and row["vs baseline ours --cpu-dp 1"] == pytest.approx(
        statistics.median([0.9, 40 / 44]))
    assert "ratio" not in row  # no upstream side, no ratio to it


def test_a_missing_checkout_or_python_is_refused_before_anything_is_timed(tmp_path):
    from utils.errors import ConfigError

    cli = load_cli_speed()
    with pytest.raises(ConfigError, match=r"--upstream /path/to/yolov5: not a YOLOv5-style checkout"):
        cli.bench(cli.parse_opt(["--commands", "train", "--upstream", "/path/to/yolov5"]))
    with pytest.raises(ConfigError, match=r"--baseline .*old: not a YOLOv5-style checkout"):
        cli.bench(cli.parse_opt(["--commands", "train", "--baseline", str(tmp_path / "old")]))
    (tmp_path / "train.py").touch()
    with pytest.raises(ConfigError, match=r"--upstream-python /no/python: no such Python"):
        cli.bench(cli.parse_opt(["--commands", "train", "--upstream", str(tmp_path), "--upstream-python",
                                 "/no/python"]))


def test_train_at_two_lengths_gives_the_time_per_added_epoch(tmp_path):
    cli = load_cli_speed()
    opt = cli.parse_opt(["--commands", "val", "train", "--weights", "w.pt", "--data", "d.yaml",
                         "--train-epochs", "1", "3"])
    assert cli.tasks(opt) == [("val", 1), ("train", 1), ("train", 3)]
    argv, _ = cli.command("train", "ours", opt, {"ours": tmp_path / "o.yaml"}, tmp_path / "out", epochs=3)
    assert argv[argv.index("--epochs") + 1] == "3"
    short = {"ours": [(20.0, 900), (22.0, 910)], "upstream": [(30.0, 1000), (31.0, 1000)]}
    long = {"ours": [(30.0, 950), (34.0, 960)], "upstream": [(50.0, 1100), (53.0, 1100)]}
    marginal = per_epoch(short, long, 2)  # start-up and the end of a run cancel out
    assert marginal == {"ours": [(5.0, 950), (6.0, 960)], "upstream": [(10.0, 1100), (11.0, 1100)]}
    row = summarise("train per epoch", marginal, 512)
    assert row["ratio"] == pytest.approx(statistics.median([0.5, 6 / 11]))


@pytest.mark.slow
def test_times_our_train_on_generated_images(capsys):
    cli = load_cli_speed()
    (row,) = cli.main(cli.parse_opt(["--commands", "train", "--train-images", "4", "--train-imgsz", "64", "--runs",
                                     "1"]))
    assert row["images"] == 4 and row["ours"][0] > 0 and row["ours"][3] > 0
    assert "train" in capsys.readouterr().out


def fake_runs(cli, monkeypatch, seconds: dict[str, float]) -> list:
    """Replace the timed processes by fixed wall times per side (upstream's train.py runs in a folder of its own)."""
    calls = []

    def run_once(argv, cwd, env):
        calls.append(argv)
        side = "upstream" if argv[0] == "/up/python" else "ours"
        return seconds[side] * int(argv[argv.index("--epochs") + 1]), 100.0

    monkeypatch.setattr(cli, "run_once", run_once)
    monkeypatch.setattr(cli, "check_sides", lambda opt: None)  # the fake upstream is no checkout
    monkeypatch.setattr(cli, "train_data", lambda n, folder, sides, imgsz: {"ours": folder / "o.yaml",
                                                                     "upstream": folder / "u.yaml"})
    return calls


def test_saved_rounds_resume_and_extend_a_run(tmp_path, monkeypatch):
    cli = load_cli_speed()
    calls = fake_runs(cli, monkeypatch, {"ours": 6.0, "upstream": 10.0})
    save = tmp_path / "bench" / "a.json"
    args = ["--commands", "train", "--train-epochs", "1", "3", "--upstream", str(tmp_path), "--upstream-python",
            "/up/python", "--save", str(save)]
    cli.main(cli.parse_opt([*args, "--runs", "2"]))
    assert len(calls) == 3 * 2 * 2  # (warm-up + 2 rounds) x 2 lengths x 2 sides
    assert [r[0] for r in json.loads(save.read_text())["times"]["train"]["3"]["ours"]] == [18.0, 18.0]
    calls.clear()
    (_, _, per_epoch) = cli.main(cli.parse_opt([*args, "--runs", "3"]))  # one more round, after a new warm-up
    assert len(calls) == 2 * 2 * 2
    assert per_epoch["ours"][0] == pytest.approx(6.0) and per_epoch["ratio"] == pytest.approx(0.6)
    assert len(json.loads(save.read_text())["times"]["train"]["1"]["upstream"]) == 3
    calls.clear()
    cli.main(cli.parse_opt([*args, "--runs", "3"]))  # nothing missing: nothing timed
    assert calls == []
    with pytest.raises(SystemExit, match="a.json: saved by a run with other options"):
        cli.main(cli.parse_opt([*args, "--runs", "3", "--train-images", "64"]))


def test_pooled_runs_are_summarised_as_one(tmp_path, monkeypatch, capsys):
    cli = load_cli_speed()
    files = []
    for name, ours in (("a", 6.0), ("b", 8.0)):
        fake_runs(cli, monkeypatch, {"ours": ours, "upstream": 10.0})
        files.append(tmp_path / f"{name}.json")
        cli.main(cli.parse_opt(["--commands", "train", "--train-epochs", "1", "3", "--upstream", str(tmp_path),
                                "--upstream-python", "/up/python", "--runs", "2", "--save", str(files[-1])]))
    capsys.readouterr()
    (_, _, per_epoch) = cli.main(cli.parse_opt(["--pool", *map(str, files)]))
    assert per_epoch["ratio range"] == (pytest.approx(0.6), pytest.approx(0.8), 4)
    assert per_epoch["ours"][1:3] == (pytest.approx(6.0), pytest.approx(8.0))
    assert "(0.600-0.800, 4 rounds)" in capsys.readouterr().out
    files[1].write_text("{}")
    with pytest.raises(SystemExit, match="b.json: not a file this benchmark wrote"):
        cli.main(cli.parse_opt(["--pool", *map(str, files)]))
