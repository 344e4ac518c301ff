"""Thread data parallelism on the CPU (train.py --cpu-dp): shared parameters, part bounds, gradients equal to the
parts' summed in order, part 0's BatchNorm statistics, the epoch loop, and where it does not apply."""

from __future__ import annotations

import argparse
import logging
import threading

import pytest
import torch
from torch import nn

from utils.errors import ConfigError
from utils.log import get_logger
from utils.train.dist import DistEnv
from utils.train.ema import ModelEMA
from utils.train.engine import EpochConfig, TrainState, train_one_epoch
from utils.train.optim import Warmup, build_optimizer, build_scheduler
from utils.train.thread_dp import ThreadDataParallel, part_bounds, shared_replica, split_targets
from utils.train.train_setup import auto_cpu_dp, check_cpu_dp, make_cpu_dp

HYP = {"lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "weight_decay": 5e-4, "warmup_epochs": 3.0,
       "warmup_momentum": 0.8, "warmup_bias_lr": 0.1}


class ConvBN(nn.Module):
    """Conv + BatchNorm + SiLU + a 1x1 head: enough to show per-part BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return [self.head(nn.functional.silu(self.bn(self.conv(x))))]


def box_loss(pred: list, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A loss with ComputeLoss's shape: (sum over the part times its batch size, (box, obj, cls) items)."""
    p = pred[0]
    term = (p ** 2).mean() + 0.1 * targets[:, 2:].sum() / max(len(targets), 1)
    loss = term * p.shape[0]
    return loss.reshape(1), torch.stack([term.detach(), term.detach() / 2, term.detach() / 4])


def _batch(bs: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(bs, 3, size, size, generator=g)
    targets = torch.tensor([[i, i % 3, 0.5, 0.5, 0.1 * (i + 1), 0.2] for i in range(bs)] + [[1, 0, 0.2, 0.3, 0.1, 0.1]])
    return imgs, targets


def _part(model, loss_fn, imgs, targets):
    return loss_fn(model(imgs), targets)


def test_replica_shares_parameters_and_owns_its_buffers():
    model = ConvBN()
    replica = shared_replica(model)
    assert all(a is b for a, b in zip(model.parameters(), replica.parameters()))
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(model.buffers(), replica.buffers()))
    with torch.no_grad():
        model.conv.weight += 1  # one set of weights
    assert torch.equal(model.conv.weight, replica.conv.weight)


def test_part_bounds_and_targets_per_part():
    assert part_bounds(16, 2) == [(0, 8), (8, 16)]
    assert part_bounds(7, 3) == [(0, 2), (2, 5), (5, 7)]  # sizes differ by at most one
    assert part_bounds(2, 4) == [(0, 1), (1, 2)]  # never an empty part
    targets = torch.tensor([[0, 1, .5, .5, .1, .1], [3, 2, .4, .4, .2, .2], [2, 0, .3, .3, .1, .1]])
    first, second = split_targets(targets, [(0, 2), (2, 4)])
    assert first[:, 0].tolist() == [0] and second[:, :2].tolist() == [[1, 2], [0, 0]]  # image indices per part


def test_gradients_are_the_parts_summed_in_order_and_reproducible():
    imgs, targets = _batch()
    model = ConvBN()
    main_threads = torch.get_num_threads()
    dp = ThreadDataParallel(model, 2, box_loss, lambda m: box_loss, threads=2)
    try:
        assert [pool.submit(torch.get_num_threads).result() for pool in dp.pools] == [1, 1]  # one core per part
        assert torch.get_num_threads() == main_threads  # the main thread keeps its own
        loss, items = dp.losses(imgs, targets, _part)
        dp.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        # the reference: each half alone, one intra-op thread as in the workers, part 0 first
        ref_model = ConvBN()
        ref_model.load_state_dict(model.state_dict())
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            parts = split_targets(targets, [(0, 3), (3, 6)])
            losses = [box_loss(ref_model(imgs[lo:hi]), t) for (lo, hi), t in zip([(0, 3), (3, 6)], parts)]
            ref = [torch.autograd.grad(part_loss.sum(), list(ref_model.parameters())) for part_loss, _ in losses]
        finally:
            torch.set_num_threads(threads)
        for g, a, b in zip(grads, *ref):
            torch.testing.assert_close(g, a + b, rtol=1e-5, atol=1e-7)
        assert torch.allclose(loss, losses[0][0] + losses[1][0])
        torch.testing.assert_close(items, (losses[0][1] * 3 + losses[1][1] * 3) / 6)
        for p in model.parameters():  # the same batch again gives bit-identical gradients
            p.grad = None
        dp.losses(imgs, targets, _part)
        dp.backward()
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    finally:
        dp.close()


