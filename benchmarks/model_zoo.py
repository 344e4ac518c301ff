"""Model zoo table: parameters, GFLOPs, CPU speed (PyTorch and onnxruntime) and accuracy after the default recipe.

Usage:
    python benchmarks/model_zoo.py                                   # yolov5n and the six light models
    python benchmarks/model_zoo.py yolov5s-ghost.yaml --epochs 0     # more models; --epochs 0: no training
    python benchmarks/model_zoo.py --epochs 40 --project runs/zoo    # accuracy after `python train.py --cfg ...`

For every model, in one run: parameters and GFLOPs at each --sizes; median ms per image of the fused model in
PyTorch eager and in onnxruntime at each size (--threads intra-op threads, after warm-up, the backends and models
timed in turn) and the first model's onnxruntime time over each model's (speed-up, > 1: faster); then, unless
--epochs 0, mAP50 and mAP50-95 on the built-in validation split after training it with the default recipe
(train.py's defaults with --cfg, --epochs, --seed). Training runs resume: a model whose run in --project has
finished is read, not trained again. Prints a markdown table and writes it to --project/model_zoo.md (and, with
accuracy, model_zoo.png: mAP50 against onnxruntime ms per image at each size).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.infer_speed import time_ms  # noqa: E402
from models.yolo import DetectionModel  # noqa: E402
from utils.deploy.export import export_mode, export_onnx, onnx_session  # noqa: E402
from utils.plots import pyplot_agg, save_figure  # noqa: E402
from utils.torch_utils import count_flops  # noqa: E402

DEFAULT_MODELS = ("yolov5n.yaml", "yolov5-shufflenetv2.yaml", "yolov5-mobilenetv3s.yaml",
                  "yolov5-shufflenetv2-0.5.yaml", "yolov5n-ghost.yaml", "yolov5-mobilenetv3s-slim.yaml",
                  "yolov5-shufflenetv2-0.5-slim.yaml")


def parse_opt(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Parameters, GFLOPs, CPU ms and mAP per model")
    p.add_argument("models", nargs="*", default=list(DEFAULT_MODELS), help="model YAMLs")
    p.add_argument("--sizes", nargs="+", type=int, default=[320, 640], help="square input sizes to time")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=40, help="default-recipe epochs for accuracy (0: skip)")
    p.add_argument("--data", default="data/shapes.yaml", help="training data for the accuracy columns")
    p.add_argument("--imgsz", type=int, default=None, help="training size (train.py's default when unset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--project", default=str(ROOT / "runs" / "zoo"), help="folder of the training runs and table")
    return p.parse_args(argv)


def speeds(models: dict[str, torch.nn.Module], size: int, threads: int, warmup: int, runs: int) -> dict:
    """{(model, backend): median ms} at one input size, every model and backend timed in turn."""
    im = torch.rand(1, 3, size, size)
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            # spinning off (onnx_session with threads): idle onnxruntime threads must not steal the next case's cores
            sess = onnx_session(export_onnx(model, im, Path(tmp) / f"{Path(name).stem}.onnx"), threads=threads)
            cases[(name, "torch")] = lambda m=model: m(im)
            cases[(name, "onnxruntime")] = lambda s=sess: s.run(None, {"images": im.numpy()})
        with torch.inference_mode(), contextlib.ExitStack() as stack:
            for m in models.values():
                stack.enter_context(export_mode(m))
            times = time_ms(cases, warmup, runs)
    return {k: statistics.median(v) for k, v in times.items()}


def accuracy(cfg: str, opt: argparse.Namespace) -> tuple[float, float]:
    """(mAP50, mAP50-95) of best.pt after the default recipe with this model, from its run's per_class.csv."""
    import train

    folder = Path(opt.project) / Path(cfg).stem
    table = folder / "per_class.csv"
    if not table.is_file():
        last = folder / "weights" / "last.pt"
        kwargs = {"resume": str(last)} if last.is_file() else {
            "cfg": cfg, "data": opt.data, "epochs": opt.epochs, "seed": opt.seed, "project": str(folder.parent),
            "name": folder.name, "exist_ok": True, "noplots": True, **({"imgsz": opt.imgsz} if opt.imgsz else {})}
        train.run(**kwargs)
    with table.open() as f:
        overall = next(r for r in csv.DictReader(f) if r["class"] == "all")
    return float(overall["mAP50"]), float(overall["mAP50-95"])


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    """Measure every model; print and save the table; returns one dict per model."""
    opt = parse_opt(argv)
    torch.set_num_threads(opt.threads)
    models = {cfg: DetectionModel(cfg).eval() for cfg in opt.models}
    rows = [{"model": Path(cfg).stem, "params": sum(p.numel() for p in m.parameters()),
             **{f"GFLOPs {s}": count_flops(m, s) for s in opt.sizes}} for cfg, m in models.items()]
    for m in models.values():  # parameters and GFLOPs as trained (unfused), timings as deployed (fused)
        m.fuse().requires_grad_(False)
    for s in opt.sizes:
        ms = speeds(models, s, opt.threads, opt.warmup, opt.runs)
        for row, cfg in zip(rows, models):
            row[f"torch ms {s}"], row[f"onnxruntime ms {s}"] = ms[(cfg, "torch")], ms[(cfg, "onnxruntime")]
        for row in rows:  # the first model (yolov5n by default) is the reference: > 1 means faster than it
            row[f"onnxruntime speed-up {s}"] = rows[0][f"onnxruntime ms {s}"] / row[f"onnxruntime ms {s}"]
    if opt.epochs > 0:
        for row, cfg in zip(rows, models):
            row["mAP50"], row["mAP50-95"] = accuracy(cfg, opt)
    text = table(rows, opt)
    print(text)
    Path(opt.project).mkdir(parents=True, exist_ok=True)
    (Path(opt.project) / "model_zoo.md").write_text(text)
    if opt.epochs > 0:
        plot_zoo(rows, opt.sizes, Path(opt.project) / "model_zoo.png")
    return rows


def plot_zoo(rows: list[dict], sizes: Sequence[int], path: Path) -> Path:
    """Speed against accuracy: mAP50 over onnxruntime ms per image, one panel per input size, one dot per model."""
    plt = pyplot_agg()
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for r in rows:
            ax.scatter(r[f"onnxruntime ms {size}"], r["mAP50"], s=40)
            ax.annotate(r["model"], (r[f"onnxruntime ms {size}"], r["mAP50"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        ax.set(xlabel=f"onnxruntime ms per image at {size} (lower is faster)", ylabel="mAP50", title=f"{size} px")
        ax.margins(x=0.3, y=0.1)  # room for the labels
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(plt, fig, path, dpi=150)


def table(rows: list[dict], opt: argparse.Namespace) -> str:
    """The markdown table, with the machine and settings."""
    cols = [k for k in rows[0] if k != "model"]
    lines = [f"CPU {platform.processor() or platform.machine()}, {opt.threads} threads, torch {torch.__version__}, "
             f"batch 1, {opt.warmup} warm-up + {opt.runs} timed runs (median)"
             + (f"; accuracy after {opt.epochs} epochs of the default recipe on {opt.data}" if opt.epochs else ""),
             "", "| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:,}" if c == "params" else f"{r[c]:.3f}" if c.startswith("mAP") else
                 f"{r[c]:.2f}x" if "speed-up" in c else f"{r[c]:.2f}" for c in cols]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
