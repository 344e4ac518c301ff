"""train.py end to end on a tiny generated dataset: outputs, resume, fine-tuning, loss variants, failures."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import yaml
from conftest import OFFICIAL_WEIGHTS, ROOT, needs_shared, tiny_shapes_yaml

import train
from utils.checkpoint import attempt_load, load_checkpoint, save_checkpoint
from utils.errors import CheckpointError, ConfigError
from utils.log import get_logger
from utils.train import dist, train_setup
from utils.train.engine import TrainingDivergedError
from utils.train.results import RESULT_COLUMNS, append_results, read_results

TINY = {"imgsz": 64, "batch_size": 4, "workers": 0, "seed": 0}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    """12 train / 4 val generated images at 96 px and their data YAML."""
    return tiny_shapes_yaml(tmp_path_factory.mktemp("tiny"), seed=3, n_train=12, n_val=4)


@pytest.fixture
def log_lines():
    """Messages of the project logger during the test."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = get_logger()  # configured first, so the level is INFO
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def _run(data: str, project: Path, **kw):
    return train.run(data=data, project=str(project), **{**TINY, **kw})


def test_parse_opt_yolov5_flags():
    opt = train.parse_opt([])
    assert opt.hyp == "data/hyps/hyp.scratch-low.yaml" and opt.data == "data/shapes.yaml" and opt.weights == ""
    assert (opt.optimizer, opt.patience, opt.freeze, opt.save_period, opt.seed) == (None, 100, [0], -1, 0)
    assert (opt.workers, opt.name, opt.label_smoothing, opt.local_rank) == (8, "exp", None, -1)  # None: the hyp's
    assert Path(opt.project).parts[-2:] == ("runs", "train") and opt.resume is False
    argv = ["--data", "data.yaml", "--cfg", "yolov5s.yaml", "--weights", "", "--hyp", "data/hyps/hyp.slide.yaml",
            "--epochs", "100", "--img", "640", "--batch-size", "8", "--cos-lr", "--freeze", "10", "--rect",
            "--multi-scale", "--single-cls", "--optimizer", "AdamW", "--sync-bn", "--cache", "--resume",
            "--nosave", "--noval", "--noautoanchor", "--noplots", "--exist-ok", "--local_rank", "0"]
    opt = train.parse_opt(argv)
    assert (opt.imgsz, opt.batch_size, opt.epochs, opt.freeze, opt.cache, opt.resume) == (640, 8, 100, [10], "ram",
                                                                                           True)
    assert train.parse_opt(["--resume", "runs/train/exp/weights/last.pt"]).resume.endswith("last.pt")
    assert train.parse_opt(["--cache", "disk"]).cache == "disk"
    with pytest.raises(SystemExit):  # argparse's one-line error, naming the choices
        train.parse_opt(["--cache", "foo"])


def test_defaults_yolov5_on_user_data_cpu_sized_on_builtin_data():
    user = train.parse_opt([])
    train_setup.fill_defaults(user, {"names": {0: "a"}})
    assert (user.epochs, user.batch_size, user.imgsz, user.optimizer, user.cfg) == (100, 16, 640, "SGD",
                                                                                     "yolov5n.yaml")
    builtin = train.parse_opt([])
    train_setup.fill_defaults(builtin, {"generate": {"name": "shapes"}})
    assert (builtin.epochs, builtin.batch_size, builtin.imgsz, builtin.optimizer) == (40, 16, 320, "auto")
    given = train.parse_opt(["--optimizer", "SGD", "--epochs", "3", "--img", "256"])
    train_setup.fill_defaults(given, {"generate": {"name": "shapes"}})
    assert (given.optimizer, given.epochs, given.imgsz) == ("SGD", 3, 256)  # flags given win
    with pytest.raises(ConfigError, match=r"--label-smoothing: 'label_smoothing' is 1.0, allowed range: \[0, 1\)"):
        train_setup.setup_run(train.parse_opt(["--label-smoothing", "1.0"]), train_setup.dist.DistEnv())
    with pytest.raises(ConfigError, match="--epochs 0: train for at least one epoch"):
        train_setup.fill_defaults(train.parse_opt(["--epochs", "0"]), {"names": {0: "a"}})


