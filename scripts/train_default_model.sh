#!/usr/bin/env bash
# Train the embedded default models (issue 5): synthetic data → teacher → DONUT-hole student → evaluation.
# Usage: scripts/train_default_model.sh [RUN_DIR] [N_TRAIN]   (GPU strongly advised; resumable)
# Quick CPU smoke run of the whole chain: SMOKE=1 scripts/train_default_model.sh /tmp/smoke
set -euo pipefail
RUN=${1:-runs/default}
N_TRAIN=${2:-60000}
N_VAL=${N_VAL:-500}
BIN=${BIN:-.venv/bin}
EXTRA=()
if [[ "${SMOKE:-0}" == 1 ]]; then
    N_TRAIN=16 N_VAL=4
    EXTRA=(--steps 4)
fi
mkdir -p "$RUN"
[[ -f "$RUN/train/metadata.jsonl" ]] || "$BIN/donut-hole" synth --kind all --n "$N_TRAIN" --seed 0 \
    --width 448 --height 448 --out "$RUN/train"
[[ -f "$RUN/val/metadata.jsonl" ]] || "$BIN/donut-hole" synth --kind all --n "$N_VAL" --seed 1000 \
    --width 448 --height 448 --out "$RUN/val"
"$BIN/donut-hole" train --recipe configs/teacher-small.yaml --train "$RUN/train" --val "$RUN/val" \
    --out "$RUN/teacher" --resume "${EXTRA[@]}"
"$BIN/donut-hole" compress --teacher "$RUN/teacher/model" --recipe configs/donut-hole-small.yaml \
    --train "$RUN/train" --val "$RUN/val" --out "$RUN/student" --resume "${EXTRA[@]}"
"$BIN/donut-hole" evaluate --model "$RUN/teacher/model" --data "$RUN/val" --out "$RUN/teacher/evaluation.json"
"$BIN/donut-hole" evaluate --model "$RUN/student/model" --data "$RUN/val" --out "$RUN/student/evaluation.json"
echo "done: $RUN/teacher/model, $RUN/student/model (report: $RUN/student/report.md)"
