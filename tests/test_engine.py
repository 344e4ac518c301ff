"""Unit tests of the training pieces: parameter groups, LR schedule, warmup, EMA, gain scaling, freezing, the epoch
loop, early stopping, non-finite losses, results.csv and resume state."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from models.yolo import DetectionModel
from utils.errors import CheckpointError, ConfigError
from utils.train.ema import ModelEMA
from utils.train.engine import (
    EarlyStopping,
    EpochConfig,
    TrainingDivergedError,
    TrainState,
    check_finite,
    multi_scale_size,
    rescale_batch,
    to_float_images,
    train_one_epoch,
)
from utils.train.optim import (
    AUTO_SHORT_RUN,
    CosineDecay,
    LinearDecay,
    Warmup,
    accumulate_steps,
    build_optimizer,
    build_scheduler,
    plan_optimizer,
    scaled_weight_decay,
    split_params,
    warmup_iterations,
)
from utils.train.results import RESULT_COLUMNS, append_results, read_results
from utils.train.transfer import freeze_layers, intersect_dicts, scale_loss_gains

HYP = {"lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "weight_decay": 5e-4, "warmup_epochs": 3.0,
       "warmup_momentum": 0.8, "warmup_bias_lr": 0.1, "box": 0.05, "cls": 0.5, "obj": 1.0}


class Tiny(nn.Module):
    """Conv + BatchNorm + Linear: every parameter role appears once or twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def yolo_n() -> DetectionModel:
    return DetectionModel("yolov5n.yaml", nc=6)


def test_split_params_roles():
    g = split_params(Tiny())
    assert [p.shape for p in g["norm"]] == [torch.Size([4])]  # bn.weight
    assert [p.shape for p in g["weight"]] == [torch.Size([4, 3, 3, 3]), torch.Size([2, 4])]
    assert [p.shape for p in g["bias"]] == [torch.Size([4]), torch.Size([2])]  # bn.bias, fc.bias


def test_split_params_covers_yolo_once(yolo_n):
    g = split_params(yolo_n)
    ids = [id(p) for ps in g.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(yolo_n.parameters()))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in yolo_n.modules())
    assert len(g["norm"]) == n_bn and len(g["bias"]) == n_bn + 3  # BN biases + 3 Detect conv biases


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_build_optimizer_groups(name):
    opt = build_optimizer(Tiny(), name, lr=0.02, momentum=0.9, decay=1e-3)
    assert [g["name"] for g in opt.param_groups] == ["bias", "weight", "norm"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-3, 0.0]
    if name == "SGD":
        assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    else:
        assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)


def test_build_optimizer_unknown():
    with pytest.raises(ConfigError, match="RMSprop"):
        build_optimizer(Tiny(), "RMSprop")


def test_nominal_batch():
    assert accumulate_steps(16) == 4 and accumulate_steps(64) == 1 and accumulate_steps(128) == 1
    assert accumulate_steps(24) == 3
    assert scaled_weight_decay(5e-4, 16, 4) == pytest.approx(5e-4)
    assert scaled_weight_decay(5e-4, 24, 3) == pytest.approx(5e-4 * 72 / 64)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_plan_optimizer_explicit_name_keeps_hyp_and_nominal_batch(name):
    plan = plan_optimizer(name, HYP, iterations=100, batch_size=16)
    assert (plan.name, plan.hyp, plan.nominal, plan.reason) == (name, HYP, 64, "")


def test_plan_optimizer_auto_short_run_is_adamw_stepping_every_batch():
    plan = plan_optimizer("auto", HYP, iterations=1000, batch_size=16)
    assert plan.name == "AdamW" and plan.nominal == 16 and accumulate_steps(16, plan.nominal) == 1
    assert plan.hyp == {**HYP, "lr0": 0.001, "warmup_bias_lr": 0.01}
    assert HYP["lr0"] == 0.01  # the caller's hyp is not modified
    assert "1000 iterations" in plan.reason and "AdamW" in plan.reason


def test_plan_optimizer_auto_long_run_is_sgd_with_the_hyp():
    plan = plan_optimizer("auto", HYP, iterations=AUTO_SHORT_RUN + 1, batch_size=16)
    assert (plan.name, plan.hyp, plan.nominal) == ("SGD", HYP, 64) and "SGD" in plan.reason


def test_plan_optimizer_unknown_lists_choices():
    with pytest.raises(ConfigError, match="RMSprop.*SGD, Adam, AdamW, auto"):
        plan_optimizer("RMSprop", HYP, 10, 16)