def test_dataloader_workers_yield_the_cpu_to_training_unless_told_otherwise():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert train_setup.loader_nice(train.parse_opt([]), cpu) == train_setup.LOADER_NICE == 19
    assert train_setup.loader_nice(train.parse_opt([]), cuda) == 0  # the GPU trains; the cores are the loader's
    assert train_setup.loader_nice(train.parse_opt(["--loader-nice", "0"]), cpu) == 0
    assert train_setup.loader_nice(train.parse_opt(["--loader-nice", "5"]), cuda) == 5
    with pytest.raises(ConfigError, match="--loader-nice -1"):
        train_setup.loader_nice(train.parse_opt(["--loader-nice", "-1"]), cpu)


@pytest.mark.slow
def test_one_epoch_writes_all_outputs(tiny_data, tmp_path, log_lines):
    _run(tiny_data, tmp_path, epochs=1, save_period=1)
    d = tmp_path / "exp"
    for f in ("weights/last.pt", "weights/best.pt", "weights/epoch0.pt", "hyp.yaml", "opt.yaml", "results.csv",
              "results.png", "labels.jpg", "labels_correlogram.jpg", "train_batch0.jpg", "train_batch1.jpg",
              "train_batch2.jpg", "confusion_matrix.png"):
        assert (d / f).is_file(), f
    assert (d / "results.csv").read_text().splitlines()[0].split(",") == list(RESULT_COLUMNS)
    assert [r["epoch"] for r in read_results(d / "results.csv")] == [0]
    ckpt = load_checkpoint(d / "weights" / "best.pt")
    assert {"model", "ema", "updates", "optimizer", "epoch", "best_fitness", "opt", "hyp", "date"} <= set(ckpt)
    assert ckpt["optimizer"] is None and next(ckpt["model"].parameters()).dtype == torch.float16
    assert all(p.is_contiguous() for p in ckpt["model"].parameters())  # trained channels_last, saved portable
    model = attempt_load(d / "weights" / "best.pt")
    assert model.nc == 6 and model.names[3] == "star" and model.class_act == "sigmoid"
    assert model(torch.zeros(1, 3, 64, 64))[0].shape[-1] == 11
    opt = yaml.safe_load((d / "opt.yaml").read_text())
    assert opt["imgsz"] == 64 and opt["hyp"]["lr0"] == 0.01 and "stop_after" not in opt
    assert opt["optimizer"] == "SGD" and yaml.safe_load((d / "hyp.yaml").read_text())["lr0"] == 0.01
    assert any(m.startswith("box loss: CIoU") for m in log_lines)


