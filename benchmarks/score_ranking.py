"""How a detector's two scores rank its boxes: mAP50 scored as YOLOv5 does and by each score alone.

Usage:
    python benchmarks/score_ranking.py --data ../shared/data/facemask/facemask.yaml --imgsz 320 \
        --weights runs/a/weights/best.pt runs/b/weights/best.pt

YOLOv5 scores a box of class c as objectness x class probability. For each weights file the validation split is
scored three ways, with val.py's thresholds and metrics (utils/eval/evaluate.py): "obj x cls" (as trained and
as val.py reports), "cls only" (objectness set to 1: the class branch ranks the boxes) and "obj only" (each box
keeps its best class at probability 1: objectness ranks them). Two models that differ only in their objectness
loss should agree on "cls only" if the loss changed what the objectness ranks and not the rest of the network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.backend import DetectMultiBackend  # noqa: E402
from utils.data.data_config import check_dataset  # noqa: E402
from utils.data.dataset import create_dataloader  # noqa: E402
from utils.eval.evaluate import EvalConfig, evaluate  # noqa: E402

SCORINGS = ("obj x cls", "cls only", "obj only")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="mAP50 with each score alone, per weights file")
    p.add_argument("--data", default="data/shapes.yaml")
    p.add_argument("--weights", nargs="+", required=True)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def rescored(backend: DetectMultiBackend, scoring: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's (bs, N, 5 + nc) predictions with one score neutralised as ``scoring`` says."""
    def run(im: torch.Tensor) -> torch.Tensor:
        out = backend(im)
        y = (out[0] if isinstance(out, (list, tuple)) else out).clone()
        if scoring == "cls only":
            y[..., 4] = 1.0
        elif scoring == "obj only":
            best = y[..., 5:].argmax(-1, keepdim=True)
            y[..., 5:] = torch.zeros_like(y[..., 5:]).scatter_(-1, best, 1.0)
        return y
    return run


def main(argv: list[str] | None = None) -> list[dict]:
    """Print one row per weights file: mAP50 and mAP50-95 under each scoring."""
    opt = parse_opt(argv)
    torch.set_num_threads(opt.threads)
    data = check_dataset(opt.data)
    rows = []
    for w in opt.weights:
        backend = DetectMultiBackend(w, engine="torch")
        loader = create_dataloader(data["val"], opt.imgsz, opt.batch_size, backend.stride, pad=0.5, rect=True,
                                   workers=0, nc=data["nc"], names=data["names"])[0]
        cfg = EvalConfig(plots=False)
        row = {"weights": w}
        for s in SCORINGS:
            r = evaluate(rescored(backend, s), loader, data["names"], cfg, desc=f"{Path(w).parent.parent.name}: {s}")
            row[s] = (r.map50, r.map)
        rows.append(row)
    print(f"{'weights':<60}" + "".join(f"{s + ' mAP50 / 50-95':>28}" for s in SCORINGS))
    for row in rows:
        print(f"{row['weights']:<60}" + "".join(f"{row[s][0]:>19.3f} / {row[s][1]:.3f}" for s in SCORINGS))
    return rows


if __name__ == "__main__":
    main()