def test_lr_factors():
    lin, cos = LinearDecay(10, 0.01), CosineDecay(10, 0.01)
    assert lin(0) == 1 and lin(10) == pytest.approx(0.01) and lin(5) == pytest.approx(0.505)
    assert cos(0) == pytest.approx(1) and cos(10) == pytest.approx(0.01) and cos(5) == pytest.approx(0.505)
    assert cos(2.5) == pytest.approx(1 - 0.99 * (1 - math.cos(math.pi / 4)) / 2)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_scheduler_steps_per_epoch():
    opt = build_optimizer(Tiny(), "SGD", lr=0.01)
    sched = build_scheduler(opt, epochs=4, lrf=0.1)
    for epoch in range(4):
        assert all(g["lr"] == pytest.approx(0.01 * ((1 - epoch / 4) * 0.9 + 0.1)) for g in opt.param_groups)
        sched.step()


def test_warmup_values():
    assert warmup_iterations(3.0, 25) == 100 and warmup_iterations(3.0, 200) == 600
    opt = build_optimizer(Tiny(), "SGD", lr=0.01, momentum=0.937)
    sched = build_scheduler(opt, epochs=10, lrf=0.01)
    lf = sched.lr_lambdas[0]
    w = Warmup(100, HYP, lf, batch_size=16)
    assert w(0, 0, opt) == 1
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx([0.1, 0.0, 0.0])
    assert all(g["momentum"] == pytest.approx(0.8) for g in opt.param_groups)
    acc = w(50, 1, opt)  # half way, in epoch 1
    target = 0.01 * lf(1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([(0.1 + target) / 2, target / 2, target / 2])
    assert opt.param_groups[0]["momentum"] == pytest.approx((0.8 + 0.937) / 2)
    assert acc == round(np.interp(50, [0, 100], [1, 4]))
    assert w(100, 3, opt) == 4
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 * lf(3)] * 3)
    assert w.active(100) and not w.active(101)


def test_ema_formula():
    model = Tiny()
    ema = ModelEMA(model, decay=0.9999, tau=2000)
    assert ema.decay(0) == 0 and ema.decay(2000) == pytest.approx(0.9999 * (1 - math.exp(-1)))
    ema.updates = 999
    v0 = ema.ema.fc.weight.clone()
    with torch.no_grad():
        model.fc.weight.add_(1.0)
        model.bn.running_mean.fill_(2.0)
    ema.update(model)
    d = 0.9999 * (1 - math.exp(-1000 / 2000))
    assert ema.updates == 1000
    assert torch.allclose(ema.ema.fc.weight, d * v0 + (1 - d) * model.fc.weight)
    assert torch.allclose(ema.ema.bn.running_mean, torch.full((4,), (1 - d) * 2.0))
    assert ema.ema.bn.num_batches_tracked == 0
    assert not any(p.requires_grad for p in ema.ema.parameters())


def test_ema_update_attr_sets_class_act(yolo_n):
    ema = ModelEMA(yolo_n)
    yolo_n.hyp = {"cls_loss_type": "ce"}
    ema.update_attr(yolo_n)
    assert ema.ema.class_act == "softmax"
    yolo_n.hyp = {"cls_loss_type": "bce"}


def test_scale_loss_gains():
    h = scale_loss_gains(HYP, nl=3, nc=6, imgsz=320, label_smoothing=0.1)
    assert h["box"] == pytest.approx(0.05) and h["cls"] == pytest.approx(0.5 * 6 / 80)
    assert h["obj"] == pytest.approx(0.25) and h["label_smoothing"] == 0.1
    assert scale_loss_gains({**HYP, "label_smoothing": 0.05}, 3, 6, 320)["label_smoothing"] == 0.05  # the hyp's
    assert scale_loss_gains(HYP, 3, 6, 320)["label_smoothing"] == 0.0
    h4 = scale_loss_gains(HYP, nl=4, nc=80, imgsz=640)
    assert (h4["box"], h4["cls"], h4["obj"]) == pytest.approx((0.0375, 0.375, 0.75))
    assert HYP["box"] == 0.05  # input untouched


