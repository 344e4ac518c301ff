"""Scale of each loss term at the start of training: value and gradient size per hyp file, against the first one.

Usage:
    python benchmarks/loss_scale.py --hyps hyp.scratch-low.yaml hyp.focal.yaml hyp.slide.yaml hyp.centernet.yaml
    python benchmarks/loss_scale.py --data ../shared/data/facemask/facemask.yaml \
        --weights ../shared/weights/yolov5n_v6.1_coco80.pt --hyps hyp.scratch-low.yaml hyp.focal.yaml

For --batches batches of the (unaugmented) training split, the model's raw outputs p are computed once; each hyp
file's ComputeLoss then gives the box, obj and cls items (gains applied, as in training) and sum |d item / d p|,
the size of the gradient that term sends into the network. The table prints both, and their ratio to the first hyp
file's. This is how the obj gains of the shipped hyp files were matched to YOLOv5's BCE (see the README).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.data.data_config import check_dataset  # noqa: E402
from utils.data.dataset import create_dataloader  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.loss_terms import class_balance_weights, class_counts  # noqa: E402
from utils.train.hyp import load_hyp  # noqa: E402
from utils.train.transfer import build_model, scale_loss_gains  # noqa: E402

TERMS = ("box", "obj", "cls")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="Loss values and gradient sizes per term at initialisation")
    p.add_argument("--data", default="data/shapes.yaml")
    p.add_argument("--cfg", default="yolov5n.yaml")
    p.add_argument("--weights", default="", help="start from a checkpoint (fine-tuning), else from scratch")
    p.add_argument("--hyps", nargs="+", required=True, help="hyp files; ratios are to the first")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def term_of(loss: ComputeLoss, leaves: list[torch.Tensor], targets: torch.Tensor, k: int) -> torch.Tensor:
    """One term (box, obj or cls) as a differentiable scalar: the loss with the other two gains set to 0."""
    saved = {t: loss.hyp[t] for t in TERMS}
    saved_l1 = loss.hyp["box_l1"]
    try:
        for j, t in enumerate(TERMS):
            loss.hyp[t] = saved[t] if j == k else 0.0
        loss.hyp["box_l1"] = saved_l1 if k == 0 else 0.0
        total, _ = loss(leaves, targets)
        return total / leaves[0].shape[0]
    finally:
        loss.hyp.update(saved)
        loss.hyp["box_l1"] = saved_l1


def main(argv: list[str] | None = None) -> list[dict]:
    """Print the table; returns one dict per hyp with its values and gradient sizes (summed over batches)."""
    opt = parse_opt(argv)
    torch.set_num_threads(opt.threads)
    torch.manual_seed(0)
    data = check_dataset(opt.data)
    model, _ = build_model(opt.cfg if not opt.weights else "", opt.weights, data["nc"], torch.device("cpu"))
    loader, dataset = create_dataloader(data["train"], opt.imgsz, opt.batch_size, 32, hyp=None, augment=False,
                                        workers=0, shuffle=True, seed=0, nc=data["nc"], names=data["names"])
    counts = class_counts(dataset.labels, data["nc"])
    model.train()
    batches = []
    for i, (imgs, targets, *_) in enumerate(loader):
        if i >= opt.batches:
            break
        with torch.no_grad():
            batches.append(([x.detach() for x in model(imgs.float() / 255)], targets))
    rows = []
    for h in opt.hyps:
        hyp = load_hyp(h)
        if hyp["cls_weights"] != "none":
            hyp["cls_weights_values"] = class_balance_weights(counts, hyp["cls_weights"], hyp["cls_weights_beta"])
        model.hyp = scale_loss_gains(hyp, model.model[-1].nl, data["nc"], opt.imgsz)
        loss = ComputeLoss(model)
        vals, grads = [0.0] * 3, [0.0] * 3
        for p, targets in batches:
            for k in range(3):
                leaves = [x.clone().requires_grad_(True) for x in p]
                comp = term_of(loss, leaves, targets, k)
                g = torch.autograd.grad(comp, leaves, allow_unused=True)
                vals[k] += float(comp.detach()) / len(batches)
                grads[k] += sum(float(x.abs().sum()) for x in g if x is not None) / len(batches)
        rows.append({"hyp": Path(h).stem, "values": vals, "grads": grads})
    print_table(rows)
    return rows


def print_table(rows: list[dict]) -> None:
    """Values and gradient sizes per term, with ratios to the first row."""
    ref = rows[0]
    print(f"{'hyp':<24}" + "".join(f"{t + ' value':>14}{t + ' |grad|':>14}{'x ref':>8}" for t in TERMS))
    for r in rows:
        cells = []
        for k in range(3):
            ratio = r["grads"][k] / ref["grads"][k] if ref["grads"][k] else float("nan")
            cells.append(f"{r['values'][k]:>14.4g}{r['grads'][k]:>14.4g}{ratio:>8.2f}")
        print(f"{r['hyp']:<24}" + "".join(cells))


if __name__ == "__main__":
    main()
