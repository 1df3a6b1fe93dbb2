#!/usr/bin/env bash
# Train the default teacher on this CPU, resumably across sessions (configs/teacher-cpu.yaml).
# Usage: scripts/train_teacher_cpu.sh [RUN_DIR]        start or go on (background it with nohup nice)
#        scripts/train_teacher_cpu.sh --save [RUN_DIR] copy the newest checkpoint and curves to
#                                                       checkpoints/teacher-cpu (after SIGTERM) to commit
# Training data is rendered on the fly; the held-out set (500 scans, seed 1000) is written once.
set -euo pipefail
SAVE=0
[[ "${1:-}" == --save ]] && { SAVE=1; shift; }
RUN=${1:-runs/teacher-cpu}
KEEP=checkpoints/teacher-cpu
BIN=${BIN:-.venv/bin}
if [[ $SAVE == 1 ]]; then
    mkdir -p "$KEEP"
    cp "$RUN/checkpoint.pt" "$RUN/history.jsonl" "$RUN/train_log.jsonl" "$RUN/recipe.yaml" "$KEEP/"
    echo "saved $RUN → $KEEP (commit it)"
    exit 0
fi
mkdir -p "$RUN"
# go on from the committed checkpoint when this machine has none of its own
if [[ ! -f "$RUN/checkpoint.pt" && -f "$KEEP/checkpoint.pt" ]]; then
    cp "$KEEP/checkpoint.pt" "$KEEP/history.jsonl" "$KEEP/train_log.jsonl" "$RUN/"
fi
[[ -f runs/heldout/metadata.jsonl ]] || "$BIN/donut-hole" synth --kind all --n 500 --seed 1000 \
    --width 448 --height 448 --out runs/heldout
exec "$BIN/donut-hole" train --recipe configs/teacher-cpu.yaml --val runs/heldout --out "$RUN" --resume "$@"