def test_intersect_dicts_and_freeze(yolo_n):
    other = DetectionModel("yolov5n.yaml", nc=3).state_dict()
    own = yolo_n.state_dict()
    common = intersect_dicts(other, own)
    assert 0 < len(common) < len(own) and not any(k.startswith("model.24.m.") for k in common)
    assert not any("anchor" in k for k in intersect_dicts(other, own, exclude=("anchor",)))
    frozen = freeze_layers(yolo_n, [10])
    assert frozen and all(int(k.split(".")[1]) < 10 for k in frozen)
    assert freeze_layers(yolo_n, [1, 2]) and all(k.split(".")[1] in "12" for k in freeze_layers(yolo_n, [1, 2]))
    assert freeze_layers(yolo_n, [0]) == [] and all(p.requires_grad for p in yolo_n.parameters())
    with pytest.raises(ConfigError, match=r"--freeze 100 freezes every layer of this 25-layer model.*"
                                          r"--freeze 10 is this model's backbone"):
        freeze_layers(yolo_n, [100])
    with pytest.raises(ConfigError, match=r"--freeze 7 is this model's backbone"):  # ShuffleNetV2's is shorter
        freeze_layers(DetectionModel("yolov5-shufflenetv2-0.5.yaml", nc=3), [100])
    freeze_layers(yolo_n, [0])


def test_multi_scale():
    rng = random.Random(0)
    sizes = {multi_scale_size(320, 32, rng) for _ in range(200)}
    assert all(s % 32 == 0 and 160 <= s <= 480 for s in sizes) and len(sizes) > 5
    out = rescale_batch(torch.zeros(2, 3, 320, 256), 160, 32)
    assert out.shape == (2, 3, 160, 128)


def test_early_stopping():
    stop = EarlyStopping(patience=2)
    assert [stop(e, f) for e, f in enumerate([0.1, 0.2, 0.15, 0.19])] == [False, False, False, True]
    assert stop.best_epoch == 1
    never = EarlyStopping(patience=0)
    assert not any(never(e, 0.0 if e else 1.0) for e in range(50))
    plateau = EarlyStopping(patience=1)  # the same fitness again is not an improvement (upstream's rule)
    assert [plateau(e, 0.0) for e in range(3)] == [False, True, True] and plateau.best_epoch == 0


def test_check_finite_message():
    check_finite(torch.tensor([1.0]), torch.zeros(3), 0, 0, torch.device("cpu"))
    with pytest.raises(TrainingDivergedError, match=r"epoch 2 batch 5 \(box_loss nan, obj_loss 0.5"):
        check_finite(torch.tensor([float("nan")]), torch.tensor([float("nan"), 0.5, 0.1]), 2, 5, torch.device("cpu"))


def _fake_loader(n_batches: int, bs: int = 2, size: int = 32):
    g = torch.Generator().manual_seed(0)
    for i in range(n_batches):
        imgs = torch.randint(0, 255, (bs, 3, size, size), generator=g, dtype=torch.uint8)
        targets = torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.3]])
        yield imgs, targets, tuple(f"im{i}_{j}.jpg" for j in range(bs)), None


class _Loss:
    """Mean of the output times a constant, with (box, obj, cls) items; NaN from batch nan_at on."""

    def __init__(self, nan_at: int | None = None):
        self.calls, self.nan_at = 0, nan_at

    def __call__(self, p, targets):
        self.calls += 1
        loss = p.mean().reshape(1) * 2
        if self.nan_at is not None and self.calls > self.nan_at:
            loss = loss * float("nan")
        return loss, torch.cat([loss.detach(), loss.detach() / 2, loss.detach() / 4])


def _state(model: nn.Module, loss: _Loss, batch_size: int = 2) -> TrainState:
    opt = build_optimizer(model, "SGD", lr=0.01)
    sched = build_scheduler(opt, epochs=2, lrf=0.01)
    return TrainState(model, opt, loss, Warmup(4, HYP, sched.lr_lambdas[0], batch_size, nominal=8),
                      accumulate=4, ema=ModelEMA(model))


def test_train_one_epoch_accumulates_and_updates_ema():
    model = Tiny()
    state = _state(model, _Loss())
    cfg = EpochConfig(epochs=2, imgsz=32, device=torch.device("cpu"), grid=8)
    batches = list(_fake_loader(8))
    mloss = train_one_epoch(state, batches, 0, cfg)
    assert mloss.shape == (3,) and torch.isfinite(mloss).all()
    # warmup over 4 iterations raises accumulate round(interp(ni, [0, 4], [1, 4])): 1, 2, 2, 3, 4, then stays 4;
    # a step when ni - last_step >= accumulate: at ni 0, 2 and 6
    assert state.ema.updates == 3 and state.last_opt_step == 6 and state.accumulate == 4


