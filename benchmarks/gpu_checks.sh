#!/usr/bin/env bash
# The GPU checks of issue #12 as one prepared command, for a session that is lent a CUDA machine: training
# images/s with AMP, validation ms/image in FP32 and FP16, an FP16 ONNX export with its parity check, one AMP epoch
# of train.py and the NCCL path (torchrun with one process). Steps run in order of value, each with its own time
# limit, all inside BUDGET seconds (default 420, so one device command of 10 minutes holds it with room to spare); a
# failed step does not stop the others. From the project root, after `bash benchmarks/gpu_bundle.sh checks`:
#   SHARED=.gpu/shared OUT=/path/to/out bash benchmarks/gpu_checks.sh
# SHARED holds data/coco128 and weights/yolov5n_v6.1_coco80.pt (default ../shared). Work goes to runs/gpu; OUT gets
# two files (a device call returns at most 8): gpu_checks.txt (each step's command, exit status, seconds and the
# lines with figures) and gpu_logs.tar.gz (every step's whole log and the runs' results.csv).
set -uo pipefail
cd "$(dirname "$0")/.."
SHARED=$(realpath "${SHARED:-../shared}")
OUT=$(realpath -m "${OUT:-runs/gpu/out}")
WORK=runs/gpu
DEVICE=${DEVICE:-0}
BUDGET=${BUDGET:-420}
mkdir -p "$OUT" "$WORK/logs"
export PYTHONUNBUFFERED=1
WEIGHTS="$SHARED/weights/yolov5n_v6.1_coco80.pt"
sed "s#^path: .*#path: $SHARED/data/coco128#" "$SHARED/data/coco128/coco128.yaml" > "$WORK/coco128.yaml"
SUMMARY="$OUT/gpu_checks.txt"
: > "$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: run with min(SECONDS, budget left), log to WORK/logs/NAME.log
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 15 ]; then echo "== $name: skipped, budget spent" | tee -a "$SUMMARY"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit} s): $*" | tee -a "$SUMMARY"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$SUMMARY"
  tr '\r' '\n' < "$WORK/logs/$name.log" | grep -a "images/s\|ms/image\| all \|Speed:\|max abs difference\|peak" \
    | tail -n 8 | tee -a "$SUMMARY"
  [ "$rc" -ne 0 ] && tr '\r' '\n' < "$WORK/logs/$name.log" | tail -n 3 | tee -a "$SUMMARY"
  return 0
}

step env 30 python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
step val_fp32 60 python3 val.py --weights "$WEIGHTS" --data "$WORK/coco128.yaml" --img 640 --batch 32 \
  --device "$DEVICE" --project "$WORK/val" --name fp32 --exist-ok
step val_fp16 60 python3 val.py --weights "$WEIGHTS" --data "$WORK/coco128.yaml" --img 640 --batch 32 \
  --device "$DEVICE" --half --project "$WORK/val" --name fp16 --exist-ok
step train_speed 90 python3 benchmarks/train_speed.py --device "$DEVICE" --batch-size 64 --workers 8 --threads 4 \
  --imgsz 640 --warmup 3 --batches 3
cp "$WEIGHTS" "$WORK/yolov5n.pt"
step export_fp16 45 python3 export.py --weights "$WORK/yolov5n.pt" --include onnx --half --device "$DEVICE"
step train_epoch 90 python3 train.py --device "$DEVICE" --epochs 1 --workers 8 --project "$WORK/train" --name amp \
  --exist-ok --noplots
step ddp_nccl 90 torchrun --nproc_per_node 1 train.py --device "$DEVICE" --epochs 1 --workers 4 \
  --project "$WORK/train" --name ddp --exist-ok --noplots
step train_speed_320 45 python3 benchmarks/train_speed.py --device "$DEVICE" --batch-size 16 --workers 8 --threads 4
tar -czf "$OUT/gpu_logs.tar.gz" "$WORK/logs" $(find "$WORK/train" -name results.csv 2>/dev/null)
echo "gpu_checks: $((SECONDS)) s in all; $SUMMARY and $OUT/gpu_logs.tar.gz"
