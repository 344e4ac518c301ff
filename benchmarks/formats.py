"""Export one checkpoint to every deployment format and validate each: does the deployed model score what the .pt does?

Usage:
    python benchmarks/formats.py --weights runs/train/exp/weights/best.pt              # built-in data, 320 px
    python benchmarks/formats.py --weights best.pt --data their.yaml --imgsz 640 --dynamic

The weights are copied into --project, exported there with export.py (batch 1; fixed size unless --dynamic), and
each file is validated by val.py on the data's val split at batch 1: PyTorch (``--engine torch``), TorchScript,
ONNX (onnxruntime), OpenVINO and OpenVINO INT8 (calibrated on --int8-images of the data's train split, so the
validation images are not among them). A format that fails to export or validate gets a row with the reason instead of
stopping the table. Prints a Markdown table and writes it, with a CSV, to --project.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import export  # noqa: E402
import val  # noqa: E402
from utils.deploy.export import file_size_mb  # noqa: E402
from utils.errors import ConfigError, SlideYoloError  # noqa: E402

FORMATS = ("pytorch", "torchscript", "onnx", "openvino", "openvino-int8")
COLUMNS = ("format", "file", "size_mb", "export_s", "mAP50", "mAP50-95", "inference_ms", "status")


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Export to every format and validate each")
    p.add_argument("--weights", type=str, required=True, help="model.pt to export")
    p.add_argument("--data", type=str, default=str(ROOT / "data/shapes.yaml"), help="dataset.yaml to validate on")
    p.add_argument("--imgsz", type=int, default=320, help="export and validation size")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS, help="formats to measure")
    p.add_argument("--dynamic", action="store_true", help="dynamic-shape ONNX/OpenVINO (pads to the stride only)")
    p.add_argument("--int8-images", type=int, default=300, help="openvino-int8: calibration images (train split)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (torch, and so onnxruntime and OpenVINO)")
    p.add_argument("--workers", type=int, default=2, help="validation dataloader workers")
    p.add_argument("--project", type=str, default=str(ROOT / "runs/formats"), help="folder for files and tables")
    return p.parse_args(argv)


def export_file(fmt: str, weights: Path, opt: argparse.Namespace) -> tuple[Path, float]:
    """(exported file or folder, seconds) for one format; the .pt itself for pytorch."""
    if fmt == "pytorch":
        return weights, 0.0
    t = time.perf_counter()
    int8 = fmt == "openvino-int8"
    fmt = "openvino" if int8 else fmt
    files = export.run(weights=str(weights), imgsz=(opt.imgsz,), include=(fmt,),
                       dynamic=opt.dynamic and fmt != "torchscript", int8=int8, data=opt.data if int8 else None,
                       int8_images=opt.int8_images)
    return Path(files[fmt]), time.perf_counter() - t


def measure(fmt: str, weights: Path, opt: argparse.Namespace) -> dict:
    """One table row: export, then validate at batch 1; a failure becomes the row's status."""
    row = dict.fromkeys(COLUMNS, "")
    row["format"] = fmt
    try:
        file, seconds = export_file(fmt, weights, opt)
        row.update(file=file.name, size_mb=f"{file_size_mb(file):.1f}", export_s=f"{seconds:.1f}")
        results, _, times = val.run(data=opt.data, weights=str(file), batch_size=1, imgsz=opt.imgsz, device="cpu",
                                    workers=opt.workers, plots=False, project=opt.project, name=f"val-{fmt}",
                                    exist_ok=True, engine="torch" if fmt == "pytorch" else "auto")
        row.update({"mAP50": f"{results[2]:.4f}", "mAP50-95": f"{results[3]:.4f}",
                    "inference_ms": f"{times[1]:.1f}", "status": "ok"})
    except Exception as e:  # any exporter's or runtime's failure is this format's row, not the table's end
        row["status"] = f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
    return row


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows])


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    """Measure every format; print and save the table; returns one dict per format."""
    opt = parse_opt(argv)
    src = Path(opt.weights)
    if not src.is_file() or src.suffix != ".pt":
        raise ConfigError(f"formats: --weights {src}: expected an existing .pt file")
    torch.set_num_threads(opt.threads)
    project = Path(opt.project)
    project.mkdir(parents=True, exist_ok=True)
    weights = project / src.name
    if weights.resolve() != src.resolve():
        shutil.copy2(src, weights)  # exports are written beside the weights: keep them out of the run folder
    rows = [measure(fmt, weights, opt) for fmt in tqdm(opt.formats, desc="formats")]
    table = markdown(rows)
    print(f"\n{src}, {opt.imgsz} px, batch 1, {opt.threads} threads (torch, onnxruntime and OpenVINO), "
          f"torch {torch.__version__}\n\n{table}")
    (project / "formats.md").write_text(table + "\n")
    with (project / "formats.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


if __name__ == "__main__":
    try:
        main()
    except SlideYoloError as e:
        print(f"formats.py: error: {e}", file=sys.stderr)
        sys.exit(1)
