#!/usr/bin/env bash
# Issue #11: a MobileNetV3-Small student on the default recipe, distilled from a stronger teacher than the README's
# first table: yolov5n trained with hyp.focal.yaml on the built-in data, seed 0 (fixed before any student ran).
# Usage: bash benchmarks/distill_strong.sh teacher          # trains the teacher (once)
#        bash benchmarks/distill_strong.sh student SEED...  # one distilled student per seed
# Resumable: a finished run is skipped, an interrupted one continues from its last.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
P=runs/distill
TEACHER=$P/teacher-focal-seed0/weights/best.pt

run() {  # run NAME TRAIN_ARGS...: one train.py run under $P/NAME, skipped when done, resumed when interrupted
  local name=$1; shift
  if [ -f "$P/$name/done" ]; then echo "$name: done"; return; fi
  local start=$SECONDS
  if [ -f "$P/$name/weights/last.pt" ]; then
    python3 train.py --resume "$P/$name/weights/last.pt"
  else
    python3 train.py --project "$P" --name "$name" --exist-ok --noplots "$@"
  fi
  echo "wall_s $((SECONDS - start))" >> "$P/$name/done"
}

case "${1:-}" in
  teacher) run teacher-focal-seed0 --hyp hyp.focal.yaml --seed 0 ;;
  student) shift
    [ -f "$TEACHER" ] || { echo "no teacher at $TEACHER: run '$0 teacher' first" >&2; exit 2; }
    for s in "$@"; do run "kd-strong-seed$s" --cfg yolov5-mobilenetv3s.yaml --seed "$s" --teacher "$TEACHER"; done ;;
  *) echo "usage: $0 teacher | student SEED..." >&2; exit 2 ;;
esac
