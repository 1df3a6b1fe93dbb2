#!/usr/bin/env bash
# Train the embedded default models: synthetic data → teacher → DONUT-hole student → evaluation.
# Usage: scripts/train_default_model.sh [RUN_DIR] [N_TRAIN]   (GPU strongly advised; resumable)
# Quick CPU smoke run of the whole chain: SMOKE=1 scripts/train_default_model.sh /tmp/smoke
# Teacher training on a small CPU machine (no GPU): CPU=1 scripts/train_default_model.sh runs/cpu 12000
#   batch 16, constant lr after warm-up, open-ended: stop it with SIGTERM/Ctrl-C (it checkpoints first),
#   run the same command again to go on; TEACHER_ONLY=1 stops after the teacher.
# In a fixed time (GPU machine): TEACHER_S=300 TEACHER_ONLY=1 ..., then STUDENT_ONLY=1 STUDENT_S=120 ...
#   (scripts/device_default_model.sh does both, with PY=python3 DH="python3 -m donut_hole")
# Start the teacher from saved weights instead of random ones (a committed CPU checkpoint, say):
#   INIT=checkpoints/teacher-small-cpu CPU=1 TEACHER_ONLY=1 scripts/train_default_model.sh runs/cpu 12000
set -euo pipefail
INVOCATION="CPU=${CPU:-0} SMOKE=${SMOKE:-0} TEACHER_ONLY=${TEACHER_ONLY:-0} STUDENT_ONLY=${STUDENT_ONLY:-0} INIT=${INIT:-} TEACHER_S=${TEACHER_S:-} STUDENT_S=${STUDENT_S:-} $0 $*"
RUN=${1:-runs/default}
N_TRAIN=${2:-60000}
N_VAL=${N_VAL:-500}
BIN=${BIN:-.venv/bin}
PY=${PY:-$BIN/python}
read -ra DH <<< "${DH:-$BIN/donut-hole}"  # DH="python3 -m donut_hole" where nothing is installed
EXTRA=()
TEACHER=()
STUDENT=()
if [[ "${SMOKE:-0}" == 1 ]]; then
    N_TRAIN=16 N_VAL=4
    EXTRA=(--steps 4)
fi
if [[ -n "${INIT:-}" ]]; then
    TEACHER+=(--set "init=$INIT" --set train.seed=1)  # another seed: a new batch order over the same data
fi
if [[ "${CPU:-0}" == 1 ]]; then
    TEACHER+=(--device cpu --steps "${STEPS:-100000}" --set train.batch_size=16 --set train.lr=5e-4
        --set train.warmup_steps=200 --set train.min_lr_ratio=1.0 --set train.eval_every=400
        --set train.eval_samples=24 --set train.checkpoint_every=100 --set train.log_every=10
        --set train.num_workers=1)
fi
# Fixed budgets of machine time (seconds of training, e.g. on the GPU machine): the run stops, evaluates
# and saves as after its last step (recipe key train.time_limit_s).
[[ -n "${TEACHER_S:-}" ]] && TEACHER+=(--set "train.time_limit_s=$TEACHER_S")
[[ -n "${STUDENT_S:-}" ]] && STUDENT+=(--set "train.time_limit_s=$STUDENT_S")
mkdir -p "$RUN"
# run.json: data seeds and sizes, the commands, the hardware; `donut-hole ship` puts them in the model cards
record() {  # record started|finished
    "$PY" - "$RUN/run.json" "$1" "$N_TRAIN" "$N_VAL" "$INVOCATION" <<'PY'
import json, os, sys, platform, datetime, pathlib
import torch
path, event, n_train, n_val, invocation = pathlib.Path(sys.argv[1]), sys.argv[2], *sys.argv[3:]
run = json.loads(path.read_text()) if path.is_file() else {}
now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
if event == "started":
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    run.setdefault("started", now)
    run.setdefault("sessions", []).append({"started": now, "hardware": gpu or f"{cpu or platform.machine()}, {os.cpu_count()} cores (no GPU)"})
    run["hardware"] = "; ".join(dict.fromkeys(s["hardware"] for s in run["sessions"]))
    run["train"] = {"n": int(n_train), "seed": 0, "width": 448, "height": 448}
    run["val"] = {"n": int(n_val), "seed": 1000, "width": 448, "height": 448}
    run["max_new_tokens"] = 192
    run["commands"] = [invocation.strip()]
else:
    run["finished"] = now
path.write_text(json.dumps(run, indent=2))
PY
}
record started
[[ -f "$RUN/train/metadata.jsonl" ]] || "${DH[@]}" synth --kind all --n "$N_TRAIN" --seed 0 \
    --width 448 --height 448 --out "$RUN/train"
[[ -f "$RUN/val/metadata.jsonl" ]] || "${DH[@]}" synth --kind all --n "$N_VAL" --seed 1000 \
    --width 448 --height 448 --out "$RUN/val"
if [[ "${STUDENT_ONLY:-0}" != 1 ]]; then  # STUDENT_ONLY=1: the teacher in $RUN/teacher/model is final
    "${DH[@]}" train --recipe configs/teacher-small.yaml --train "$RUN/train" --val "$RUN/val" \
        --out "$RUN/teacher" --resume "${TEACHER[@]}" "${EXTRA[@]}"
fi
[[ "${TEACHER_ONLY:-0}" == 1 ]] && exit 0
"${DH[@]}" compress --teacher "$RUN/teacher/model" --recipe configs/donut-hole-small.yaml \
    --train "$RUN/train" --val "$RUN/val" --out "$RUN/student" --resume "${STUDENT[@]}" "${EXTRA[@]}"
for side in teacher student; do
    # a teacher evaluated since it was saved (scripts/device_default_model.sh teacher) is not read again
    [[ "$RUN/$side/evaluation.json" -nt "$RUN/$side/model/model.safetensors" ]] && continue
    "${DH[@]}" evaluate --model "$RUN/$side/model" --data "$RUN/val" --max-new-tokens 192 \
        --out "$RUN/$side/evaluation.json"
done
record finished
echo "done: $RUN/teacher/model, $RUN/student/model (report: $RUN/student/report.md)"
echo "ship them: ${DH[*]} ship --run $RUN --models models --readme README.md"
