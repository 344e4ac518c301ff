"""train.py --evolve: the Optuna search, its outputs, resuming after a kill, and several processes on one study."""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys

import optuna
import pytest
import yaml
from conftest import ROOT, tiny_shapes_yaml

import train
from utils.errors import ConfigError
from utils.train import evolve
from utils.train.evolve import SEARCH_SPACE, fitness, search_space, start_params, suggest
from utils.train.hyp import load_hyp

TINY = ["--epochs", "1", "--imgsz", "64", "--batch-size", "4", "--workers", "0"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    """8 train / 4 val generated images at 96 px and their data YAML."""
    return tiny_shapes_yaml(tmp_path_factory.mktemp("evo"), seed=7, n_train=8, n_val=4)


def complete_trials(url: str) -> list:
    """The complete trials of the 'evolve' study in an Optuna storage."""
    study = optuna.load_study(study_name="evolve", storage=url)
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def csv_trials(folder) -> list[int]:
    """Trial numbers listed in a run folder's evolve.csv."""
    with (folder / "evolve.csv").open() as f:
        return [int(r["trial"]) for r in csv.DictReader(f)]


def test_search_space_covers_yolov5_and_loss_keys():
    assert {"lr0", "momentum", "mosaic", "slide_ratio", "fl_gamma", "cls_loss_type", "loss_norm"} <= set(SEARCH_SPACE)
    assert SEARCH_SPACE["slide_ratio"] == (0.0, 1.0) and SEARCH_SPACE["fl_gamma"] == (0.0, 2.0)
    assert "cls_loss_type" not in search_space(1) and "cls_loss_type" in search_space(3)
    hyp = load_hyp("hyp.focal.yaml")
    start = start_params(hyp, search_space(3))
    assert start["obj"] == 0.0288 and start["loss_norm"] == "weighted" and start["fl_gamma"] == 1.5
    trial = optuna.trial.FixedTrial({"lr0": 0.003, "loss_norm": "pos"})
    assert suggest(trial, "lr0", SEARCH_SPACE["lr0"]) == 0.003
    assert suggest(trial, "loss_norm", SEARCH_SPACE["loss_norm"]) == "pos"
    assert fitness((0.5, 0.5, 0.6, 0.4)) == pytest.approx(0.1 * 0.6 + 0.9 * 0.4)


def test_optimizer_auto_keeps_its_own_learning_rates_out_of_the_search(tiny_data, tmp_path):
    """Short runs under --optimizer auto train AdamW at lr0 0.001 whatever the hyp says: those keys are not searched."""
    from utils.train.evolve import fixed_by_optimizer

    hyp = load_hyp("hyp.scratch-low.yaml")
    opt = argparse.Namespace(optimizer="auto", data=tiny_data, epochs=1, batch_size=4)
    assert fixed_by_optimizer(opt, hyp) == {"lr0": 0.001, "warmup_bias_lr": 0.01}
    assert fixed_by_optimizer(argparse.Namespace(**{**vars(opt), "optimizer": None}), hyp) == {}  # user data: SGD
    builtin = tmp_path / "builtin.yaml"  # generated data: auto by default, as for data/shapes.yaml
    spec = {"name": "shapes", "seed": 1, "n_train": 4, "n_val": 2, "imgsz": 64}
    builtin.write_text(yaml.safe_dump({"path": str(tmp_path / "gen"), "train": "images/train", "val": "images/val",
                                       "names": yaml.safe_load(open(tiny_data))["names"], "generate": spec}))
    unset = argparse.Namespace(optimizer=None, data=str(builtin), epochs=None, batch_size=None)
    assert fixed_by_optimizer(unset, hyp) == {"lr0": 0.001, "warmup_bias_lr": 0.01}
    assert fixed_by_optimizer(argparse.Namespace(**{**vars(opt), "optimizer": "SGD"}), hyp) == {}
    long_run = argparse.Namespace(**{**vars(opt), "epochs": 10_001})  # 8 images, batch 4: 20,002 iterations -> SGD
    assert fixed_by_optimizer(long_run, hyp) == {}


def test_evolve_png_has_a_panel_per_searched_key(tmp_path):
    from types import SimpleNamespace

    import cv2

    keys = ["lr0", "slide_ratio", "cls_loss_type", "mosaic", "fl_gamma", "box", "obj"]  # 7 keys: two rows of six
    trials = [SimpleNamespace(params={k: i / 3 for k in keys[: 6 + i % 2]}, value=0.1 * i) for i in range(4)]
    img = cv2.imread(str(evolve.plot_evolve(trials, keys, tmp_path / "evolve.png")))
    assert img.shape[:2] == (int(2 * 2.4 * 110), int(6 * 2.6 * 110))  # rows x 2.4 in, 6 x 2.6 in, at 110 dpi
    right_half_of_row_two = img[img.shape[0] // 2:, img.shape[1] // 3:]
    assert (right_half_of_row_two == 255).all()  # the 5 unused panels are switched off, not drawn empty


@pytest.mark.slow
def test_evolve_writes_outputs_and_resumes_an_interrupted_trial(tiny_data, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(evolve, "plot_evolve", lambda trials, keys, path: drawn.append(len(trials)))
    project = tmp_path / "train"
    study = train.main(train.parse_opt(["--data", tiny_data, "--evolve", "2", "--project", str(project), *TINY]))
    folder = tmp_path / "evolve" / "exp"
    assert {"evolve.csv", "hyp_evolve.yaml", "evolve.db", "evolve_opt.yaml"} <= {p.name for p in folder.iterdir()}
    assert drawn == [2]  # trials of seconds: evolve.png is drawn once, when the search stops
    monkeypatch.setattr(evolve, "PLOT_EVERY_S", 0.0)  # trials of minutes: after every trial, and at the end
    assert csv_trials(folder) == [0, 1] and len(study.trials) == 2
    assert load_hyp(folder / "hyp_evolve.yaml")["lr0"] > 0  # a valid hyp file
    url = f"sqlite:///{folder / 'evolve.db'}"
    orphan = optuna.load_study(study_name="evolve", storage=url).ask()  # as if killed mid-trial: left RUNNING
    train.main(train.parse_opt(["--resume-evolve", str(folder), "--evolve", "3", *TINY]))
    states = {t.number: t.state for t in optuna.load_study(study_name="evolve", storage=url).trials}
    assert states[orphan.number] == optuna.trial.TrialState.FAIL  # not counted
    assert len(complete_trials(url)) == 3 and csv_trials(folder) == sorted(t.number for t in complete_trials(url))
    assert drawn == [2, 3, 3]


def run_two_processes(tiny_data: str, tmp_path, url: str) -> list:
    """Two train.py --evolve processes sharing one storage; returns their folders."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "train.py", "--data", tiny_data, "--evolve", "2", "--evolve-storage",
                               url, "--project", str(tmp_path / "evolve"), "--name", name, *TINY], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    return [tmp_path / "evolve" / "a", tmp_path / "evolve" / "b"]


def check_shared_study(url: str, folders: list) -> None:
    """Every trial is recorded once, under one number, and both processes' tables list every complete trial."""
    done = complete_trials(url)
    numbers = [t.number for t in done]
    assert len(done) >= 2 and len(numbers) == len(set(numbers))
    study = optuna.load_study(study_name="evolve", storage=url)
    assert len({t._trial_id for t in study.trials}) == len(study.trials)
    last = max(folders, key=lambda f: (f / "evolve.csv").stat().st_mtime)
    assert csv_trials(last) == sorted(numbers)
    trial_opts = [yaml.safe_load(f.read_text()) for d in folders for f in d.glob("trials/*/opt.yaml")]
    assert trial_opts and all(o["evolve_storage"] == "" for o in trial_opts)  # a URL's password stays out of them


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tiny_data, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    check_shared_study(url, run_two_processes(tiny_data, tmp_path, url))


@pytest.mark.slow
def test_two_processes_share_one_postgresql_study(tiny_data, tmp_path):
    url = os.environ.get("EVOLVE_TEST_POSTGRES_URL")
    if not url:  # .ci/run starts a local PostgreSQL server and sets the URL, so CI always runs this test
        pytest.fail("EVOLVE_TEST_POSTGRES_URL is not set: start PostgreSQL as .ci/run does (see the README)")
    if "evolve" in optuna.get_all_study_names(url):  # left by an earlier run of this test
        optuna.delete_study(study_name="evolve", storage=url)
    check_shared_study(url, run_two_processes(tiny_data, tmp_path, url))


def test_bad_hyp_and_unreachable_storage_are_clear_errors(tiny_data, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**load_hyp("hyp.scratch-low.yaml"), "slide_ratio": 3}))
    with pytest.raises(ConfigError, match=r"bad\.yaml: 'slide_ratio' is 3"):
        train.main(train.parse_opt(["--data", tiny_data, "--evolve", "1", "--hyp", str(bad),
                                    "--project", str(tmp_path / "train"), *TINY]))
    shown = r"--evolve-storage postgresql://nobody:\*\*\*@127\.0\.0\.1:1/none: cannot"
    with pytest.raises(ConfigError, match=shown) as e:
        train.main(train.parse_opt(["--data", tiny_data, "--evolve", "1", "--evolve-storage",
                                    "postgresql://nobody:secret@127.0.0.1:1/none", "--project", str(tmp_path / "t"),
                                    *TINY]))
    assert "secret" not in str(e.value)  # the password is not printed
    assert not (tmp_path / "t").exists() and not (tmp_path / "evolve").exists()  # and no empty run folder is left
    with pytest.raises(ConfigError, match="no evolve_opt.yaml"):
        train.main(train.parse_opt(["--resume-evolve", str(tmp_path), *TINY]))


def test_a_resumed_search_keeps_its_own_data_and_single_cls(tiny_data, tmp_path):
    train.main(train.parse_opt(["--data", tiny_data, "--single-cls", "--evolve", "1",
                                "--project", str(tmp_path / "train"), *TINY]))
    folder = tmp_path / "evolve" / "exp"
    assert yaml.safe_load((folder / "evolve_opt.yaml").read_text())["nc"] == 1
    train.main(train.parse_opt(["--resume-evolve", str(folder), *TINY]))  # no --data, no --single-cls given
    saved = yaml.safe_load((folder / "evolve_opt.yaml").read_text())
    assert (saved["nc"], saved["single_cls"], saved["data"]) == (1, True, tiny_data)  # not the defaults' 6 classes


def test_a_population_of_hyp_files_seeds_the_first_trials(tiny_data, tmp_path):
    space = search_space(6)
    base = load_hyp("hyp.scratch-low.yaml")
    trials = evolve.first_trials(base, space, ROOT / "data" / "hyps")
    assert trials[0] == start_params(base, space)  # --hyp's own values first
    assert len(trials) == len({tuple(sorted(map(str, t.items()))) for t in trials})  # each distinct set once
    assert {t["cls_loss_type"] for t in trials} == {"bce", "ce"} and max(t["slide_ratio"] for t in trials) > 0
    one = evolve.first_trials(base, space, ROOT / "data" / "hyps" / "hyp.focal.yaml")
    assert len(one) == 2 and one[1] == start_params({**base, **load_hyp("hyp.focal.yaml")}, space)

    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "hyp.x.yaml").write_text("lr0: 0.01\n")
    for folder, message in [("empty", "no .yaml hyp files"), ("gone", "no such folder or file"),
                            ("bad", r"hyp\.x\.yaml: missing required key")]:
        with pytest.raises(ConfigError, match=message):
            train.main(train.parse_opt(["--data", tiny_data, "--evolve", "1", "--evolve-population",
                                        str(tmp_path / folder), "--project", str(tmp_path / "p"), *TINY]))
    assert not (tmp_path / "p").exists()  # refused before a run folder was made

    opt = evolve.prepare(train.parse_opt(["--data", tiny_data, "--evolve", "3", "--project", str(tmp_path / "q"),
                                          "--evolve_population", str(ROOT / "data" / "hyps")]), lambda o: 6)
    ran = []
    evolve.evolve(opt, lambda run: ran.append(run.hyp) or (0.5, 0.4, 0.3, 0.2, 0.0, 0.0, 0.0))
    assert [{k: hyp[k] for k in space} for hyp in ran] == trials[:3]  # the queue in order: --hyp, then the files


