#!/usr/bin/env bash
# The paper-regime study (docs/results.md): paired vanilla / LAP (tau 0.1, 1, 10) / fixed-weight runs of a deep,
# narrow pre-activation network on Fashion-MNIST, SGD (batch 50: timm drops partial training batches, and 100 images hold no batch of 128) with step decay, final-epoch accuracy on the official 10k test
# set. CPU preset: preact_flat9 at width 16, sizes 100 and 300, 100 epochs, 10 seeds (about 1 h on 2 idle cores).
# Resumable: rerun the same command and finished runs are skipped.
#   bash benchmarks/paper_regime.sh [OUT_DIR] [extra compare options, e.g. --jobs 16 --threads 1]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/benchmarks/results/paper_regime}"
shift || true
exec timm-lap compare --title "Paper regime: preact_flat9 (width 16) on Fashion-MNIST" \
    --methods vanilla lap lap:tau=0.1 lap:tau=10 fixed --weights 0.01 0.1 1 \
    --sizes 100:100 300:100 --seeds 0-9 --select-seeds 1000 --val-from-train 2000 \
    --jobs 2 --threads 1 --out-dir "$OUT" "$@" \
    --dataset torch/fashion_mnist --model preact_flat9 --model-kwargs width=16 \
    -b 50 -vb 500 --opt sgd --lr 0.1 --momentum 0.9 --weight-decay 1e-4 \
    --sched multistep --decay-milestones 50 75 --decay-rate 0.1 --warmup-epochs 0 \
    --smoothing 0 --scale 0.75 1 --ratio 1 1 --hflip 0.5 --color-jitter 0 \
    --log-interval 1000 --checkpoint-hist 1
