#!/usr/bin/env bash
# Pre-registered confirmation of the focal gain control on fresh seeds (docs/ablation/CONFIRM.md): the built-in
# recipe with hyp.scratch-low.yaml and the focal gain control (hyp.focal.yaml since it passed), seeds 3-5.
# Resumable: run it again after a stop. Extra arguments go to loss_ablation.py (e.g. --hyps one file, to run the two in parallel).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python3 benchmarks/loss_ablation.py --data data/shapes.yaml \
  --hyps hyp.scratch-low.yaml hyp.focal.yaml \
  --seeds 3 4 5 --project runs/confirm/shapes --noplots \
  --ledger "${LEDGER:-docs/ablation/shapes_confirm.jsonl}" "$@"