def test_running_statistics_are_part_zeros_as_under_ddp():
    imgs, targets = _batch()
    model, alone = ConvBN(), ConvBN()
    alone.load_state_dict(model.state_dict())
    dp = ThreadDataParallel(model, 2, box_loss, lambda m: box_loss, threads=2)
    try:
        dp.losses(imgs, targets, _part)
        dp.backward()
    finally:
        dp.close()
    alone(imgs[:3])  # part 0 on its own updates the same statistics
    torch.testing.assert_close(model.bn.running_mean, alone.bn.running_mean)
    torch.testing.assert_close(model.bn.running_var, alone.bn.running_var)
    assert not torch.allclose(model.bn.running_mean, dp.replicas[1].bn.running_mean)  # part 1's stay in its replica


def test_epoch_loop_with_cpu_dp_steps_like_the_plain_loop():
    def run(dp_parts: int):
        torch.manual_seed(0)
        model = ConvBN()
        opt = build_optimizer(model, "SGD", lr=0.01)
        sched = build_scheduler(opt, epochs=1, lrf=0.01)
        state = TrainState(model, opt, box_loss, Warmup(2, HYP, sched.lr_lambdas[0], 6, nominal=12), accumulate=2,
                           ema=ModelEMA(model))
        if dp_parts > 1:
            state.dp = ThreadDataParallel(model, dp_parts, box_loss, lambda m: box_loss, threads=dp_parts)
        g = torch.Generator().manual_seed(1)
        batches = [(torch.randint(0, 255, (6, 3, 16, 16), generator=g, dtype=torch.uint8), _batch()[1], (), None)
                   for _ in range(4)]
        try:
            mloss = train_one_epoch(state, batches, 0, EpochConfig(epochs=1, imgsz=16, device=torch.device("cpu")))
        finally:
            if state.dp is not None:
                state.dp.close()
        return mloss, state

    plain_loss, plain = run(1)
    dp_loss, dp = run(2)
    assert (dp.ema.updates, dp.last_opt_step) == (plain.ema.updates, plain.last_opt_step)
    assert torch.isfinite(dp_loss).all() and dp_loss.shape == (3,)
    torch.testing.assert_close(dp_loss, plain_loss, rtol=0.2, atol=0)  # per-part BatchNorm: close, not equal


def test_each_part_gets_its_own_images_as_float_in_the_training_memory_format():
    seen = []  # (thread, the input each part's forward received)

    class Recording(ConvBN):
        def forward(self, x):
            seen.append((threading.current_thread().name, x.detach().clone()))
            return super().forward(x)

    model = Recording().to(memory_format=torch.channels_last)
    opt = build_optimizer(model, "SGD", lr=0.01)
    state = TrainState(model, opt, box_loss, Warmup(0, HYP, build_scheduler(opt, 1, 0.01).lr_lambdas[0], 6),
                       accumulate=1)
    state.dp = ThreadDataParallel(model, 2, box_loss, lambda m: box_loss, threads=2)
    handed = []  # what the main thread passes to the parts
    losses = state.dp.losses
    state.dp.losses = lambda imgs, targets, part: handed.append(imgs.dtype) or losses(imgs, targets, part)
    imgs = torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    try:
        train_one_epoch(state, [(imgs, _batch()[1], (), None)], 0,
                        EpochConfig(epochs=1, imgsz=16, device=torch.device("cpu"), memory_format=torch.channels_last))
    finally:
        state.dp.close()
    assert handed == [torch.uint8]  # the main thread does not convert: each part makes its own slice float
    by_thread = dict(seen)
    assert sorted(by_thread) == ["cpu-dp0_0", "cpu-dp1_0"]
    for k, (lo, hi) in enumerate(part_bounds(6, 2)):
        x = by_thread[f"cpu-dp{k}_0"]
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x, imgs[lo:hi].float() / 255)