def test_population_paths_resolve_from_anywhere_and_partial_files_keep_the_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README's `--evolve-population data/hyps`, run outside the project
    assert [f.name for f in evolve.population_files("data/hyps")][:2] == ["hyp.box-l1.yaml", "hyp.ce-balanced.yaml"]
    low = yaml.safe_load((ROOT / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    partial = tmp_path / "hyp.partial.yaml"
    partial.write_text(yaml.safe_dump({k: v for k, v in low.items() if k != "slide_ratio"} | {"fl_gamma": 1.5}))
    hyp = evolve.population_hyp(load_hyp("hyp.slide.yaml"), partial)
    assert hyp["fl_gamma"] == 1.5 and hyp["slide_ratio"] == 1.0  # the base's Slide, not the default 0


def training_that_fails(on_call: int, error: Exception):
    """A stand-in for one trial's training: fixed results, except that call number on_call raises error; returns
    the list of run names it was called with, and the function."""
    calls = []

    def train_fn(run):
        calls.append(run.name)
        if len(calls) == on_call:
            raise error
        return (0.5, 0.4, 0.3, 0.2, 0.0, 0.0, 0.0)

    return calls, train_fn


def test_a_failing_trial_still_leaves_the_outputs_of_those_that_completed(tiny_data, tmp_path):
    opt = evolve.prepare(train.parse_opt(["--data", tiny_data, "--evolve", "5", "--project", str(tmp_path)]),
                         lambda o: 6)
    with pytest.raises(RuntimeError, match="out of memory"):
        evolve.evolve(opt, training_that_fails(3, RuntimeError("out of memory"))[1])
    assert (tmp_path / "exp" / "evolve.png").is_file() and csv_trials(tmp_path / "exp") == [0, 1]


def test_a_diverged_trial_is_recorded_as_failed_and_the_search_goes_on(tiny_data, tmp_path):
    from utils.train import evolve
    from utils.train.engine import TrainingDivergedError

    opt = evolve.prepare(train.parse_opt(["--data", tiny_data, "--evolve", "2", "--project", str(tmp_path)]),
                         lambda o: 6)
    calls, fake_training = training_that_fails(1, TrainingDivergedError("training stopped: non-finite loss"))
    study = evolve.evolve(opt, fake_training)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL] + [optuna.trial.TrialState.COMPLETE] * 2
    assert calls == ["trial0", "trial1", "trial2"]


def test_evolve_needs_a_positive_trial_count_and_names_the_postgresql_driver(tiny_data, tmp_path, monkeypatch):
    import importlib.util

    from utils.train.evolve import sqlalchemy_url

    for n in ("0", "-1"):
        with pytest.raises(ConfigError, match=rf"--evolve {n}: give the number of trials"):
            train.main(train.parse_opt(["--data", tiny_data, "--evolve", n, "--project", str(tmp_path), *TINY]))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "psycopg" else real(name))
    assert sqlalchemy_url("postgresql://u:p@db:5432/s") == "postgresql+psycopg2://u:p@db:5432/s"  # psycopg2 only
    assert sqlalchemy_url("postgresql+psycopg2://u@db/s") == "postgresql+psycopg2://u@db/s"
    assert sqlalchemy_url("sqlite:////tmp/e.db") == "sqlite:////tmp/e.db"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_ctrl_c_mid_trial_stops_the_search_and_its_values_run_again_on_resume(tmp_path, stop):
    from utils.train.evolve import evolve
    from utils.train.interrupt import TrainingInterrupted

    opt = argparse.Namespace(save_dir=str(tmp_path), hyp="data/hyps/hyp.scratch-low.yaml", nc=1, evolve=2,
                             evolve_storage="", seed=0, resume_evolve=None, optimizer="SGD")
    tried = []

    def train_fn(run: argparse.Namespace) -> tuple:
        tried.append(run.hyp)
        if len(tried) == 1:  # Ctrl-C or SIGTERM during the first trial, as run_training raises it
            raise TrainingInterrupted("last.pt holds epoch 0", stop) if stop == signal.SIGTERM else KeyboardInterrupt
        return 0.5, 0.5, 0.4, 0.2

    with pytest.raises(TrainingInterrupted) as e:
        evolve(opt, train_fn)
    assert len(tried) == 1 and e.value.signum == stop  # no further trial; train.py says which signal, exits 128 + it
    opt.resume_evolve = str(tmp_path)
    study = evolve(opt, train_fn)
    assert tried[1] == tried[0]  # the interrupted values ran first
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2
