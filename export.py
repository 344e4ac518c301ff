"""Export a trained .pt model to TorchScript, ONNX and/or OpenVINO, written next to the weights (best.pt -> best.onnx).

Usage:
    python export.py --weights runs/train/exp/weights/best.pt --include torchscript onnx
    python export.py --weights best.pt --include onnx --dynamic --simplify
    python export.py --weights best.pt --include openvino --int8 --data data.yaml   # INT8, calibrated on 'train'

Exported files carry stride, class names and the class activation (sigmoid / softmax), so detect.py and val.py read
them with nothing re-specified. After an ONNX export the file is run once through onnxruntime and the largest
difference from the PyTorch output is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from utils.checkpoint import attempt_load, load_checkpoint
from utils.cli import DefaultsHelpFormatter
from utils.data.data_config import check_dataset
from utils.data.synth import CLASS_NAMES
from utils.deploy.export import (
    DEFAULT_OPSET,
    check_half,
    check_opset,
    export_onnx,
    export_openvino,
    export_torchscript,
    file_size_mb,
    onnx_parity_detail,
    openvino_parity_detail,
)
from utils.deploy.quantize import calibration_files, trained_data
from utils.errors import ConfigError, SlideYoloError
from utils.img_size import check_img_size
from utils.log import colorstr, get_logger
from utils.paths import ROOT
from utils.torch_utils import select_device

DEFAULT_WEIGHTS = ROOT / "runs" / "train" / "exp" / "weights" / "best.pt"  # what `python train.py` leaves

FORMATS = ("torchscript", "onnx", "openvino")


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (YOLOv5 names and defaults)."""
    parser = argparse.ArgumentParser(description="Export a .pt model to TorchScript / ONNX / OpenVINO",
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--weights", type=str, default=str(DEFAULT_WEIGHTS), help="model.pt path")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640, 640], help="image (h, w)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of the example input")
    parser.add_argument("--device", default="cpu", help="cuda device, i.e. 0 or cpu")
    parser.add_argument("--half", action="store_true", help="FP16 half-precision export (TorchScript, ONNX)")
    parser.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch, height and width")
    parser.add_argument("--simplify", action="store_true", help="ONNX: simplify the graph with onnxslim")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX: opset version")
    parser.add_argument("--include", nargs="+", default=["torchscript"], type=str.lower, choices=FORMATS,
                        help="formats to export")
    parser.add_argument("--int8", action="store_true", help="OpenVINO: INT8 quantization with NNCF")
    parser.add_argument("--data", type=str, default=None,
                        help="INT8: dataset YAML whose train images calibrate (default: the one trained on)")
    parser.add_argument("--int8-images", type=int, default=300, help="INT8: number of calibration images")
    opt = parser.parse_args(argv)
    opt.imgsz = opt.imgsz * 2 if len(opt.imgsz) == 1 else opt.imgsz
    return opt


def run(weights: str = str(DEFAULT_WEIGHTS), imgsz: Sequence[int] = (640, 640), batch_size: int = 1,
        device: str = "cpu", include: Sequence[str] = ("torchscript",), half: bool = False, dynamic: bool = False,
        simplify: bool = False, opset: int = DEFAULT_OPSET, int8: bool = False, data: Optional[str] = None,
        int8_images: int = 300) -> dict[str, Path]:
    """Export weights to each format in include; returns {format: exported file}."""
    log, t0 = get_logger(), time.time()
    weights = Path(weights)
    dev = select_device(device)
    check_half(half, include)
    check_opset(opset, include)
    if weights.is_file() and not os.access(weights.parent, os.W_OK):
        raise ConfigError(f"{weights.parent}: not writable, and exports are written next to the weights; copy "
                          f"{weights.name} into a folder you can write to and export it there")
    calib_data, calib = _int8_calibration(weights, include, data, int8_images) if int8 else (None, None)
    imgsz = list(imgsz) * 2 if len(imgsz) == 1 else list(imgsz)
    model = attempt_load(weights, device=dev, fuse=True)
    for p in model.parameters():
        p.requires_grad = False
    val_args = _int8_val_args(calib_data, model, weights) if int8 else _trained_val_args(weights, model)
    imgsz = check_img_size(imgsz, int(max(model.stride.tolist())))  # rounded up with a warning, as val/detect do
    im = torch.zeros(batch_size, 3, *imgsz, device=dev)
    if half:
        model, im = model.half(), im.half()
    model.eval()
    with torch.no_grad():
        model(im)  # dry run: builds grids, catches shape errors before exporting
    log.info(f"\n{colorstr('PyTorch:')} starting from {weights} with input {tuple(im.shape)} "
             f"({file_size_mb(weights):.1f} MB, class_act {model.class_act})")
    files = {}
    if "torchscript" in include:
        files["torchscript"] = _timed("TorchScript", export_torchscript, model, im, weights.with_suffix(".torchscript"))
    if "onnx" in include:
        files["onnx"] = _timed("ONNX", export_onnx, model, im, weights.with_suffix(".onnx"), opset=opset,
                               dynamic=dynamic, simplify=simplify)
        d = onnx_parity_detail(model, files["onnx"], im)
        log.info(f"{colorstr('ONNX:')} onnxruntime vs PyTorch max abs difference: boxes {d['boxes']:.3g} px, "
                 f"scores {d['scores']:.3g}")
    if "openvino" in include:
        label = "OpenVINO INT8" if calib else "OpenVINO"
        files["openvino"] = _timed(label, export_openvino, model, im, weights, dynamic=dynamic, int8_files=calib)
        if not calib:  # INT8 rounding moves raw outputs by design: its accuracy is what val.py measures
            d = openvino_parity_detail(model, files["openvino"], im)
            log.info(f"{colorstr(label + ':')} vs PyTorch max abs difference: boxes {d['boxes']:.3g} px, "
                     f"scores {d['scores']:.3g}")
    _summary(files, weights, imgsz, dynamic, time.time() - t0, val_args)
    return files


def _int8_calibration(weights: Path, include: Sequence[str], data: Optional[str], n: int) -> tuple[str, list[str]]:
    """(data YAML, calibration image paths) for --int8, checked before any export work; ConfigError outside OpenVINO."""
    if "openvino" not in include:
        raise ConfigError("--int8 quantizes the OpenVINO IR: add --include openvino")
    given = bool(data)
    if not given:  # the checkpoint's training options name its data YAML
        data = trained_data(load_checkpoint(weights, mmap=True).get("opt"), weights)
    files = calibration_files(data, n)
    get_logger().info(f"{colorstr('OpenVINO INT8:')} calibrating on {len(files)} images of {data} 'train'"
                      + ("" if given else f" (the data {weights.name} was trained on)"))
    return data, files


def _int8_val_args(data: Optional[str], model: torch.nn.Module, weights: Path) -> str:
    """The val.py arguments for the printed Validate line of an INT8 export: the calibration data YAML, or nothing
    (with a warning) when its class count is not the model's: calibration reads images only, but val.py needs the
    model's classes."""
    if not data:
        return ""
    nc = len(check_dataset(data, only=["train"])["names"])
    if nc != int(getattr(model, "nc", nc)):
        get_logger().warning(f"WARNING {data} names {nc} classes and {weights.name} predicts {model.nc}: fine for "
                             "calibration (images only), but validate the INT8 model on data with its classes")
        return ""
    return f" --data {data}"


def _trained_val_args(weights: Path, model: torch.nn.Module) -> str:
    """The val.py arguments for the printed Validate line of a .pt (val.py's default is the built-in data): the data
    YAML it was trained on when that is here with the model's classes (and --single-cls for a --single-cls run),
    nothing for the built-in data, else a placeholder for the user's data YAML."""
    if weights.suffix != ".pt":
        return ""
    try:
        opt = load_checkpoint(weights, mmap=True).get("opt")
    except SlideYoloError:
        return ""
    opt = opt if isinstance(opt, dict) else {}
    single, nc_model = " --single-cls" if opt.get("single_cls") else "", int(getattr(model, "nc", 0))
    try:
        data = trained_data(opt or None, weights)
        if Path(data).resolve() == (ROOT / "data/shapes.yaml").resolve():
            return single
        nc = 1 if single else len(check_dataset(data, autogenerate=False, only=["val"])["names"])
    except SlideYoloError:  # no training options, or the data YAML or its val split is not on this machine
        return "" if nc_model == len(CLASS_NAMES) and not opt.get("data") else " --data <its data.yaml>" + single
    return f" --data {data}{single}" if nc == nc_model else " --data <its data.yaml>" + single


def _timed(label: str, fn: Callable[..., Path], *args, **kwargs) -> Path:
    """Call an exporter, log its duration and the file size; returns the file."""
    t = time.time()
    try:
        file = fn(*args, **kwargs)
    except OSError as e:  # a read-only disk, a folder where the file goes, a full disk
        raise ConfigError(f"{e.filename or label}: cannot write the {label} export ({e.strerror or e})") from e
    get_logger().info(f"{colorstr(label + ':')} export success {time.time() - t:.1f}s, saved as {file} "
                      f"({file_size_mb(file):.1f} MB)")
    return file


def _summary(files: dict[str, Path], weights: Path, imgsz: list[int], dynamic: bool, seconds: float,
             val_args: str = "") -> None:
    """Log where results went and a detect/val command to try them (val.py takes one square size)."""
    if not files:
        return
    f = next(reversed(files.values()))
    h, w = imgsz
    size = "" if imgsz == [640, 640] else f" --imgsz {h}" if h == w else f" --imgsz {h} {w}"
    if h == w or dynamic:
        check = f"python val.py --weights {f}" + ("" if max(h, w) == 640 else f" --imgsz {max(h, w)}")
        check += val_args
    else:
        check = "val.py letterboxes to squares: export at one size (--imgsz N) or with --dynamic to validate"
    folder = colorstr("bold", str(weights.parent.resolve()))
    get_logger().info(f"\nExport complete ({seconds:.1f}s)\nResults saved to {folder}"
                      f"\nDetect:   python detect.py --weights {f}{size}\nValidate: {check}")


def main(opt: argparse.Namespace) -> dict[str, Path]:
    """Run the export from parsed options."""
    return run(**vars(opt))


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point: run from command-line arguments; user-facing errors exit with one line, no traceback."""
    try:
        main(parse_opt(argv))
    except SlideYoloError as e:
        sys.exit(f"export.py: {e}")


if __name__ == "__main__":
    cli()