def test_train_one_epoch_nan_raises_before_backward():
    model = Tiny()
    state = _state(model, _Loss(nan_at=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = EpochConfig(epochs=1, imgsz=32, device=torch.device("cpu"), grid=8)
    with pytest.raises(TrainingDivergedError, match="epoch 0 batch 2"):
        train_one_epoch(state, list(_fake_loader(5)), 0, cfg)
    assert state.ema.updates == 1  # one step at ni 0 (ni 1 accumulates); the NaN batch never reached backward
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_ctrl_c_whose_keyboard_interrupt_was_swallowed_stops_the_epoch_at_the_next_batch():
    from utils.train.interrupt import InterruptGuard

    loss = _Loss()
    guard = InterruptGuard()
    cfg = EpochConfig(epochs=1, imgsz=32, device=torch.device("cpu"), grid=8, interrupt=guard)
    train_one_epoch(_state(Tiny(), loss), list(_fake_loader(2)), 0, cfg)
    assert loss.calls == 2
    guard.requested = True  # what the SIGINT handler sets before raising
    with pytest.raises(KeyboardInterrupt):
        train_one_epoch(_state(Tiny(), loss), list(_fake_loader(2)), 0, cfg)
    assert loss.calls == 2  # no further batch trained


def _first_step(monkeypatch, loss_gain: float, parts: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Train Tiny on one batch of 4 (in parts threads): (the gradients the optimizer step sees, the logged losses)."""
    from utils.train import engine
    from utils.train.thread_dp import ThreadDataParallel

    torch.manual_seed(0)
    state, grads = _state(Tiny(), _Loss()), []
    state.dp = ThreadDataParallel(state.model, parts, state.compute_loss, lambda m: _Loss()) if parts > 1 else None
    monkeypatch.setattr(engine, "optimizer_step", lambda s, clip: grads.extend(p.grad.clone()
                                                                                for p in s.model.parameters()))
    cfg = EpochConfig(epochs=1, imgsz=32, device=torch.device("cpu"), grid=8, loss_gain=loss_gain)
    try:
        logged = train_one_epoch(state, list(_fake_loader(1, bs=4)), 0, cfg)
    finally:
        if state.dp is not None:
            state.dp.close()
    return grads, logged


@pytest.mark.parametrize("parts", [1, 2], ids=["one-thread", "cpu-dp-2"])
def test_quad_loss_gain_scales_the_gradient_by_4_and_not_the_logged_losses(monkeypatch, parts):
    """--quad trains a quarter as many images per batch; EpochConfig.loss_gain 4 restores the gradient's scale."""
    grads1, logged1 = _first_step(monkeypatch, 1.0, parts)
    grads4, logged4 = _first_step(monkeypatch, 4.0, parts)
    assert len(grads1) == len(grads4) == len(list(Tiny().parameters()))
    assert all(torch.allclose(g4, 4 * g1) and g1.abs().sum() > 0 for g1, g4 in zip(grads1, grads4))
    assert torch.equal(logged1, logged4)  # box/obj/cls as computed, comparable with runs without --quad


def test_results_csv(tmp_path):
    f = tmp_path / "results.csv"
    append_results(f, 0, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7, 0.4, 0.01, 0.02, 0.03], [0.1, 0.001, 0.001])
    append_results(f, 1, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7, 0.4, 0.01, 0.02, 0.03], [0.1, 0.001, 0.001])
    lines = f.read_text().splitlines()
    assert lines[0].split(",") == list(RESULT_COLUMNS) and len(lines) == 3
    rows = read_results(f)
    assert [r["epoch"] for r in rows] == [0, 1] and rows[1]["metrics/mAP_0.5"] == pytest.approx(0.7)
    with pytest.raises(ValueError):
        append_results(f, 2, [0.1], [0.5], [0.1])


def test_a_resumed_run_drops_results_rows_after_its_checkpoint(tmp_path):
    from utils.train.results import keep_results_before

    f = tmp_path / "results.csv"
    for epoch in (0, 1, 2):  # epoch 2's row was written, then the run stopped before its checkpoint
        append_results(f, epoch, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7, 0.4, 0.01, 0.02, 0.03], [0.1, 0.001, 0.001])
    keep_results_before(f, 2)  # resuming at epoch 2
    append_results(f, 2, [0.1, 0.2, 0.3], [0.5, 0.6, 0.7, 0.4, 0.01, 0.02, 0.03], [0.1, 0.001, 0.001])
    assert [r["epoch"] for r in read_results(f)] == [0, 1, 2]
    keep_results_before(tmp_path / "missing.csv", 1)  # no file yet: nothing to do


