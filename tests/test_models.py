"""Model zoo: exact YOLOv5 parameter counts, the Detect head's outputs, official checkpoints, fused inference."""

from __future__ import annotations

import pytest
import torch
from conftest import OFFICIAL_WEIGHTS, needs_shared

from models.yolo import Detect, DetectionModel, Model, parse_opt
from utils.checkpoint import attempt_load, load_checkpoint, save_checkpoint
from utils.errors import CheckpointError, ConfigError

OFFICIAL_PARAMS = {"n": 1_872_157, "s": 7_235_389, "m": 21_190_557, "l": 46_563_709, "x": 86_749_405}


@pytest.mark.parametrize("size", list(OFFICIAL_PARAMS))
def test_parameter_counts_equal_official(size):
    model = DetectionModel(f"yolov5{size}.yaml")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[size]


ZOO_PARAMS = {"yolov5n6.yaml": 3_246_940, "yolov5s6.yaml": 12_626_620, "yolov5m6.yaml": 35_731_932,
              "yolov5l6.yaml": 76_770_172, "yolov5x6.yaml": 140_794_780, "yolov5s-ghost.yaml": 3_897_605,
              "yolov5s-transformer.yaml": 7_235_645}


@pytest.mark.parametrize("cfg", list(ZOO_PARAMS))
def test_p6_and_hub_parameter_counts_equal_official(cfg):
    model = DetectionModel(cfg)  # bare names resolve in models/ and models/hub/
    assert sum(p.numel() for p in model.parameters()) == ZOO_PARAMS[cfg]


def test_p6_model_has_four_levels_and_the_five_level_loss_balance():
    from utils.loss import ComputeLoss
    from utils.train.hyp import load_hyp

    model = DetectionModel("yolov5n6.yaml", nc=3)
    assert model.stride.tolist() == [8.0, 16.0, 32.0, 64.0] and model.model[-1].nl == 4
    model.hyp = load_hyp("hyp.scratch-low.yaml")
    loss = ComputeLoss(model)
    p = model(torch.rand(1, 3, 128, 128))
    total, items = loss(p, torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.4]]))
    assert loss.balance[:4] == [4.0, 1.0, 0.25, 0.06] and torch.isfinite(total).all() and (items > 0).all()


def test_transformer_block_keeps_shape_and_exports_to_onnx(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from utils.deploy.export import export_onnx

    model = DetectionModel("yolov5s-transformer.yaml", nc=2).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)[0].numpy()
    f = export_onnx(model, x, tmp_path / "tr.onnx")
    got = ort.InferenceSession(str(f)).run(None, {"images": x.numpy()})[0]
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-3


LIGHT_PARAMS = {"yolov5-shufflenetv2.yaml": 1_645_473, "yolov5-mobilenetv3s.yaml": 1_663_069,
                "yolov5-shufflenetv2-0.5.yaml": 955_613, "yolov5n-ghost.yaml": 1_049_217,
                "yolov5-mobilenetv3s-slim.yaml": 1_342_637, "yolov5-shufflenetv2-0.5-slim.yaml": 630_189}


@pytest.mark.parametrize("cfg", list(LIGHT_PARAMS))
def test_light_backbones_build_fuse_and_export(cfg, tmp_path):
    import numpy as np
    import onnxruntime as ort

    from utils.deploy.export import export_onnx

    model = DetectionModel(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) == LIGHT_PARAMS[cfg]  # as built here, at nc=80
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)[0]
        model.fuse()
        fused = model(x)[0]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # torchvision's BNs folded too
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-3)
    f = export_onnx(model, x, tmp_path / "light.onnx")
    got = ort.InferenceSession(str(f)).run(None, {"images": x.numpy()})[0]
    assert np.abs(got - fused.numpy()).max() < 1e-3


def test_shuffle_block_refuses_a_channel_change_at_stride_one():
    from models.common import ShuffleBlock

    with pytest.raises(ValueError, match="stride 1 keeps the channels"):
        ShuffleBlock(48, 96, 1)


def test_model_alias_and_strides():
    model = Model("yolov5n.yaml", nc=3)
    assert Model is DetectionModel
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert model.nc == 3 and model.model[-1].nc == 3
    assert model.names == {0: "0", 1: "1", 2: "2"}


def test_train_and_eval_output_shapes():
    model = DetectionModel("yolov5n.yaml", nc=4)
    x = torch.rand(2, 3, 64, 96)
    raw = model(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 8, 12, 9), (2, 3, 4, 6, 9), (2, 3, 2, 3, 9)]
    model.eval()
    y, raw_eval = model(x)
    assert y.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 9)
    assert len(raw_eval) == 3
    assert (y[..., 4:] >= 0).all() and (y[..., 4:] <= 1).all()


def test_eval_boxes_are_in_input_pixels():
    model = DetectionModel("yolov5n.yaml", nc=2).eval()
    y, _ = model(torch.rand(1, 3, 128, 128))
    centres = y[0, :, :2]
    assert centres.min() > -32 and centres.max() < 128 + 32


