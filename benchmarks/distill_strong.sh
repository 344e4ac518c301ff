#!/usr/bin/env bash
# Issue #11: a MobileNetV3-Small student on the default recipe, distilled from a stronger teacher than the README's
# first table: yolov5n trained with hyp.focal.yaml on the built-in data, seed 0 (fixed before any student ran).
# Usage: bash benchmarks/distill_strong.sh teacher                # trains the teacher (once)
#        bash benchmarks/distill_strong.sh student SEED...        # one distilled student per seed
#        bash benchmarks/distill_strong.sh student-focal SEED...  # the same with the student on hyp.focal.yaml
#          (pre-registered in docs/ablation/DISTILL_FOCAL.md; rows kept in docs/ablation/distill.jsonl, LEDGER=)
# Both go through benchmarks/loss_ablation.py, so a finished run is skipped, an interrupted one resumes, and
# DIR/ablation.md has each run's figures and wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
TEACHER=$PWD/runs/distill/teacher/hyp.focal/seed0/weights/best.pt

case "${1:-}" in
  teacher) exec python3 benchmarks/loss_ablation.py --hyps hyp.focal.yaml --seeds 0 --project runs/distill/teacher --noplots ;;
  student|student-focal)  # the default hyp file, or hyp.focal.yaml with its rows kept in a ledger
    [ -f "$TEACHER" ] || { echo "no teacher at $TEACHER: run '$0 teacher' first" >&2; exit 2; }
    if [ "$1" = student ]; then args=(--hyps hyp.scratch-low.yaml --project runs/distill/kd-strong)
    else args=(--hyps hyp.focal.yaml --project runs/distill/kd-strong-focal --ledger "${LEDGER:-docs/ablation/distill.jsonl}")
    fi
    shift
    exec python3 benchmarks/loss_ablation.py "${args[@]}" --seeds "$@" --noplots --cfg yolov5-mobilenetv3s.yaml \
      --teacher "$TEACHER" ;;
  *) echo "usage: $0 teacher | student SEED... | student-focal SEED..." >&2; exit 2 ;;
esac
