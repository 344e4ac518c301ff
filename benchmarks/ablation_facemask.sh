#!/usr/bin/env bash
# The facemask loss ablation reported in the README: 10 recipes and the focal gain control x seeds 1-5 (seed 0 was used to choose
# hyp.focal.yaml), fine-tuned from the official COCO yolov5n, 12 epochs at 320. Resumable: run it again after a stop.
# Finished rows are also kept in docs/ablation/facemask.jsonl (committed; LEDGER= puts them elsewhere), so it resumes
# even where runs/ is gone.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # one intra-op thread per run, as the ledger was measured
exec python3 benchmarks/loss_ablation.py --data ../shared/data/facemask/facemask.yaml \
  --hyps hyp.scratch-low.yaml hyp.focal.yaml hyp.ce.yaml hyp.ce-balanced.yaml hyp.slide.yaml hyp.centernet.yaml \
  hyp.box-l1.yaml hyp.slide-ema.yaml benchmarks/hyps/hyp.slide-gain-control.yaml hyp.slide-focal-ce.yaml \
  benchmarks/hyps/hyp.focal-v1.yaml benchmarks/hyps/hyp.box-l1-v1.yaml benchmarks/hyps/hyp.centernet-v1.yaml \
  --seeds 1 2 3 4 5 --project runs/ablation/facemask \
  --weights ../shared/weights/yolov5n_v6.1_coco80.pt --optimizer auto --epochs 12 --imgsz 320 --noplots \
  --ledger "${LEDGER:-docs/ablation/facemask.jsonl}" "$@"