def test_softmax_scores_for_ce_models_only():
    model = DetectionModel("yolov5n.yaml", nc=5).eval()
    x = torch.rand(1, 3, 64, 64)
    model.hyp = {"cls_loss_type": "bce"}
    y_sig, _ = model(x)
    assert model.class_act == "sigmoid"
    assert not torch.allclose(y_sig[..., 5:].sum(-1), torch.ones(1))
    model.hyp = {"cls_loss_type": "ce"}
    y_soft, _ = model(x)
    assert model.class_act == "softmax"
    torch.testing.assert_close(y_soft[..., 5:].sum(-1), torch.ones(y_soft.shape[:2]))
    torch.testing.assert_close(y_soft[..., :5], y_sig[..., :5])  # boxes and objectness unchanged


@pytest.mark.parametrize("class_act", ["sigmoid", "softmax"])
def test_decode_equals_yolov5_formula(class_act):
    head = Detect(nc=3, anchors=([10, 13, 16, 30, 33, 23],), ch=(8,)).eval()
    head.stride, head.class_act = torch.tensor([8.0]), class_act
    p = torch.randn(2, 3, 4, 5, 8)  # (bs, na, ny, nx, 5 + nc) raw outputs
    yv, xv = torch.meshgrid(torch.arange(4.0), torch.arange(5.0), indexing="ij")
    grid = torch.stack((xv, yv), -1)  # (ny, nx, 2) cell offsets
    anchors = (head.anchors[0] * 8).view(1, 3, 1, 1, 2)
    xy = (p[..., 0:2].sigmoid() * 2 - 0.5 + grid) * 8
    wh = (p[..., 2:4].sigmoid() * 2) ** 2 * anchors
    cls = p[..., 5:].softmax(-1) if class_act == "softmax" else p[..., 5:].sigmoid()
    expected = torch.cat((xy, wh, p[..., 4:5].sigmoid(), cls), -1)
    torch.testing.assert_close(head._decode(p, 0), expected, rtol=1e-6, atol=1e-6)  # SIMD vs strided: last bit


def test_class_activation_survives_save_and_load(tmp_path):
    model = DetectionModel("yolov5n.yaml", nc=3)
    model.hyp = {"cls_loss_type": "ce"}
    path = save_checkpoint({"model": model, "epoch": 0}, tmp_path / "ce.pt")
    loaded = attempt_load(path)
    assert loaded.class_act == "softmax"
    y, _ = loaded(torch.rand(1, 3, 64, 64))
    torch.testing.assert_close(y[..., 5:].sum(-1), torch.ones(y.shape[:2]))


def test_detect_defaults_to_sigmoid_for_old_checkpoints():
    head = Detect(nc=2, anchors=([10, 13, 16, 30, 33, 23],), ch=(8,))
    del head.__dict__["training"]  # simulate an instance dict without our attribute
    head.training = False
    assert "class_act" not in head.__dict__ and head.class_act == "sigmoid"


def test_fuse_keeps_outputs():
    model = DetectionModel("yolov5n.yaml", nc=2).eval()
    for m in model.modules():  # non-trivial BN statistics so fusing has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(1, 3, 64, 64)
    y0, _ = model(x)
    y1, _ = model.fuse()(x)
    torch.testing.assert_close(y1, y0, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_unknown_module_and_missing_config_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        DetectionModel("no_such_model.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nc: 2\nanchors: [[10,13, 16,30, 33,23]]\nbackbone: [[-1, 1, Foo, [16]]]\nhead: []\n")
    with pytest.raises(ConfigError, match="unknown module 'Foo'"):
        DetectionModel(bad)


def test_missing_or_corrupt_weights_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: file not found"):
        attempt_load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: cannot be read"):
        attempt_load(junk)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match=r"tensor.pt: holds a Tensor, not a checkpoint"):
        attempt_load(tmp_path / "tensor.pt")
    torch.save({"epoch": 3}, tmp_path / "dict.pt")
    with pytest.raises(CheckpointError, match=r"dict.pt: no 'model' or 'ema' network inside \(keys: \['epoch'\]\)"):
        attempt_load(tmp_path / "dict.pt")


def test_cli_parser_defaults():
    assert parse_opt([]).cfg == "yolov5s.yaml"


@needs_shared(OFFICIAL_WEIGHTS)
def test_official_checkpoint_unpickles_into_our_classes_and_runs():
    ckpt = load_checkpoint(OFFICIAL_WEIGHTS)
    assert type(ckpt["model"]) is DetectionModel
    assert type(ckpt["model"].model[-1]) is Detect
    rebuilt = DetectionModel(ckpt["model"].yaml)
    result = rebuilt.load_state_dict(ckpt["model"].float().state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model = attempt_load(OFFICIAL_WEIGHTS)
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert model.class_act == "sigmoid" and model.names[0] == "person"
    y, _ = model(torch.rand(1, 3, 320, 320))
    assert y.shape == (1, 6300, 85) and torch.isfinite(y).all()


def test_slim_heads_are_their_base_models_with_a_narrower_head():
    for base in ("yolov5-mobilenetv3s", "yolov5-shufflenetv2-0.5"):
        slim, full = DetectionModel(f"{base}-slim.yaml"), DetectionModel(f"{base}.yaml")
        assert [m.in_channels for m in slim.model[-1].m] == [48, 96, 192]  # 0.1875 x 256 / 512 / 1024
        assert [m.in_channels for m in full.model[-1].m] == [64, 128, 256]
        n_backbone = len(slim.yaml["backbone"])
        for a, b in zip(slim.model[:n_backbone], full.model[:n_backbone]):  # identical backbone layers
            assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
