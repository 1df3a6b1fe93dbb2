#!/usr/bin/env bash
# Train the embedded default models (issue 5): synthetic data → teacher → DONUT-hole student → evaluation.
# Usage: scripts/train_default_model.sh [RUN_DIR] [N_TRAIN]   (GPU strongly advised; resumable)
# Quick CPU smoke run of the whole chain: SMOKE=1 scripts/train_default_model.sh /tmp/smoke
# Teacher training on a small CPU machine (no GPU): CPU=1 scripts/train_default_model.sh runs/cpu 12000
#   batch 16, constant lr after warm-up, open-ended: stop it with SIGTERM/Ctrl-C (it checkpoints first),
#   run the same command again to go on; TEACHER_ONLY=1 stops after the teacher.
set -euo pipefail
RUN=${1:-runs/default}
N_TRAIN=${2:-60000}
N_VAL=${N_VAL:-500}
BIN=${BIN:-.venv/bin}
EXTRA=()
TEACHER=()
if [[ "${SMOKE:-0}" == 1 ]]; then
    N_TRAIN=16 N_VAL=4
    EXTRA=(--steps 4)
fi
if [[ "${CPU:-0}" == 1 ]]; then
    TEACHER=(--device cpu --steps "${STEPS:-100000}" --set train.batch_size=16 --set train.lr=5e-4
        --set train.warmup_steps=200 --set train.min_lr_ratio=1.0 --set train.eval_every=400
        --set train.eval_samples=24 --set train.checkpoint_every=100 --set train.log_every=10
        --set train.num_workers=1)
fi
mkdir -p "$RUN"
[[ -f "$RUN/train/metadata.jsonl" ]] || "$BIN/donut-hole" synth --kind all --n "$N_TRAIN" --seed 0 \
    --width 448 --height 448 --out "$RUN/train"
[[ -f "$RUN/val/metadata.jsonl" ]] || "$BIN/donut-hole" synth --kind all --n "$N_VAL" --seed 1000 \
    --width 448 --height 448 --out "$RUN/val"
"$BIN/donut-hole" train --recipe configs/teacher-small.yaml --train "$RUN/train" --val "$RUN/val" \
    --out "$RUN/teacher" --resume "${TEACHER[@]}" "${EXTRA[@]}"
[[ "${TEACHER_ONLY:-0}" == 1 ]] && exit 0
"$BIN/donut-hole" compress --teacher "$RUN/teacher/model" --recipe configs/donut-hole-small.yaml \
    --train "$RUN/train" --val "$RUN/val" --out "$RUN/student" --resume "${EXTRA[@]}"
"$BIN/donut-hole" evaluate --model "$RUN/teacher/model" --data "$RUN/val" --out "$RUN/teacher/evaluation.json"
"$BIN/donut-hole" evaluate --model "$RUN/student/model" --data "$RUN/val" --out "$RUN/student/evaluation.json"
echo "done: $RUN/teacher/model, $RUN/student/model (report: $RUN/student/report.md)"