@pytest.mark.slow
def test_resume_continues_schedule_optimizer_and_ema(tiny_data, tmp_path, monkeypatch):
    _run(tiny_data, tmp_path, name="full", epochs=3, stop_after=2, noplots=True, noval=True)
    _run(tiny_data, tmp_path, name="cut", epochs=3, stop_after=1, noplots=True, noval=True)
    last = tmp_path / "cut" / "weights" / "last.pt"
    first = load_checkpoint(last)
    assert first["epoch"] == 0 and first["optimizer"] is not None and first["updates"] == 3  # 3 batches, acc 1

    restored = {}
    original = train_setup.restore_state

    def spy(ckpt, state, scheduler, weights, epochs):
        out = original(ckpt, state, scheduler, weights, epochs)
        restored.update(opt=deepcopy(state.optimizer.state_dict()), ckpt_opt=deepcopy(ckpt["optimizer"]),
                        updates=state.ema.updates, ema=deepcopy(state.ema.ema.state_dict()),
                        ckpt_ema=deepcopy(ckpt["ema"].state_dict()), fresh_model=deepcopy(state.model.state_dict()))
        return out

    monkeypatch.setattr(train_setup, "restore_state", spy)
    # as if the run had logged epoch 1 and been stopped before its checkpoint: the resumed run redoes epoch 1
    append_results(tmp_path / "cut" / "results.csv", 1, [9.0] * 3, [0.9] * 7, [0.1] * 3)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "cut")) as stale:
        stale.add_scalar("metrics/mAP_0.5", 0.9, 1)
    time.sleep(1.1)  # event files are read in name order, which has whole seconds: the stale one comes first
    train.run(resume=str(last), stop_after=2)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = [e.step for e in EventAccumulator(str(tmp_path / "cut")).Reload().Scalars("metrics/mAP_0.5")]
    assert steps == [0, 1]  # the stale epoch-1 point purged, not shown twice
    assert restored["updates"] == 3
    assert all(torch.equal(restored["opt"]["state"][k]["momentum_buffer"], v["momentum_buffer"])
               for k, v in restored["ckpt_opt"]["state"].items())
    assert all(torch.equal(v, restored["ckpt_ema"][k]) for k, v in restored["ema"].items())
    assert any(not torch.equal(v, restored["ema"][k]) for k, v in restored["fresh_model"].items())  # EMA != model
    second = load_checkpoint(last)
    assert second["epoch"] == 1 and second["updates"] > 3
    cut, full = read_results(tmp_path / "cut" / "results.csv"), read_results(tmp_path / "full" / "results.csv")
    assert [r["epoch"] for r in cut] == [0, 1]
    for key in ("x/lr0", "x/lr1", "x/lr2"):
        assert [r[key] for r in cut] == pytest.approx([r[key] for r in full], rel=1e-5)

    monkeypatch.setattr(train_setup, "restore_state", original)
    train.run(resume=True, project=str(tmp_path))  # newest last.pt under the project: the "cut" run
    assert [r["epoch"] for r in read_results(tmp_path / "cut" / "results.csv")] == [0, 1, 2]
    assert load_checkpoint(last)["optimizer"] is None  # finished runs are stripped
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train.run(resume=str(last))