def test_restore_state_roundtrip(tmp_path):
    from utils.train.trainer import restore_state

    model = Tiny()
    state = _state(model, _Loss())
    train_one_epoch(state, list(_fake_loader(6)), 0, EpochConfig(2, 32, torch.device("cpu"), 8))
    ckpt = {"epoch": 0, "best_fitness": 0.3, "model": model, "ema": state.ema.ema, "updates": state.ema.updates,
            "optimizer": state.optimizer.state_dict(), "last_opt_step": state.last_opt_step}
    fresh = _state(Tiny(), _Loss())
    sched = build_scheduler(fresh.optimizer, epochs=3, lrf=0.01)
    start, best = restore_state(ckpt, fresh, sched, "last.pt", epochs=3)
    assert (start, best) == (1, 0.3) and sched.last_epoch == 1
    assert fresh.ema.updates == state.ema.updates and fresh.last_opt_step == state.last_opt_step
    assert torch.equal(fresh.ema.ema.fc.weight, state.ema.ema.fc.weight)
    m_new = fresh.optimizer.state_dict()["state"]
    m_old = state.optimizer.state_dict()["state"]
    assert all(torch.equal(m_new[k]["momentum_buffer"], m_old[k]["momentum_buffer"]) for k in m_old)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        restore_state({**ckpt, "epoch": -1, "optimizer": None}, fresh, sched, "best.pt", epochs=3)


def test_a_uint8_batch_becomes_float_in_zero_one_in_the_training_memory_format():
    imgs = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = to_float_images(imgs, torch.device("cpu"), torch.channels_last)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, imgs.float() / 255)  # the same values as the plain conversion
    already = imgs.float()
    to_float_images(already, torch.device("cpu"), torch.contiguous_format)
    assert torch.equal(already, imgs.float())  # a float input is copied, not divided in place


# ---- CUDA's float16 AMP path (autocast with the loss inside, GradScaler), run on the CPU


@pytest.fixture
def cpu_float16_autocast():
    """Make float16 the CPU's autocast dtype for one test, as CUDA's is (EpochConfig amp_dtype None = the default)."""
    old = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)
    yield
    torch.set_autocast_dtype("cpu", old)


def _yolo_batches(n: int, bs: int = 2, size: int = 64):
    """n uint8 batches with three labelled boxes (image, class, xywh normalised)."""
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.4], [0, 1, 0.2, 0.3, 0.1, 0.1], [1, 2, 0.7, 0.6, 0.2, 0.5]])
    return [(imgs, targets, ("a.jpg", "b.jpg"), None) for imgs, *_ in _fake_loader(n, bs, size)]


@pytest.mark.parametrize("hyp_file", ["scratch-low", "slide", "focal", "ce", "centernet", "box-l1"])
def test_float16_amp_with_grad_scaler_trains_every_loss_family(cpu_float16_autocast, hyp_file):
    from utils.loss import ComputeLoss
    from utils.train.hyp import load_hyp

    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml", nc=3)
    model.hyp = load_hyp(f"data/hyps/hyp.{hyp_file}.yaml")
    opt = build_optimizer(model, "SGD", lr=0.01, momentum=0.9)
    lf = build_scheduler(opt, epochs=1, lrf=0.01).lr_lambdas[0]
    state = TrainState(model, opt, ComputeLoss(model), Warmup(0, HYP, lf, 2, nominal=2), accumulate=1,
                       ema=ModelEMA(model), scaler=torch.amp.GradScaler("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    mloss = train_one_epoch(state, _yolo_batches(4), 0, EpochConfig(1, 64, torch.device("cpu"), amp=True))
    assert torch.isfinite(mloss).all() and state.ema.updates == 4
    assert 0 < state.scaler.get_scale() <= 2.0 ** 16  # backed off on overflowing steps, never grew past its start
    assert all(torch.isfinite(p).all() and not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_grad_scaler_unscales_before_clipping():
    """With a GradScaler the step equals the unscaled one, even where clipping acts (it sees the true norm)."""
    models, cfg = [], EpochConfig(1, 32, torch.device("cpu"), grid=8, clip_norm=1e-3)
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1024.0)):
        torch.manual_seed(0)
        model = Tiny()
        state = _state(model, _Loss())
        state.scaler = scaler
        train_one_epoch(state, list(_fake_loader(4)), 0, cfg)
        models.append(model)
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
