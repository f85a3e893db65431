#!/usr/bin/env bash
# GPU figures for timm-lap in one go (about 5 minutes on one H100): the no-sync check, then
# resnet50 224 px, batch 128, bf16 autocast, channels_last, eager and torch.compile.
# Usage: benchmarks/gpu_check.sh OUT_DIR     (runs from any machine with a CUDA GPU, torch and timm)
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)  # absolute: the scripts run from the repository root (python -m benchmarks.X)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.csv" 2>&1 || true
common=(--device cuda --cases models --models resnet50 --img-size 224 --batch-size 128 --amp --channels-last)
timeout 90 "$py" -m benchmarks.gpu_sync_check --json "$out/sync.json" || status=1
timeout 110 "$py" -m benchmarks.overhead "${common[@]}" --variants vanilla timm_lap_taps timm_lap_notaps timm_lap_grouped timm_lap_sample timm_lap_torch naive --repeats 40 \
    --warmup 5 --json "$out/eager.json" || status=1
timeout 170 "$py" -m benchmarks.overhead "${common[@]}" --compile --variants vanilla timm_lap --repeats 20 \
    --warmup 3 --json "$out/compiled.json" || status=1
timeout 100 "$py" -m benchmarks.gpu_host_time --variants vanilla timm_lap_taps timm_lap_notaps \
    --json "$out/host_time.json" || status=1
exit $status
