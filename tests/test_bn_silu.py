"""The fused BatchNorm+SiLU training kernel (models/bn_silu.py): same numbers as ATen's kernels, clean fallback."""

from __future__ import annotations

import copy

import pytest
import torch

from models import bn_silu
from models.common import Conv
from models.yolo import DetectionModel

CL = torch.channels_last


@pytest.fixture
def kernel():
    """The kernel built (or loaded from its cache) and on for this test; the previous state afterwards."""
    before = copy.copy(bn_silu.KERNEL)
    assert bn_silu.prepare(), bn_silu.KERNEL.reason
    yield bn_silu.KERNEL
    bn_silu.KERNEL.__dict__.update(before.__dict__)


def assert_near(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    """a equals b up to tol times b's largest magnitude (float32 sums in another order differ at that scale)."""
    assert (a - b).abs().max() <= tol * b.abs().max(), f"{(a - b).abs().max():.2e} against {b.abs().max():.2e}"


def fused_and_eager(conv: Conv, x: torch.Tensor, grad: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """(output, input grad, conv/bn grads, running stats) of one training step, fused and with ATen's kernels."""
    results = []
    for active in (True, False):
        m, xi = copy.deepcopy(conv), x.detach().clone().requires_grad_()
        bn_silu.KERNEL.active = active
        y = m(xi)
        y.backward(grad)
        results.append((y.detach(), xi.grad, m.conv.weight.grad, m.bn.weight.grad, m.bn.bias.grad,
                        m.bn.running_mean, m.bn.running_var, m.bn.num_batches_tracked))
    bn_silu.KERNEL.active = True
    return results


@pytest.mark.parametrize("c2, hw, n", [(16, 40, 4), (24, 12, 3), (13, 7, 2), (64, 5, 2)])
def test_conv_block_trains_with_the_same_numbers_fused_or_not(kernel, c2, hw, n):
    conv = Conv(8, c2, 3).train()
    x = (torch.randn(n, 8, hw, hw) * 3 + 1).contiguous(memory_format=CL)
    grad = torch.randn(n, c2, hw, hw).contiguous(memory_format=CL)
    fused, eager = fused_and_eager(conv, x, grad)
    assert fused[0].is_contiguous(memory_format=CL)
    for a, b in zip(fused, eager):  # channel counts not a multiple of 8 take the scalar tail
        assert_near(a, b)
    assert fused[-1].item() == 1


def test_gradient_arriving_as_a_channel_slice_is_read_in_place(kernel):
    conv = Conv(4, 16, 1).train()
    x = torch.randn(2, 4, 9, 9).contiguous(memory_format=CL)
    grads = []
    for active in (True, False):
        bn_silu.KERNEL.active = active
        m, xi = copy.deepcopy(conv), x.clone().requires_grad_()
        y = m(xi)
        both = torch.cat([y, 2 * y], 1)  # cat's backward hands y a strided slice of a channels_last gradient
        (both * torch.arange(32.0).view(1, 32, 1, 1)).sum().backward()
        grads.append(xi.grad)
    assert_near(grads[0], grads[1])


def test_applies_only_to_cpu_training_with_autograd_on_channels_last_float32(kernel):
    conv = Conv(3, 8, 3).train()
    y = torch.randn(2, 8, 6, 6).contiguous(memory_format=CL)
    assert bn_silu.applies(conv.bn, conv.act, y)
    assert not bn_silu.applies(conv.bn, conv.act, y.contiguous())  # NCHW
    assert not bn_silu.applies(conv.bn, conv.act, y.bfloat16())  # --bf16 autocast
    assert not bn_silu.applies(conv.bn, conv.act, y[:1, :, :1, :1])  # one value per channel: ATen's error
    assert not bn_silu.applies(conv.bn, torch.nn.ReLU(), y)
    with torch.no_grad():
        assert not bn_silu.applies(conv.bn, conv.act, y)
    assert not bn_silu.applies(conv.bn.eval(), conv.act, y)


def test_a_failed_build_logs_why_and_training_uses_atens_kernels(monkeypatch, logs):
    monkeypatch.setattr(bn_silu, "KERNEL", bn_silu.KernelState())

    def no_compiler():
        raise RuntimeError("Error building extension 'yolo_bn_silu':\nbn_silu.cpp:1: error: no compiler\n"
                           "ninja: build stopped: subcommand failed.")

    monkeypatch.setattr(bn_silu, "build", no_compiler)
    assert not bn_silu.prepare()
    assert any("kernel off: it could not be built (RuntimeError: bn_silu.cpp:1: error: no compiler)" in m for m in logs)
    monkeypatch.setattr(bn_silu, "build", lambda: pytest.fail("a failed build is not retried in the same process"))
    assert not bn_silu.prepare()
    conv = Conv(3, 8, 3).train()
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=CL)
    torch.testing.assert_close(conv(x), torch.nn.functional.silu(conv.bn(conv.conv(x))))


def test_prepare_false_switches_the_kernel_off(kernel):
    assert not bn_silu.prepare(False)
    conv = Conv(3, 8, 3).train()
    assert not bn_silu.applies(conv.bn, conv.act, torch.randn(2, 8, 4, 4).contiguous(memory_format=CL))
    assert "--eager-bn" in bn_silu.KERNEL.reason


def test_yolov5n_gradients_are_as_close_to_float64_as_atens(kernel):
    base = DetectionModel("yolov5n.yaml", nc=2).to(memory_format=CL).train()
    imgs = torch.rand(4, 3, 64, 64).contiguous(memory_format=CL)

    def grads(model: DetectionModel, x: torch.Tensor, fused: bool) -> list[torch.Tensor]:
        bn_silu.KERNEL.active = fused  # float64 never takes the kernel: it is the reference
        loss = sum(p.square().mean() for p in model(x))
        loss.backward()
        return [p.grad.double() for p in model.parameters()]

    exact = grads(copy.deepcopy(base).double(), imgs.double(), False)

    def error(gs: list[torch.Tensor]) -> float:
        return max(((g - e).abs().max() / e.abs().max()).item() for g, e in zip(gs, exact) if e.abs().max() > 0)

    fused, eager = error(grads(copy.deepcopy(base), imgs, True)), error(grads(copy.deepcopy(base), imgs, False))
    assert fused < 1e-3 and fused <= 2 * eager, (fused, eager)  # both about 1e-4: float32 sums in another order


def test_speed_benchmark_prints_both_sides_per_shape(kernel, capsys):
    from benchmarks.bn_silu_speed import YOLOV5N_SHAPES, main, parse_opt

    fused, aten = main(parse_opt(["--batch", "2", "--imgsz", "64", "--rounds", "1"]))
    out = capsys.readouterr().out
    assert fused > 0 and aten > 0 and out.count("\n") == len(YOLOV5N_SHAPES) + 3
    assert out.splitlines()[-1].split()[0] == "sum" and bn_silu.KERNEL.active


def test_each_checkout_and_source_text_gets_its_own_build(tmp_path):
    a, b = tmp_path / "a" / "bn_silu.cpp", tmp_path / "b" / "bn_silu.cpp"
    for f in (a, b):
        f.parent.mkdir()
        f.write_text("// kernel\n")
    assert bn_silu.extension_name(a) == bn_silu.extension_name(a) != bn_silu.extension_name(b)
    before = bn_silu.extension_name(a)
    a.write_text("// kernel, edited\n")
    assert bn_silu.extension_name(a) != before and bn_silu.extension_name(a).startswith("yolo_bn_silu_")


def test_train_setup_prepares_the_kernel_on_the_cpu_unless_eager_bn(kernel, monkeypatch):
    from argparse import Namespace

    from utils.train.train_setup import prepare_bn_silu

    assert not prepare_bn_silu(Namespace(eager_bn=True), torch.device("cpu")) and not bn_silu.KERNEL.active
    assert prepare_bn_silu(Namespace(eager_bn=False), torch.device("cpu")) and bn_silu.KERNEL.active
    monkeypatch.setattr(bn_silu, "prepare", lambda enabled=True: pytest.fail("CUDA training never builds it"))
    assert not prepare_bn_silu(Namespace(eager_bn=False), torch.device("cuda"))


def test_variance_is_exact_with_an_outlying_first_pixel(kernel):
    conv = Conv(8, 8, 1).train()
    x = torch.randn(16, 8, 40, 40)
    x[0, :, 0, 0] = 1000.0  # the first row of every block-wise sum: no cancellation against it
    x = x.contiguous(memory_format=CL)
    conv.bn.momentum = 1.0  # running_var becomes this batch's unbiased variance
    with torch.no_grad():
        y = conv.conv(x)
    bn_silu.bn_silu(conv.bn, y.requires_grad_())
    assert_near(conv.bn.running_var.double(), y.detach().double().var(dim=(0, 2, 3)), 1e-5)


def test_double_backward_is_refused_not_silently_wrong(kernel):
    conv = Conv(4, 8, 3).train()
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=CL).requires_grad_()
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(conv(x).square().sum(), x, create_graph=True)
