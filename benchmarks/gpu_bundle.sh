#!/usr/bin/env bash
# Copy what the GPU scripts read from ../shared into .gpu/shared (git-ignored), because a device call sends the
# checkout and nothing beside it (the ../shared folder does not travel; .gpu does when the call names it in carry).
#   bash benchmarks/gpu_bundle.sh checks     # coco128 + the COCO yolov5n, for gpu_checks.sh (about 26 MB)
#   bash benchmarks/gpu_bundle.sh ablation   # facemask + the COCO yolov5n, for ablation_gpu.sh (about 35 MB)
# A device call is limited to 64 MiB of working tree in all, so bundle one at a time. Then, on the device:
#   SHARED=.gpu/shared OUT=$OUT bash benchmarks/gpu_checks.sh     (carry: [".gpu"])
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(realpath "${SHARED:-../shared}")
what=${1:?"usage: gpu_bundle.sh checks|ablation"}
case "$what" in
  checks) data=coco128 ;;
  ablation) data=facemask ;;
  *) echo "gpu_bundle.sh: unknown bundle '$what' (checks or ablation)" >&2; exit 2 ;;
esac
[ -d "$SRC/data/$data" ] || { echo "gpu_bundle.sh: $SRC/data/$data not found (set SHARED=)" >&2; exit 2; }
rm -rf .gpu/shared
mkdir -p .gpu/shared/data .gpu/shared/weights
cp -r "$SRC/data/$data" .gpu/shared/data/
cp "$SRC/weights/yolov5n_v6.1_coco80.pt" .gpu/shared/weights/
echo "$(du -sh .gpu | cut -f1) in .gpu/shared: data/$data, weights/yolov5n_v6.1_coco80.pt"