def test_cpu_dp_option_checks_and_where_it_does_not_apply():
    assert check_cpu_dp(argparse.Namespace(cpu_dp=2)) == 2 and check_cpu_dp(argparse.Namespace()) == 1
    assert check_cpu_dp(argparse.Namespace(cpu_dp="3")) == 3
    assert check_cpu_dp(argparse.Namespace(cpu_dp="Auto")) == "auto"
    for bad in (0, "0", "two", 1.5):
        with pytest.raises(ConfigError, match=f"--cpu-dp {bad}"):
            check_cpu_dp(argparse.Namespace(cpu_dp=bad))
    model = ConvBN()
    opt = build_optimizer(model, "SGD", lr=0.01)
    state = TrainState(model, opt, box_loss, None, accumulate=1)
    assert make_cpu_dp(1, state, torch.device("cpu"), DistEnv()) is None
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    get_logger().addHandler(handler)
    try:
        assert make_cpu_dp(2, state, torch.device("cuda", 0), DistEnv()) is None
        assert make_cpu_dp(2, state, torch.device("cpu"), DistEnv(rank=0, local_rank=0, world_size=2)) is None
        state.distill = object()
        assert make_cpu_dp(2, state, torch.device("cpu"), DistEnv()) is None
    finally:
        get_logger().removeHandler(handler)
    text = "\n".join(lines)
    assert "for CPU training" in text and "DDP already splits" in text and "--teacher" in text


def test_cpu_dp_auto_gives_each_thread_a_part_of_at_least_eight_images():
    assert auto_cpu_dp(batch=16, threads=2) == 2  # the checked split: two parts of 8 on 2 cores
    assert auto_cpu_dp(batch=16, threads=16) == 2  # more cores: more threads per part, never parts under 8
    assert auto_cpu_dp(batch=64, threads=16) == 8
    assert auto_cpu_dp(batch=15, threads=2) == 1 and auto_cpu_dp(batch=32, threads=1) == 1  # off


def test_cpu_dp_auto_is_silently_off_where_it_does_not_apply_and_on_for_a_cpu_batch_of_16():
    from models.yolo import DetectionModel
    from utils.loss import ComputeLoss
    from utils.train.hyp import load_hyp

    model = DetectionModel("yolov5n.yaml", nc=3)
    model.hyp = load_hyp("hyp.scratch-low.yaml")
    state = TrainState(model, build_optimizer(model, "SGD", lr=0.01), ComputeLoss(model), None, accumulate=1)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    get_logger().addHandler(handler)
    threads = torch.get_num_threads()
    try:
        assert make_cpu_dp("auto", state, torch.device("cuda", 0), DistEnv(), batch=16) is None
        assert make_cpu_dp("auto", state, torch.device("cpu"), DistEnv(rank=0, local_rank=0, world_size=2),
                           batch=16) is None
        assert make_cpu_dp("auto", state, torch.device("cpu"), DistEnv(), batch=8) is None  # one part of 8
        assert not lines  # auto does not warn where it stays off
        torch.set_num_threads(2)
        dp = make_cpu_dp("auto", state, torch.device("cpu"), DistEnv(), batch=16)
        try:
            assert dp is not None and dp.n == 2 and dp.per_part == 1
        finally:
            dp.close()
    finally:
        torch.set_num_threads(threads)
        get_logger().removeHandler(handler)
    assert any("--cpu-dp 2: each batch in 2 parts" in line for line in lines)
