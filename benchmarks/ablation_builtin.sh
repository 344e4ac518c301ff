#!/usr/bin/env bash
# The built-in-data loss ablation reported in the README: every shipped hyp file plus two gain controls x seeds
# 0-2, each the default recipe (`python train.py --hyp ...`: yolov5n from scratch, 40 epochs at 320, batch 16,
# --optimizer auto) on the generated data/shapes.yaml. Resumable: run it again after a stop.
# Finished rows are also kept in docs/ablation/shapes.jsonl (committed; LEDGER= puts them elsewhere), so it resumes
# even where runs/ is gone. Runs with one intra-op thread (OMP_NUM_THREADS=1, override it from the caller) so that it
# can share a 2-core machine with the facemask one.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python3 benchmarks/loss_ablation.py --data data/shapes.yaml \
  --hyps hyp.scratch-low.yaml hyp.focal.yaml hyp.ce.yaml hyp.ce-balanced.yaml hyp.slide.yaml hyp.centernet.yaml \
  hyp.box-l1.yaml hyp.slide-ema.yaml benchmarks/hyps/hyp.slide-gain-control.yaml hyp.slide-focal-ce.yaml \
  benchmarks/hyps/hyp.focal-v1.yaml benchmarks/hyps/hyp.box-l1-v1.yaml benchmarks/hyps/hyp.centernet-v1.yaml \
  --seeds 0 1 2 --project runs/ablation/shapes --noplots \
  --ledger "${LEDGER:-docs/ablation/shapes.jsonl}" "$@"
