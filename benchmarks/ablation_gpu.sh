#!/usr/bin/env bash
# The facemask loss ablation on a CUDA machine, at 640 with more epochs (issue #9: "where a GPU is available, also
# run it at 640 with more epochs, and report both"): the ten recipes of ablation_facemask.sh x seeds 1-5, 30 epochs
# at 640, fine-tuned from the COCO yolov5n, JOBS runs at once on one GPU. A device session is short and its machine
# starts bare, so the call stops itself after LIMIT seconds and packs what has finished (tables, each finished run's
# csv/yaml/json files, no weights) into OUT/ablation_gpu.tar.gz; give that file back as RESUME to the next call and
# the runner skips the finished runs. From the project root, after `bash benchmarks/gpu_bundle.sh ablation`
# (a device call sends the checkout only; name .gpu in its carry):
#   SHARED=.gpu/shared OUT=/path/to/out [RESUME=ablation_gpu.tar.gz] [LIMIT=480] [JOBS=8] bash benchmarks/ablation_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
SHARED=$(realpath "${SHARED:-../shared}")
OUT=$(realpath -m "${OUT:-runs/gpu}")
PROJECT=runs/ablation/facemask-gpu640
mkdir -p "$OUT" "$PROJECT"
if [ -n "${RESUME:-}" ]; then tar -xzf "$RESUME"; fi
sed "s#^path: .*#path: $SHARED/data/facemask#" "$SHARED/data/facemask/facemask.yaml" > "$OUT/facemask.yaml"
export PYTHONUNBUFFERED=1
timeout "${LIMIT:-480}" python3 benchmarks/loss_ablation.py --data "$OUT/facemask.yaml" \
  --hyps hyp.scratch-low.yaml hyp.focal.yaml hyp.ce.yaml hyp.ce-balanced.yaml hyp.slide.yaml hyp.centernet.yaml \
  hyp.box-l1.yaml hyp.slide-ema.yaml benchmarks/hyps/hyp.slide-gain-control.yaml hyp.slide-focal-ce.yaml \
  --seeds 1 2 3 4 5 --project "$PROJECT" --jobs "${JOBS:-8}" --device "${DEVICE:-0}" --workers 2 \
  --weights "$SHARED/weights/yolov5n_v6.1_coco80.pt" --optimizer auto --epochs 30 --imgsz 640 --noplots \
  > "$OUT/ablation_gpu.log" 2>&1
echo "ablation exit $? (124: stopped at LIMIT; run again with RESUME)"
grep -a "seed .*: \(trained\|done before\)" "$OUT/ablation_gpu.log" | tail -n 60
find "$PROJECT" -name ablation_done.json | sed 's#/ablation_done.json##' > "$OUT/done.txt"
tar -czf "$OUT/ablation_gpu.tar.gz" --files-from /dev/null $(ls "$PROJECT"/ablation.* 2>/dev/null) $(sed 's#$#/ablation_done.json#' "$OUT/done.txt") \
  $(for d in $(cat "$OUT/done.txt"); do ls "$d"/*.csv "$d"/*.yaml "$d"/*.txt 2>/dev/null; done)
cp "$PROJECT"/ablation.md "$PROJECT"/ablation.png "$OUT"/ 2>/dev/null
echo "finished runs: $(wc -l < "$OUT/done.txt"); packed into $OUT/ablation_gpu.tar.gz"
