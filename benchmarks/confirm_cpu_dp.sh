#!/usr/bin/env bash
# docs/ablation/CONFIRM_CPU_DP.md: the built-in baseline recipe with --cpu-dp 2 (arm A) and --cpu-dp 2 --bf16
# (arm B), seeds 0-2, one run at a time on 2 intra-op threads. Resumable; rows in docs/ablation/shapes_cpu_dp.jsonl.
# Arm B needs a CPU with fast bfloat16 (AVX-512 BF16 or AMX); ARMS=A runs arm A only. ARMS=F runs the follow-up on
# real data: the facemask ablation's baseline recipe with --cpu-dp 2, seeds 1-5, rows in docs/ablation/facemask_cpu_dp.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
SHAPES=(--data data/shapes.yaml --seeds 0 1 2 --ledger "${LEDGER:-docs/ablation/shapes_cpu_dp.jsonl}")
FACEMASK=(--data ../shared/data/facemask/facemask.yaml --seeds 1 2 3 4 5
  --ledger "${FACEMASK_LEDGER:-docs/ablation/facemask_cpu_dp.jsonl}" --weights ../shared/weights/yolov5n_v6.1_coco80.pt
  --optimizer auto --epochs 12 --imgsz 320)
for arm in ${ARMS:-A B}; do
  case $arm in
    A) recipe=("${SHAPES[@]}"); extra=(--cpu-dp 2); project=runs/ablation/cpu_dp ;;
    B) recipe=("${SHAPES[@]}"); extra=(--cpu-dp 2 --bf16); project=runs/ablation/cpu_dp_bf16 ;;
    F) recipe=("${FACEMASK[@]}"); extra=(--cpu-dp 2); project=runs/ablation/facemask_cpu_dp ;;
    *) echo "unknown arm $arm (A, B or F)" >&2; exit 2 ;;
  esac
  python3 benchmarks/loss_ablation.py --hyps hyp.scratch-low.yaml "${recipe[@]}" --project "$project" --noplots \
    "${extra[@]}" "$@"
done
