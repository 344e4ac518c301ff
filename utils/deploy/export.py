"""TorchScript and ONNX export of a DetectionModel, with metadata, and an onnxruntime parity check.

Exported graphs return the decoded prediction alone (``Detect.export = True``): (bs, N, 5 + nc) with xywh in input
pixels, sigmoid objectness and class scores as the model's ``class_act`` (sigmoid, or softmax rows summing to 1).
Metadata (``stride``, ``names``, ``nc``, ``class_act``, ``imgsz``, ``batch``, ``dynamic``) travels inside the file,
read back by models/backend.py: TorchScript as a JSON ``config.txt`` extra file, ONNX as ``metadata_props``
(one value per key, written as upstream YOLOv5 writes them: ``str(value)``, names as a Python dict literal with int
keys), OpenVINO as ``<stem>.yaml`` beside the IR (the file upstream reads). So upstream YOLOv5 runs these files too.

ONNX uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it needs no ``onnxscript`` and
supports ``dynamic_axes``; the Detect head rebuilds its grids from the input shape, so a ``dynamic`` export accepts
any batch size and any image size that is a multiple of the stride.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from utils.errors import ConfigError
from utils.log import get_logger
from utils.paths import write_atomic

INPUT_NAME, OUTPUT_NAME = "images", "output0"
DEFAULT_OPSET = 17  # export.py --opset


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode with every Detect head's ``export`` flag set; restore the flags afterwards."""
    heads = [m for m in model.modules() if hasattr(m, "export") and hasattr(m, "anchors")]
    saved = [m.export for m in heads]
    was_training = model.training
    model.eval()
    for m in heads:
        m.export = True
    try:
        yield model
    finally:
        for m, flag in zip(heads, saved):
            m.export = flag
        model.train(was_training)


def export_metadata(model: nn.Module, im: torch.Tensor, dynamic: bool = False) -> dict:
    """The metadata stored in exported files: stride, names, nc, class_act, imgsz [h, w], batch, dynamic."""
    names = getattr(model, "names", None) or {}
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    return {
        "stride": int(max(model.stride.tolist())) if hasattr(model, "stride") else 32,
        "names": {int(k): str(v) for k, v in names.items()},
        "nc": int(getattr(model, "nc", len(names))),
        "class_act": str(getattr(model, "class_act", "sigmoid")),
        "imgsz": [int(im.shape[2]), int(im.shape[3])],
        "batch": int(im.shape[0]),
        "dynamic": bool(dynamic),
    }


def check_half(half: bool, include: Sequence[str]) -> None:
    """ConfigError, before any work, for an FP16 export to a format written in FP32 only (OpenVINO).

    TorchScript and ONNX are traced in FP16 on any device (on the CPU by PyTorch's half kernels, about as fast as
    float32 for one pass), so ``--half`` does not need a GPU.
    """
    if half and "openvino" in include:
        raise ConfigError("--include openvino: the IR is exported in FP32; export it without --half")


def check_opset(opset: int, include: Sequence[str]) -> None:
    """ConfigError, before any work, for an ONNX opset outside what torch.onnx can write."""
    from torch.onnx import _constants

    low, high = getattr(_constants, "ONNX_MIN_OPSET", 7), getattr(_constants, "ONNX_MAX_OPSET", 20)
    if "onnx" in include and not low <= opset <= high:  # the OpenVINO IR is converted from an opset-17 graph
        raise ConfigError(f"--opset {opset}: torch {torch.__version__} writes ONNX opsets {low} to {high} "
                          f"(default {DEFAULT_OPSET})")


def export_torchscript(model: nn.Module, im: torch.Tensor, file: Union[str, Path]) -> Path:
    """Trace the model on im and save it to file (.torchscript) with metadata in the 'config.txt' extra file."""
    file = Path(file)
    meta = export_metadata(model, im, dynamic=False)
    with export_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still supported
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, im, strict=False, check_trace=False)  # parity is tested instead
        traced.save(str(file), _extra_files={"config.txt": json.dumps(meta)})
    return file


def export_onnx(model: nn.Module, im: torch.Tensor, file: Union[str, Path], opset: int = DEFAULT_OPSET,
                dynamic: bool = False, simplify: bool = False) -> Path:
    """Export to ONNX at opset, with dynamic batch/height/width if dynamic; checked by onnx.checker; metadata added."""
    import onnx

    file = Path(file)
    axes = None
    if dynamic:
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 1: "anchors"}}
    with export_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter is marked legacy
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(model, (im,), str(file), opset_version=opset, do_constant_folding=True, dynamo=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes)
        except (RuntimeError, getattr(torch.onnx, "OnnxExporterError", RuntimeError)) as e:
            if opset == DEFAULT_OPSET:  # the opset every model of this project exports at: a bug, keep its trace
                raise
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ConfigError(f"--opset {opset}: this model cannot be exported at that opset ({first}); "
                              f"the default {DEFAULT_OPSET} works") from e
    proto = onnx.load(str(file))
    onnx.checker.check_model(proto)
    if simplify:
        proto = _simplify(proto, file)
    for key, value in export_metadata(model, im, dynamic).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)  # upstream reads names with eval(): int keys, not JSON's strings
    onnx.save(proto, str(file))
    return file


