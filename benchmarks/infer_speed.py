"""CPU inference speed of one model in PyTorch eager, TorchScript, onnxruntime and OpenVINO: median ms per image.

Usage:
    python benchmarks/infer_speed.py                          # randomly initialised yolov5n at 640, 2 threads
    python benchmarks/infer_speed.py --weights best.pt --threads 4 --runs 50
    python benchmarks/infer_speed.py --weights best.pt --int8-data data.yaml   # adds OpenVINO INT8

Weights (or a random model from --cfg when none are given; nothing is downloaded) are fused, exported to a temporary
folder and timed on the same random (1, 3, imgsz, imgsz) input after warm-up, in turn (round-robin). torch and
onnxruntime both use --threads intra-op threads.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from models.yolo import DetectionModel  # noqa: E402
from utils.checkpoint import attempt_load  # noqa: E402
from utils.deploy.export import export_mode, export_onnx, export_torchscript  # noqa: E402
from utils.errors import SlideYoloError  # noqa: E402


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Median CPU inference ms per image: eager, TorchScript, onnxruntime")
    p.add_argument("--weights", type=str, default=None, help="model.pt (default: random --cfg model)")
    p.add_argument("--cfg", type=str, default="yolov5n.yaml", help="model YAML when no --weights")
    p.add_argument("--imgsz", type=int, default=640, help="square input size")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and onnxruntime")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    p.add_argument("--runs", type=int, default=30, help="timed runs")
    p.add_argument("--int8-data", type=str, default=None,
                   help="data YAML: also time an OpenVINO INT8 export calibrated on its train images")
    p.add_argument("--int8-images", type=int, default=300, help="INT8 calibration images")
    return p.parse_args(argv)


def time_ms(cases: dict[str, Callable[[], object]], warmup: int, runs: int) -> dict[str, list[float]]:
    """Call each case warmup times untimed, then time them in turn (round-robin) runs times: {case: [ms, ...]}.

    Interleaving makes a change in machine load hit every backend alike instead of whichever ran at the time.
    """
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(runs):
        for k, fn in cases.items():
            t = time.perf_counter()
            fn()
            out[k].append((time.perf_counter() - t) * 1e3)
    return out


def build_model(weights: Optional[str], cfg: str) -> torch.nn.Module:
    """Fused FP32 eval model from weights, or a randomly initialised one from cfg."""
    if weights:
        return attempt_load(weights, device="cpu", fuse=True)
    return DetectionModel(cfg).fuse().eval()


def openvino_compiled(model: torch.nn.Module, im: torch.Tensor, folder: Path, threads: int,
                      int8_files: Optional[Sequence[str]] = None):
    """The model exported to OpenVINO (INT8 with calibration files) and compiled for the CPU with threads, or None
    without the package."""
    try:
        import openvino as ov
    except ImportError:
        return None
    from models.backend import OPENVINO_CPU_CONFIG
    from utils.deploy.export import export_openvino

    xml = next(export_openvino(model, im, folder / "m.pt", int8_files=int8_files).glob("*.xml"))
    return ov.Core().compile_model(str(xml), "CPU", {**OPENVINO_CPU_CONFIG, "INFERENCE_NUM_THREADS": threads})


def _int8_files(data: str, n: int) -> list[str]:
    """Calibration images for the INT8 case: n images of data's train split."""
    from utils.deploy.quantize import calibration_files

    return calibration_files(data, n)


def run(weights: Optional[str] = None, cfg: str = "yolov5n.yaml", imgsz: int = 640, threads: int = 2,
        warmup: int = 5, runs: int = 30, int8_data: Optional[str] = None, int8_images: int = 300) -> dict[str, float]:
    """Time the backends; returns {backend: median ms} and prints a markdown table."""
    import onnxruntime as ort

    torch.set_num_threads(threads)
    calibration = _int8_files(int8_data, int8_images) if int8_data else None  # a bad --int8-data fails first
    model = build_model(weights, cfg)
    for p in model.parameters():
        p.requires_grad = False
    im = torch.rand(1, 3, imgsz, imgsz)
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still supported
            ts = torch.jit.load(str(export_torchscript(model, im, Path(tmp) / "m.torchscript")))
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(export_onnx(model, im, Path(tmp) / "m.onnx")), so,
                                    providers=["CPUExecutionProvider"])
        x = im.numpy()
        ov_model = openvino_compiled(model, im, Path(tmp), threads)
        ov_int8 = openvino_compiled(model, im, Path(tmp), threads, calibration) if calibration else None
        with export_mode(model), torch.inference_mode():
            cases = {"PyTorch eager": lambda: model(im), "TorchScript": lambda: ts(im),
                     "onnxruntime": lambda: sess.run(None, {"images": x})}
            if ov_model is not None:
                cases["OpenVINO"] = lambda: ov_model(x)
            if ov_int8 is not None:
                cases["OpenVINO INT8"] = lambda: ov_int8(x)
            times = time_ms(cases, warmup, runs)
    result = {k: statistics.median(v) for k, v in times.items()}
    name = Path(weights).name if weights else f"{Path(cfg).stem} (random init)"
    print(f"\n{name} at {imgsz}x{imgsz}, batch 1, CPU {platform.processor() or platform.machine()}, "
          f"{threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"{warmup} warm-up + {runs} timed runs\n")
    print("| backend | median ms/img | min ms | vs eager |\n|---|---:|---:|---:|")
    for k, med in result.items():
        print(f"| {k} | {med:.1f} | {min(times[k]):.1f} | {result['PyTorch eager'] / med:.2f}x |")
    return result


def main(opt: argparse.Namespace) -> dict[str, float]:
    """Run the benchmark from parsed options."""
    return run(**vars(opt))


if __name__ == "__main__":
    try:
        main(parse_opt())
    except SlideYoloError as e:
        sys.exit(f"infer_speed.py: {e}")
