#!/usr/bin/env bash
# The GPU checks of issue #12 as one prepared command, for a session that is lent a CUDA machine: training
# images/s with AMP, validation ms/image in FP32 and FP16, an FP16 ONNX export with its parity check, and the NCCL
# path (torchrun with one process). Each step has its own time limit and log; a failed step does not stop the others.
# About 6 minutes on one H200. From the project root:
#   SHARED=/path/to/shared OUT=/path/to/logs bash benchmarks/gpu_checks.sh
# SHARED holds data/coco128 and weights/yolov5n_v6.1_coco80.pt (default ../shared); logs go to OUT (default runs/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
SHARED=$(realpath "${SHARED:-../shared}")
OUT=$(realpath -m "${OUT:-runs/gpu}")
DEVICE=${DEVICE:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
WEIGHTS="$SHARED/weights/yolov5n_v6.1_coco80.pt"
sed "s#^path: .*#path: $SHARED/data/coco128#" "$SHARED/data/coco128/coco128.yaml" > "$OUT/coco128.yaml"

step() {  # step NAME SECONDS COMMAND...: run it with a limit, log to OUT/NAME.log, print its exit status and tail
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - t0)) s"
  tail -n 6 "$OUT/$name.log" | tr '\r' '\n' | tail -n 6
}

step env 60 python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
step train_speed 150 python3 benchmarks/train_speed.py --device "$DEVICE" --batch-size 64 --workers 8 --threads 4 \
  --imgsz 640 --warmup 3 --batches 3
step train_speed_320 150 python3 benchmarks/train_speed.py --device "$DEVICE" --batch-size 16 --workers 8 --threads 4
step train_epoch 300 python3 train.py --device "$DEVICE" --epochs 1 --workers 8 --project "$OUT/train" --name amp \
  --exist-ok --noplots
step val_fp32 150 python3 val.py --weights "$WEIGHTS" --data "$OUT/coco128.yaml" --img 640 --batch 32 \
  --device "$DEVICE" --project "$OUT/val" --name fp32 --exist-ok
step val_fp16 150 python3 val.py --weights "$WEIGHTS" --data "$OUT/coco128.yaml" --img 640 --batch 32 \
  --device "$DEVICE" --half --project "$OUT/val" --name fp16 --exist-ok
cp "$WEIGHTS" "$OUT/yolov5n.pt"
step export_fp16 150 python3 export.py --weights "$OUT/yolov5n.pt" --include onnx --half --device "$DEVICE"
step ddp_nccl 300 torchrun --nproc_per_node 1 train.py --device "$DEVICE" --epochs 1 --workers 4 \
  --project "$OUT/train" --name ddp --exist-ok --noplots
grep -h "images/s\|all \|Speed:\|parity\|exit" "$OUT"/*.log | head -n 40