def export_openvino(model: nn.Module, im: torch.Tensor, weights: Union[str, Path], dynamic: bool = False,
                    int8_files: Optional[Sequence[str]] = None) -> Path:
    """Export to an OpenVINO IR folder ``<stem>_openvino_model/`` (``<stem>.xml`` + ``.bin`` + ``<stem>.yaml``).

    The graph goes through ONNX (the same graph as ``export_onnx``: decoded boxes, softmax inside for ce models) and
    ``openvino.convert_model``; the metadata (stride, names, class_act, imgsz, dynamic, nc, batch) is written both into
    the IR's rt_info and into ``<stem>.yaml``, which ``DetectMultiBackend`` reads (as upstream YOLOv5's does).
    Weights are stored in FP32. With ``int8_files`` (calibration images) the IR is quantized to INT8 by NNCF
    (utils/deploy/quantize.py) and written to ``<stem>_int8_openvino_model/`` instead, with ``int8: true`` and the
    image count in its metadata.
    """
    import openvino as ov
    import yaml

    from utils.deploy.quantize import quantize_openvino

    weights = Path(weights)
    folder = weights.with_name(f"{weights.stem}{'_int8' if int8_files else ''}_openvino_model")
    folder.mkdir(parents=True, exist_ok=True)
    onnx_file = export_onnx(model, im.float(), folder / f"{weights.stem}.onnx", dynamic=dynamic)
    ov_model = ov.convert_model(str(onnx_file))
    onnx_file.unlink()
    meta = export_metadata(model, im, dynamic)
    if int8_files:
        ov_model = quantize_openvino(ov_model, int8_files, meta["imgsz"], meta["stride"], meta["batch"],
                                     head_index=len(model.model) - 1)
        meta.update(int8=True, calibration_images=len(int8_files))
    for key, value in meta.items():
        ov_model.set_rt_info(json.dumps(value), ["model_info", key])
    xml = folder / f"{weights.stem}.xml"
    try:
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    except RuntimeError as e:  # a folder where the file goes, a read-only disk: OpenVINO says "Can't open"
        raise ConfigError(f"{xml}: cannot write the OpenVINO IR ({str(e).strip().splitlines()[-1][:160]})") from e
    write_atomic(xml.with_suffix(".yaml"), yaml.safe_dump(meta, sort_keys=False))
    return folder


def openvino_parity_detail(model: nn.Module, folder: Union[str, Path], im: torch.Tensor) -> dict[str, float]:
    """OpenVINO's max absolute differences from PyTorch, split into 'boxes' (input pixels) and 'scores'."""
    from models.backend import DetectMultiBackend

    y_ov = DetectMultiBackend(folder)(im.float().cpu()).numpy()
    with export_mode(model), torch.no_grad():
        y_pt = model(im).float().cpu().numpy()
    return split_difference(y_ov, y_pt)


def split_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Max |a - b| of two (bs, N, 5 + nc) outputs: 'boxes' over xywh, 'scores' over objectness and classes."""
    d = np.abs(a - b)
    return {"boxes": float(d[..., :4].max()), "scores": float(d[..., 4:].max())}


def _simplify(proto, file: Path):
    """Simplify an ONNX graph with onnxslim when installed; warn and return it unchanged otherwise."""
    try:
        import onnxslim
    except ImportError:
        get_logger().warning(f"WARNING {file.name}: --simplify skipped, onnxslim is not installed "
                             "(pip install onnxslim)")
        return proto
    try:
        slim = onnxslim.slim(proto)
    except Exception as e:  # onnxslim bug on an unusual graph: keep the valid unsimplified graph
        get_logger().warning(f"WARNING {file.name}: onnxslim failed ({type(e).__name__}: {e}); kept unsimplified")
        return proto
    return slim


def onnx_session(file: Union[str, Path], device: torch.device = torch.device("cpu"), threads: Optional[int] = None):
    """An onnxruntime InferenceSession on CPU, or on CUDA first when device is CUDA and the provider exists.

    threads: intra-op threads, with thread spinning off so that idle threads leave the cores to dataloader workers
    (default: onnxruntime's own choice, spinning on).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    elif device.type == "cuda":
        get_logger().warning(f"WARNING {Path(file).name}: onnxruntime has no CUDA provider here; running on CPU")
    return ort.InferenceSession(str(file), sess_options=opts, providers=providers)


def _parity_outputs(model: nn.Module, file: Union[str, Path], im: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(onnxruntime output, PyTorch output) of file and model on im, both float32 numpy (bs, N, 5 + nc)."""
    session = onnx_session(file, im.device)
    x = im.detach().cpu().numpy()
    if session.get_inputs()[0].type == "tensor(float16)":
        x = x.astype(np.float16)
    y_ort = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float32)
    with export_mode(model), torch.no_grad():
        y_pt = model(im).float().cpu().numpy()
    if y_ort.shape != y_pt.shape:
        raise ConfigError(f"ONNX {file}: output shape {y_ort.shape} differs from PyTorch {y_pt.shape}")
    return y_ort, y_pt


def check_onnx_parity(model: nn.Module, file: Union[str, Path], im: torch.Tensor) -> float:
    """Max absolute difference between the PyTorch output and the onnxruntime output of file on im."""
    y_ort, y_pt = _parity_outputs(model, file, im)
    return float(np.abs(y_ort - y_pt).max())


def onnx_parity_detail(model: nn.Module, file: Union[str, Path], im: torch.Tensor) -> dict[str, float]:
    """Max absolute differences split into 'boxes' (xywh, input pixels) and 'scores' (objectness and classes)."""
    return split_difference(*_parity_outputs(model, file, im))


def file_size_mb(file: Union[str, Path]) -> float:
    """Size of a file, or of the files in a folder (an OpenVINO IR), in MB (1e6 bytes)."""
    path = Path(file)
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files) / 1e6