def test_a_hyp_that_cannot_train_the_classes_is_refused_naming_the_file_before_any_folder(tiny_data, tmp_path):
    ce = ROOT / "data" / "hyps" / "hyp.ce.yaml"
    with pytest.raises(ConfigError, match=rf"hyp file {ce}: 'cls_loss_type' ce needs at least 2 classes .* has 1"):
        _run(tiny_data, tmp_path, hyp=str(ce), single_cls=True)
    counted = tmp_path / "counted.yaml"
    counted.write_text(yaml.safe_dump({**yaml.safe_load((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text()),
                                       "cls_weights": "inverse", "cls_weights_values": [1.0, 2.0]}))
    with pytest.raises(ConfigError, match=rf"hyp file {counted}: 'cls_weights_values' has 2 values.* has 6 classes"):
        _run(tiny_data, tmp_path, hyp=str(counted))
    assert list(tmp_path.iterdir()) == [counted]  # no run folder made


def test_options_given_with_resume_are_named_as_ignored(tmp_path, log_lines):
    saved = vars(train.parse_opt(["--epochs", "30"]))
    last = save_checkpoint({"model": torch.nn.Linear(1, 1), "epoch": 4, "optimizer": {}, "opt": saved},
                           tmp_path / "exp" / "weights" / "last.pt")
    opt = train.resolve_resume(train.parse_opt(["--resume", str(last), "--epochs", "100", "--cos-lr"]))
    assert opt.epochs == 30 and not opt.cos_lr and opt.weights == str(last)  # the run's own options
    assert any("--epochs 100 --cos-lr is ignored" in m and f"--weights {last}" in m for m in log_lines)
    log_lines.clear()
    train.resolve_resume(train.parse_opt(["--resume", str(last)]))
    assert not any("ignored" in m for m in log_lines)


def test_resume_without_a_path_takes_the_newest_interrupted_run_not_a_finished_one(tmp_path):
    def write(run: str, epoch: int, optimizer: dict | None, when: float) -> Path:
        last = save_checkpoint({"model": torch.nn.Linear(1, 1), "epoch": epoch, "optimizer": optimizer},
                               tmp_path / run / "weights" / "last.pt")
        os.utime(last, (when, when))
        return last

    now = time.time()
    interrupted = write("exp", 4, {"state": {}}, now - 30)
    write("exp2", -1, None, now - 20)  # finished later: stripped
    (tmp_path / "exp3" / "weights").mkdir(parents=True)
    (tmp_path / "exp3" / "weights" / "last.pt").write_bytes(b"killed while copying")  # newest, unreadable
    assert train.latest_last_pt(tmp_path) == interrupted
    newest = write("exp", -1, None, now - 10)  # that run finished too
    with pytest.raises(CheckpointError, match=rf"every last.pt under .* finished run .*--weights {newest}"):
        train.latest_last_pt(tmp_path)


@pytest.mark.slow
@needs_shared(OFFICIAL_WEIGHTS)
def test_finetune_official_checkpoint_other_nc(tiny_data, tmp_path, log_lines):
    _run(tiny_data, tmp_path, weights=str(OFFICIAL_WEIGHTS), epochs=1, noplots=True, noval=True, freeze=[10])
    msg = next(m for m in log_lines if m.startswith("Transferred"))
    n, m = (int(x) for x in msg.split()[1].split("/"))
    assert 0 < n < m  # everything but the 80-class head layers
    model = attempt_load(tmp_path / "exp" / "weights" / "best.pt")
    assert model.nc == 6 and model.model[-1].m[0].out_channels == 3 * 11


@pytest.mark.slow
@pytest.mark.parametrize("hyp, act, extra", [
    ("hyp.slide.yaml", "sigmoid", {"optimizer": "AdamW", "cos_lr": True, "single_cls": True}),
    ("hyp.focal.yaml", "sigmoid", {"multi_scale": True, "optimizer": "Adam"}),
    ("hyp.ce.yaml", "softmax", {"rect": True, "label_smoothing": 0.1, "optimizer": "auto"}),
    ("hyp.slide-focal-ce.yaml", "softmax", {"optimizer": "auto"})])
def test_loss_variants(tiny_data, tmp_path, log_lines, hyp, act, extra):
    """Each loss option trains (other flags ride along); the ce model's scores are softmax."""
    _run(tiny_data, tmp_path, hyp=str(ROOT / "data" / "hyps" / hyp), epochs=1, noplots=True, noval=True, **extra)
    model = attempt_load(tmp_path / "exp" / "weights" / "best.pt")
    assert model.class_act == act and model.nc == (1 if extra.get("single_cls") else 6)
    desc = next(m for m in log_lines if m.startswith("box loss:"))
    expected = {"hyp.slide.yaml": ["slide"], "hyp.focal.yaml": ["focal"], "hyp.ce.yaml": ["ce (softmax"],
                "hyp.slide-focal-ce.yaml": ["slide(ratio=1)", "focal(gamma=1.5", "ce (softmax"]}[hyp]
    assert all(word in desc for word in expected), desc
    saved = yaml.safe_load((tmp_path / "exp" / "hyp.yaml").read_text())
    assert saved["label_smoothing"] == extra.get("label_smoothing", 0.0)  # the flag's value is the run's, and saved
    if extra.get("optimizer") == "auto":  # a 3-iteration run: AdamW, and hyp.yaml records the lr it used
        assert any("auto -> 3 iterations" in m for m in log_lines)
        assert yaml.safe_load((tmp_path / "exp" / "hyp.yaml").read_text())["lr0"] == 0.001


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_checkpoint(tiny_data, tmp_path, monkeypatch):
    _run(tiny_data, tmp_path, epochs=2, stop_after=1, noplots=True, noval=True)
    last = tmp_path / "exp" / "weights" / "last.pt"
    before = last.read_bytes()

    class NaNLoss(train_setup.ComputeLoss):
        def __call__(self, p, targets):
            loss, items = super().__call__(p, targets)
            return loss * float("nan"), items * float("nan")

    monkeypatch.setattr(train_setup, "ComputeLoss", NaNLoss)
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss at epoch 1 batch 0 \(box_loss nan"):
        train.run(resume=str(last))
    assert last.read_bytes() == before


def test_cli_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "train.py", "--data", str(tmp_path / "missing.yaml"), "--noval",
                        "--project", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error:") and "missing.yaml" in last


def test_error_line_unwraps_dataloader_worker_errors():
    from utils.errors import DatasetError

    wrapped = DatasetError("Caught DatasetError in DataLoader worker process 1.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1\nutils.errors.DatasetError: a.jpg: image could not "
                           "be read")
    assert train.error_line(wrapped) == "a.jpg: image could not be read"
    assert train.error_line(DatasetError("data.yaml: 'val' path not found")) == "data.yaml: 'val' path not found"


@pytest.mark.slow
def test_default_run_benchmark_prints_time_and_map(tiny_data, capsys):
    """benchmarks/default_run.py passes train.py options through and reports against the 15 min / mAP50 0.5 target."""
    from benchmarks.default_run import main, parse_opt

    opt, overrides = parse_opt(["--data", tiny_data, "--epochs", "1", "--img", "64", "--batch-size", "4",
                                "--workers", "0", "--noplots"])
    assert opt.data == tiny_data and overrides == {"epochs": 1, "imgsz": 64, "batch_size": 4, "workers": 0,
                                                   "noplots": True}
    minutes, map50 = main(opt, overrides)
    out = capsys.readouterr().out
    assert 0 < minutes < 15 and 0 <= map50 < 0.5 and "target (< 15 min, mAP50 >= 0.5) NOT met" in out


def test_train_speed_benchmark_prints_images_per_second(tiny_data, capsys):
    """benchmarks/train_speed.py times the real training step (here 1 + 2 batches of 2 images on the CPU)."""
    from benchmarks.train_speed import main, parse_opt

    opt = parse_opt(["--data", tiny_data, "--imgsz", "64", "--batch-size", "2", "--workers", "0", "--warmup", "1",
                     "--batches", "2", "--threads", "1"])
    assert opt.device == "cpu"
    ips = main(opt)
    out = capsys.readouterr().out
    assert ips > 0 and f"{ips:.1f} images/s" in out and "peak RSS" in out
    ips = main(parse_opt(["--data", tiny_data, "--imgsz", "64", "--batch-size", "2", "--workers", "0", "--warmup", "1",
                          "--batches", "2", "--threads", "2", "--cpu-dp", "2"]))  # train.py --cpu-dp's loop
    assert ips > 0 and "--cpu-dp 2, 2 torch threads" in capsys.readouterr().out


def test_train_speed_benchmark_bf16_runs_under_autocast_or_names_the_flag(tiny_data, capsys, monkeypatch):
    """--bf16 times train.py's bfloat16 autocast; on a CPU without fast bfloat16 it is train.py's one-line error."""
    import utils.torch_utils
    from benchmarks.train_speed import main, parse_opt
    from utils.errors import ConfigError

    opt = parse_opt(["--data", tiny_data, "--imgsz", "64", "--batch-size", "2", "--workers", "0", "--warmup", "1",
                     "--batches", "1", "--threads", "1", "--bf16"])
    monkeypatch.setattr(utils.torch_utils, "cpu_bf16_supported", lambda: False)
    with pytest.raises(ConfigError, match="--bf16"):
        main(opt)
    monkeypatch.setattr(utils.torch_utils, "cpu_bf16_supported", lambda: True)  # autocast also runs (slowly) without
    assert main(opt) > 0 and "bfloat16 autocast" in capsys.readouterr().out


@pytest.mark.slow
def test_centernet_hyp_trains_validates_and_exports_to_onnx(tiny_data, tmp_path, log_lines):
    import onnxruntime as ort

    import export as export_cli

    results = _run(tiny_data, tmp_path, hyp=str(ROOT / "data" / "hyps" / "hyp.centernet.yaml"), epochs=1,
                   noplots=True)
    assert len(results) == 7 and all(x == x for x in results)  # validated: finite P, R, mAP and val losses
    assert any("obj loss: gaussian heatmap focal (CenterNet, alpha=0, beta=4)" in m for m in log_lines)
    assert (tmp_path / "exp" / "per_class.csv").read_text().startswith("class,images,instances")
    best = tmp_path / "exp" / "weights" / "best.pt"
    onnx_file = export_cli.run(weights=str(best), imgsz=(64, 64), include=("onnx",))["onnx"]
    model = attempt_load(best)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)[0].numpy()
    got = ort.InferenceSession(str(onnx_file)).run(None, {"images": x.numpy()})[0]
    assert abs(got - expected).max() < 1e-3


@pytest.mark.slow
def test_slide_ema_average_survives_resume(tiny_data, tmp_path):
    hyp = {**yaml.safe_load((ROOT / "data" / "hyps" / "hyp.slide-ema.yaml").read_text())}
    assert hyp["slide_mu"] == "ema"
    _run(tiny_data, tmp_path, hyp=str(ROOT / "data" / "hyps" / "hyp.slide-ema.yaml"), epochs=2, stop_after=1,
         noplots=True, noval=True)
    last = tmp_path / "exp" / "weights" / "last.pt"
    first = load_checkpoint(last)["loss_state"]["slide_mu"]
    assert first["updates"] == 3 and first["mu"] != [0.5, 0.5, 0.5]  # 12 images / batch 4 = 3 batches
    train.run(resume=str(last))
    second = load_checkpoint(last)["loss_state"]["slide_mu"]
    assert second["updates"] == 6  # continued from 3, not restarted


@pytest.mark.slow
def test_class_weights_are_computed_once_and_reused_on_resume(tiny_data, tmp_path, log_lines):
    _run(tiny_data, tmp_path, hyp=str(ROOT / "data" / "hyps" / "hyp.ce-balanced.yaml"), epochs=2, stop_after=1,
         noplots=True, noval=True)
    run_dir = tmp_path / "exp"
    values = yaml.safe_load((run_dir / "hyp.yaml").read_text())["cls_weights_values"]
    labels = [synth_line.split()[0] for f in sorted((Path(tiny_data).parent / "shapes" / "labels" / "train").glob(
        "*.txt")) for synth_line in f.read_text().splitlines()]
    counts = [labels.count(str(c)) for c in range(6)]
    from utils.loss_terms import class_balance_weights

    assert values == pytest.approx(class_balance_weights(counts, "effective", 0.999), abs=1e-5)
    assert load_checkpoint(run_dir / "weights" / "last.pt")["hyp"]["cls_weights_values"] == values
    assert sum(m.startswith("\x1b[34m\x1b[1mclass weights:") or "class weights:" in m for m in log_lines) == 1
    log_lines.clear()
    train.run(resume=str(run_dir / "weights" / "last.pt"))
    assert not any("class weights:" in m for m in log_lines)  # reused from opt.yaml, not recomputed
    assert load_checkpoint(run_dir / "weights" / "last.pt")["hyp"]["cls_weights_values"] == values


@pytest.mark.slow
def test_tensorboard_event_file_has_the_results_scalars_and_images(tiny_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run(tiny_data, tmp_path, epochs=2)
    events = EventAccumulator(str(tmp_path / "exp"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"train/box_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/obj_loss", "x/lr0"} <= set(
        tags["scalars"])
    assert [e.step for e in events.Scalars("train/box_loss")] == [0, 1]
    rows = read_results(tmp_path / "exp" / "results.csv")
    assert events.Scalars("train/box_loss")[1].value == pytest.approx(rows[1]["train/box_loss"], rel=1e-5)
    assert {"results", "confusion_matrix"} <= set(tags["images"])  # PR curves need detections, absent here


@pytest.mark.slow
def test_image_weights_trains_and_reweights_each_epoch(tiny_data, tmp_path, monkeypatch):
    from utils.train import trainer

    seen = []
    original = trainer.update_sampler
    monkeypatch.setattr(trainer, "update_sampler", lambda *a: seen.append(original(*a)) or seen[-1])
    _run(tiny_data, tmp_path, epochs=2, image_weights=True, noplots=True)
    assert len(seen) == 2 and all(len(w) == 12 and (w > 0).any() for w in seen)
    assert yaml.safe_load((tmp_path / "exp" / "opt.yaml").read_text())["image_weights"] is True


@pytest.mark.slow
@pytest.mark.parametrize("cfg, imgsz", [("yolov5n6.yaml", 128), ("yolov5s-ghost.yaml", 64),
                                        ("yolov5-shufflenetv2.yaml", 64), ("yolov5-mobilenetv3s.yaml", 64),
                                        ("yolov5-shufflenetv2-0.5.yaml", 64), ("yolov5n-ghost.yaml", 64),
                                        ("yolov5-mobilenetv3s-slim.yaml", 64)])
def test_p6_and_hub_models_train_validate_export_and_detect(tiny_data, tmp_path, cfg, imgsz):
    import detect
    import export as export_cli

    results = _run(tiny_data, tmp_path, cfg=cfg, epochs=1, noplots=True, imgsz=imgsz, batch_size=2)
    assert len(results) == 7 and all(x == x for x in results)
    best = tmp_path / "exp" / "weights" / "best.pt"
    onnx_file = export_cli.run(weights=str(best), imgsz=(imgsz, imgsz), include=("onnx",))["onnx"]
    out = detect.run(weights=onnx_file, source=ROOT / "data" / "images", imgsz=(imgsz, imgsz), project=tmp_path / "d")
    assert len(out["predictions"]) == 2


@pytest.mark.parametrize("rect", [False, True], ids=["mosaic", "rect"])
def test_quad_trains_four_images_as_one_of_twice_the_size_and_saves_last_pt(tiny_data, tmp_path, monkeypatch,
                                                                           log_lines, rect):
    """--quad --batch-size 8 on 12 images: one step of 2 images at 128 (the last 4 images dropped), loss times 4."""
    from utils.train import engine, trainer

    sizes, gains = [], []
    to_float, fit = engine.to_float_images, trainer.fit
    monkeypatch.setattr(engine, "to_float_images", lambda imgs, *a: sizes.append(tuple(imgs.shape)) or
                        to_float(imgs, *a))
    monkeypatch.setattr(trainer, "fit", lambda state, sched, loader, ctx, cfg, *a: gains.append(cfg.loss_gain)
                        or fit(state, sched, loader, ctx, cfg, *a))
    argv = ["--quad", "--batch-size", "8", "--epochs", "1", "--img", "64", "--workers", "0", "--noplots",
            "--project", str(tmp_path), "--data", tiny_data] + (["--rect"] if rect else [])
    results = train.main(train.parse_opt(argv))
    assert sizes == [(2, 3, 128, 128)] and gains == [4.0]
    assert len(results) == 7 and all(x == x for x in results)
    assert (tmp_path / "exp" / "weights" / "last.pt").is_file()
    assert yaml.safe_load((tmp_path / "exp" / "opt.yaml").read_text())["quad"] is True  # --resume keeps it
    assert any("Image sizes 64 train (--quad: 128, four in one), 64 val" in line for line in log_lines)
    assert train.parse_opt([]).quad is False


def test_quad_with_a_batch_size_not_a_multiple_of_4_is_a_one_line_error(tiny_data, tmp_path):
    r = subprocess.run([sys.executable, "train.py", "--quad", "--batch-size", "6", "--img", "64", "--data", tiny_data,
                        "--project", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("train.py: error: --quad groups each batch's images in fours: "
                                                 "--batch-size 6 is not a multiple of 4; use e.g. --batch-size 4")
    assert not (tmp_path / "exp").exists()  # refused before any run folder
    ddp = train.parse_opt(["--quad", "--batch-size", "12"])
    with pytest.raises(ConfigError, match=r"--batch-size 12 \(6 per DDP process\) is not a multiple of 4; use e.g. "
                                          r"--batch-size 8"):
        train_setup.check_quad_batch(ddp, world_size=2)
    train_setup.check_quad_batch(ddp, world_size=3)  # 4 per process: fine


def test_cpu_dp_trains_the_batch_in_parts_and_resumes(tiny_data, tmp_path, log_lines):
    """--cpu-dp 2: each batch of 4 as two parts of 2 in two threads; a run stopped after epoch 0 resumes."""
    results = _run(tiny_data, tmp_path, epochs=2, noplots=True, cpu_dp=2, stop_after=1)
    assert any("--cpu-dp 2: each batch in 2 parts" in line for line in log_lines)
    last = tmp_path / "exp" / "weights" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 0 and all(x == x for x in results)
    results = train.run(resume=str(last), cpu_dp=2)
    assert len(results) == 7 and all(x == x for x in results)  # finite losses and metrics
    assert load_checkpoint(last)["optimizer"] is None  # finished runs are stripped


def test_cpu_dp_is_auto_by_default_and_a_bad_value_is_a_clear_error(tiny_data, tmp_path, log_lines):
    """The default splits a batch of 16 on 2 torch threads into two parts of 8; a bad value names the option."""
    assert train.parse_opt([]).cpu_dp == "auto"
    with pytest.raises(ConfigError, match="--cpu-dp two: the number of batch parts must be 'auto' or an integer"):
        _run(tiny_data, tmp_path, cpu_dp="two")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = _run(tiny_data, tmp_path, name="auto", epochs=1, noplots=True, noval=True, batch_size=16)
    finally:
        torch.set_num_threads(threads)
    assert any("--cpu-dp 2: each batch in 2 parts side by side, 1 intra-op" in line for line in log_lines)
    assert len(results) == 7 and all(x == x for x in results)


def test_cpu_dp_runs_with_one_seed_give_the_same_weights(tiny_data, tmp_path):
    """The parts' gradients are summed in a fixed order, so threads do not make training irreproducible."""
    weights = []
    for name in ("a", "b"):
        _run(tiny_data, tmp_path, name=name, epochs=1, noplots=True, noval=True, cpu_dp=2)
        weights.append(load_checkpoint(tmp_path / name / "weights" / "last.pt")["model"].state_dict())
    assert all(torch.equal(v, weights[1][k]) for k, v in weights[0].items())


def test_autocast_is_float16_amp_on_cuda_and_bfloat16_on_the_cpu_only_when_asked():
    from utils.errors import ConfigError
    from utils.torch_utils import training_autocast

    assert training_autocast(torch.device("cpu")) == (False, None)  # float32 on the CPU by default
    assert training_autocast(torch.device("cuda", 0)) == (True, None)  # CUDA: autocast's float16
    with pytest.raises(ConfigError, match="--bf16 is for CPU training"):
        training_autocast(torch.device("cuda", 0), bf16=True)


def test_bf16_trains_where_the_cpu_has_it_and_is_a_clear_error_elsewhere(tiny_data, tmp_path, monkeypatch):
    from utils.errors import ConfigError
    from utils.torch_utils import cpu_bf16_supported
    from utils.train import engine

    if not cpu_bf16_supported():
        with pytest.raises(ConfigError, match="no fast bfloat16"):
            _run(tiny_data, tmp_path, epochs=1, noplots=True, bf16=True)
        return
    dtypes = []
    real = engine.torch.autocast

    def spy(*args, **kwargs):
        dtypes.append((kwargs.get("dtype"), kwargs.get("enabled")))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.torch, "autocast", spy)
    results = _run(tiny_data, tmp_path, epochs=1, noplots=True, bf16=True)
    assert dtypes and all(d == (torch.bfloat16, True) for d in dtypes)
    assert len(results) == 7 and all(x == x for x in results)  # finite losses and metrics


def test_upstream_wandb_and_gsutil_flags_are_accepted_with_a_warning(logs):
    """Upstream's W&B / Google Cloud flags parse (its command lines run here) and say they have no effect."""
    argv = ["--entity", "team", "--upload_dataset", "--bbox_interval", "5", "--bucket", "my-bucket"]
    opt = train.parse_opt(argv)
    assert train.upstream_only_flags(opt) == ["--entity", "--upload_dataset", "--bbox_interval", "--bucket"]
    assert train.upstream_only_flags(train.parse_opt([])) == []
    train.warn_upstream_only(opt, dist.DistEnv())
    assert len(logs) == 1 and "--entity --upload_dataset --bbox_interval --bucket" in logs[0]
    assert "no effect" in logs[0] and "--evolve-storage" in logs[0]
    train.warn_upstream_only(opt, dist.DistEnv(rank=1, local_rank=1, world_size=2))  # other DDP ranks stay quiet
    assert len(logs) == 1
