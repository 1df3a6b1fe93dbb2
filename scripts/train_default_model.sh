#!/usr/bin/env bash
# Train the embedded default models, resumably: teacher → anneal → DONUT-hole student → evaluation.
#
# Usage: scripts/train_default_model.sh [RUN_DIR] [N_TRAIN]     start, or go on where it stopped
#   The teacher (configs/teacher-cpu.yaml) learns on pages rendered on the fly (reading pages, then the
#   three document types) at a constant learning rate for the recipe's steps (or until its held-out field
#   F1 reaches train.target_f1), then an annealed copy of it becomes the teacher (below); it starts from
#   checkpoints/teacher-cpu when RUN_DIR has no checkpoint of its own. The student
#   (configs/donut-hole-cpu.yaml) is distilled on scans rendered on the fly by its recipe (a recipe
#   without a 'data' curriculum: N_TRAIN synthetic scans, seed 0). Held-out: 500 scans, seed 1000, in their
#   own page shapes (val-pages: the report and evaluation.json) and at 448x448 (val: the teacher's curve,
#   evaluation-448.json). Stop it any time with SIGTERM or Ctrl-C: it checkpoints first; the same command
#   goes on.
# scripts/train_default_model.sh --save [RUN_DIR]   keep the teacher's newest checkpoint, its curves and the
#   run's record (run.json: sessions, hardware, commands, for the model cards) in checkpoints/teacher-cpu
#   (to commit, so that the next machine goes on from there), plot the curve and
#   rewrite the curve's table in its README (between <!-- curve:start --> and <!-- curve:end -->); a
#   student distillation under way is kept too, in checkpoints/<student recipe's name> (STUDENT_KEEP), and
#   the next run's student goes on from it
# scripts/train_default_model.sh --anneal N [RUN_DIR]   anneal a copy of the teacher's newest checkpoint: N
#   more steps with the learning rate decaying (cosine) to ANNEAL_MIN (0.05) of it, in RUN_DIR/anneal, at
#   the input size ANNEAL_SIZE (default 672 for a recipe with a 'data' curriculum: the annealed teacher reads
#   672x672 inputs, sharper print than the 448x448 it trained at, for 1.6x the time per image; empty,
#   ANNEAL_SIZE=: the recipe's own size), then evaluate it on both held-out sets. The open-ended run in RUN_DIR/teacher is
#   left as it was (its constant rate goes on learning; an annealed copy shows what it reads now).
#   Resumable like the rest.
#   Once the teacher stops by itself (its steps or its target F1), the chain anneals it (ANNEAL_STEPS, default 1000 for a
#   recipe with a 'data' curriculum, 0 for others) and the annealed copy is the teacher that is distilled.
# The pair from scratch, ignoring the committed checkpoints (resumable the same way):
#   FROM_SCRATCH=1 scripts/train_default_model.sh runs/scratch
# Quick smoke run of the whole chain: SMOKE=1 scripts/train_default_model.sh /tmp/smoke
# Other recipes (a GPU machine): TEACHER_RECIPE=configs/teacher-small.yaml STUDENT_RECIPE=configs/donut-hole-small.yaml
#   (a teacher recipe without a 'data' curriculum trains on N_TRAIN synthetic scans instead)
# In a fixed time: TEACHER_S=300 TEACHER_ONLY=1 ..., then STUDENT_ONLY=1 STUDENT_S=120 ...
# The fast student alone, from the committed annealed teacher (checkpoints/teacher-cpu/annealed) and the
#   committed distillation (checkpoints/donut-hole-cpu-fast), resumable:
#   STUDENT_ONLY=1 STUDENT_RECIPE=configs/donut-hole-cpu-fast.yaml scripts/train_default_model.sh runs/fast
#   (stop it with SIGTERM; keep it with the same variables and --save)
set -euo pipefail
ARGS=$*  # as given, for the commands recorded in run.json (the model cards list them)
SAVE=0
ANNEAL=0
[[ "${1:-}" == --save ]] && { SAVE=1; shift; }
if [[ "${1:-}" == --anneal ]]; then
    ANNEAL=${2:-}
    [[ "$ANNEAL" =~ ^[1-9][0-9]*$ ]] || { echo "--anneal needs a number of steps, e.g. --anneal 1000" >&2; exit 2; }
    shift 2
fi
INVOCATION="TEACHER_RECIPE=${TEACHER_RECIPE:-} ${STUDENT_RECIPE:+STUDENT_RECIPE=$STUDENT_RECIPE }${FROM_SCRATCH:+FROM_SCRATCH=$FROM_SCRATCH }SMOKE=${SMOKE:-0} TEACHER_ONLY=${TEACHER_ONLY:-0} STUDENT_ONLY=${STUDENT_ONLY:-0} INIT=${INIT:-} TEACHER_S=${TEACHER_S:-} STUDENT_S=${STUDENT_S:-} ${ANNEAL_SIZE+ANNEAL_SIZE=$ANNEAL_SIZE }$0 $ARGS"
RUN=${1:-runs/default}
N_TRAIN=${2:-12000}
TEACHER_RECIPE=${TEACHER_RECIPE:-configs/teacher-cpu.yaml}
STUDENT_RECIPE=${STUDENT_RECIPE:-configs/donut-hole-cpu.yaml}
KEEP=${KEEP:-checkpoints/teacher-cpu}
STUDENT_KEEP=${STUDENT_KEEP:-checkpoints/$(basename "$STUDENT_RECIPE" .yaml)}  # a student that takes sessions
N_VAL=${N_VAL:-500}
BIN=${BIN:-.venv/bin}
PY=${PY:-$BIN/python}
read -ra DH <<< "${DH:-$BIN/donut-hole}"  # DH="python3 -m donut_hole" where nothing is installed
MAX_NEW=512
renders() { grep -q '^data:' "$1"; }  # renders RECIPE: its training scans come from a 'data' curriculum
# open-ended teachers (a 'data' curriculum, constant learning rate) end with an anneal; others decay themselves
ANNEAL_STEPS=${ANNEAL_STEPS:-$(renders "$TEACHER_RECIPE" && echo 1000 || echo 0)}
ANNEAL_SIZE=${ANNEAL_SIZE-$(renders "$TEACHER_RECIPE" && echo 672 || true)}
EXTRA=()
SMOKE_SET=()
TEACHER=()
STUDENT=()
if [[ "${SMOKE:-0}" == 1 ]]; then
    N_TRAIN=16 N_VAL=4 SMOKE_RUN=1 MAX_NEW=16
    [[ $ANNEAL_STEPS != 0 ]] && ANNEAL_STEPS=2
    SMOKE_SET=(--set train.eval_every=2 --set train.eval_samples=2 --set train.max_new_tokens=16)
    EXTRA=(--steps 4 "${SMOKE_SET[@]}")
fi
# A run goes on from the committed checkpoints (KEEP, STUDENT_KEEP) when it has none of its own; not a smoke
# run, nor FROM_SCRATCH=1 (the whole pair retrained from nothing: about 10 hours on 2 cores).
FROM_KEPT=1
[[ -n "${SMOKE_RUN:-}" || "${FROM_SCRATCH:-0}" == 1 ]] && FROM_KEPT=0
if [[ -n "${INIT:-}" ]]; then
    TEACHER+=(--set "init=$INIT" --set train.seed=1)  # another seed: a new batch order over the same data
fi
# Fixed budgets of machine time (seconds of training, e.g. on the GPU machine): the run stops, evaluates
# and saves as after its last step (recipe key train.time_limit_s).
[[ -n "${TEACHER_S:-}" ]] && TEACHER+=(--set "train.time_limit_s=$TEACHER_S")
[[ -n "${STUDENT_S:-}" ]] && STUDENT+=(--set "train.time_limit_s=$STUDENT_S")
# keep_curve DIR: plot DIR/history.jsonl (DIR/curve.png) and rewrite the curve's table in DIR/README.md
keep_curve() {
    [[ -f "$1/history.jsonl" ]] || return 0  # no held-out evaluation yet
    "$PY" -c "import sys; from donut_hole.compression.curve import plot_curve; plot_curve(*sys.argv[1:3])" \
        "$1/history.jsonl" "$1/curve.png"
    if grep -q '<!-- curve:start -->' "$1/README.md" 2>/dev/null; then  # its table of the curve, too
        "$PY" -c "import sys; from donut_hole.compression.curve import write_curve_table as w; w(*sys.argv[1:3])" \
            "$1/history.jsonl" "$1/README.md"
    fi
}
if [[ $SAVE == 1 ]]; then
    kept=0
    if [[ -f "$RUN/teacher/checkpoint.pt" ]]; then
        mkdir -p "$KEEP"
        cp "$RUN/teacher/checkpoint.pt" "$RUN/teacher/history.jsonl" "$RUN/teacher/train_log.jsonl" \
            "$RUN/teacher/recipe.yaml" "$KEEP/"
        if [[ -f "$RUN/run.json" ]]; then cp "$RUN/run.json" "$KEEP/"; fi  # its sessions and commands
        keep_curve "$KEEP"
        echo "kept $RUN/teacher in $KEEP (commit it; the next run goes on from it)"
        kept=1
    fi
    if [[ -f "$RUN/student/checkpoint.pt" && ( "${STUDENT_ONLY:-0}" == 1 || ! "$RUN/student/report.json" -nt "$RUN/student/checkpoint.pt" ) ]]; then
        mkdir -p "$STUDENT_KEEP"  # a distillation that takes sessions (under way, or finished: its model too)
        cp "$RUN/student/checkpoint.pt" "$RUN/student/train_log.jsonl" "$RUN/student/recipe.yaml" "$STUDENT_KEEP/"
        if [[ -f "$RUN/student/history.jsonl" ]]; then cp "$RUN/student/history.jsonl" "$STUDENT_KEEP/"; fi
        if [[ -f "$RUN/run.json" ]]; then cp "$RUN/run.json" "$STUDENT_KEEP/"; fi
        if [[ "$RUN/student/report.json" -nt "$RUN/student/checkpoint.pt" ]]; then  # it finished: the model
            rm -rf "$STUDENT_KEEP/model"                                             # and what was measured
            cp -r "$RUN/student/model" "$STUDENT_KEEP/model"
            cp "$RUN/student/report.json" "$RUN/student/report.md" "$RUN"/student/evaluation*.json "$STUDENT_KEEP/"
        fi
        keep_curve "$STUDENT_KEEP"
        echo "kept $RUN/student in $STUDENT_KEEP (commit it; the next run goes on from it)"
        kept=1
    fi
    [[ $kept == 1 ]] || { echo "nothing to keep: no checkpoint in $RUN/teacher or $RUN/student" >&2; exit 1; }
    exit 0
fi
# anneal N: a copy of the teacher's newest checkpoint trains N more steps while its learning rate decays,
# in $RUN/anneal, and is evaluated on the held-out set; a teacher that moved on since is annealed afresh.
anneal() {
    local n=$1 a="$RUN/anneal" from size=() mark
    [[ -f "$RUN/teacher/checkpoint.pt" ]] || { echo "no teacher checkpoint in $RUN/teacher" >&2; exit 1; }
    from=$("$PY" -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=False)['step'])" \
        "$RUN/teacher/checkpoint.pt")
    mark="{\"from_step\": $from, \"steps\": $n}"
    if [[ -n "$ANNEAL_SIZE" ]]; then  # Swin's weights fit any input size: the copy goes on at this one
        size=(--set "model.image_size=[$ANNEAL_SIZE, $ANNEAL_SIZE]")
        mark="{\"from_step\": $from, \"steps\": $n, \"image_size\": [$ANNEAL_SIZE, $ANNEAL_SIZE]}"
    fi
    if [[ -f "$a/anneal.json" ]] && ! grep -qxF "$mark" "$a/anneal.json"; then
        echo "$a was annealed from another checkpoint, over another number of steps or at another size: annealing afresh"
        rm -rf "$a"
    fi
    if [[ ! -f "$a/anneal.json" ]]; then
        mkdir -p "$a"
        cp "$RUN/teacher/checkpoint.pt" "$RUN/teacher/history.jsonl" "$RUN/teacher/train_log.jsonl" "$a/"
        echo "$mark" > "$a/anneal.json"
    fi
    echo "annealing the teacher from step $from over $n steps in $a"
    "${DH[@]}" train --recipe "$TEACHER_RECIPE" --val "$RUN/val" --out "$a" --resume --steps $((from + n)) \
        --set "train.decay_steps=$n" --set "train.min_lr_ratio=${ANNEAL_MIN:-0.05}" --set train.target_f1=null \
        "${size[@]}" "${SMOKE_SET[@]}"
    evaluate_both "$a"
}
# evaluate_both DIR: DIR/model on both held-out sets, unless read since it was saved
evaluate_both() {
    local set out
    for set in val-pages:evaluation.json val:evaluation-448.json; do
        out="$1/${set#*:}"
        [[ "$out" -nt "$1/model/model.safetensors" ]] && continue
        "${DH[@]}" evaluate --model "$1/model" --data "$RUN/${set%%:*}" --max-new-tokens "$MAX_NEW" \
            --batch-size 16 --out "$out"
    done
}
synth_val() {
    [[ -f "$RUN/val/metadata.jsonl" ]] || "${DH[@]}" synth --kind all --n "$N_VAL" --seed 1000 \
        --width 448 --height 448 --out "$RUN/val"
    [[ -f "$RUN/val-pages/metadata.jsonl" ]] || "${DH[@]}" synth --kind all --n "$N_VAL" --seed 1000 \
        --out "$RUN/val-pages"
}
mkdir -p "$RUN"
# A run that goes on from a committed checkpoint goes on with its record (sessions, hardware, commands),
# kept next to it by --save: the student's when this run distils one, else the teacher's.
if [[ ! -f "$RUN/run.json" && $FROM_KEPT == 1 ]]; then
    if [[ "${STUDENT_ONLY:-0}" == 1 && -f "$STUDENT_KEEP/run.json" ]]; then
        cp "$STUDENT_KEEP/run.json" "$RUN/"
    elif [[ -f "$KEEP/run.json" ]]; then
        cp "$KEEP/run.json" "$RUN/"
    fi
fi
# run.json: data seeds and sizes, the commands, the hardware; `donut-hole ship` puts them in the model cards
record() {  # record started|finished
    "$PY" - "$RUN/run.json" "$1" "$N_TRAIN" "$N_VAL" "$INVOCATION" "$RENDERED" <<'PY'
import json, sys, datetime, pathlib
import torch
path, event, n_train, n_val, invocation, rendered = pathlib.Path(sys.argv[1]), sys.argv[2], *sys.argv[3:]
run = json.loads(path.read_text()) if path.is_file() else {}
now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
if event == "started":
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    # the vector unit and bf16 arithmetic set a CPU's pace: e.g. 0.65 distilled images/s in fp32 on AVX2
    # against about 5 with bf16 autocast on AVX512-BF16, same recipe
    from donut_hole.model.predict import describe_cpu
    run.setdefault("started", now)
    run.setdefault("sessions", []).append({"started": now, "hardware": gpu or f"{describe_cpu()} (no GPU)"})
    run["hardware"] = "; ".join(dict.fromkeys(s["hardware"] for s in run["sessions"]))
    run["train"] = {"n": int(n_train), "seed": 0, "width": 448, "height": 448} if rendered == "0" else {"rendered": True}
    run["val"] = {"n": int(n_val), "seed": 1000}  # in the document types' own page shapes
    run["val_448"] = {"n": int(n_val), "seed": 1000, "width": 448, "height": 448}
    run["max_new_tokens"] = 512
    run["commands"] = list(dict.fromkeys([*run.get("commands", []), invocation.strip()]))  # each phase's
else:
    run["finished"] = now
path.write_text(json.dumps(run, indent=2))
PY
}
# both recipes render their training scans ('data' curricula): no training folder is written
RENDERED=$(renders "$TEACHER_RECIPE" && renders "$STUDENT_RECIPE" && echo 1 || echo 0)
record started
if [[ $ANNEAL != 0 ]]; then
    synth_val
    anneal "$ANNEAL"
    exit 0
fi
synth_val
synth_train() {
    [[ -f "$RUN/train/metadata.jsonl" ]] || "${DH[@]}" synth --kind all --n "$N_TRAIN" --seed 0 \
        --width 448 --height 448 --out "$RUN/train"
}
if [[ "${STUDENT_ONLY:-0}" == 1 && ! -d "$RUN/teacher/model" && -d "$KEEP/annealed" && $FROM_KEPT == 1 ]]; then
    mkdir -p "$RUN/teacher"  # no teacher in this run: the committed annealed one (the shipped teacher)
    cp -r "$KEEP/annealed" "$RUN/teacher/model"
    for f in history.jsonl recipe.yaml; do  # how it was trained, for its model card
        if [[ -f "$KEEP/$f" ]]; then cp "$KEEP/$f" "$RUN/teacher/"; fi
    done
    for f in evaluation.json evaluation-448.json anneal.json; do  # its scores: newer than its weights
        if [[ -f "$RUN/teacher/model/$f" ]]; then mv "$RUN/teacher/model/$f" "$RUN/teacher/"; touch "$RUN/teacher/$f"; fi
    done
fi
if [[ "${STUDENT_ONLY:-0}" != 1 ]]; then  # STUDENT_ONLY=1: the teacher in $RUN/teacher/model is final
    TRAIN_DATA=()
    if renders "$TEACHER_RECIPE"; then  # rendered on the fly: no training folder
        if [[ ! -f "$RUN/teacher/checkpoint.pt" && -f "$KEEP/checkpoint.pt" && $FROM_KEPT == 1 ]]; then
            mkdir -p "$RUN/teacher"  # go on from the committed checkpoint
            cp "$KEEP/checkpoint.pt" "$KEEP/history.jsonl" "$KEEP/train_log.jsonl" "$RUN/teacher/"
        fi
    else
        synth_train
        TRAIN_DATA=(--train "$RUN/train")
    fi
    "${DH[@]}" train --recipe "$TEACHER_RECIPE" "${TRAIN_DATA[@]}" --val "$RUN/val" \
        --out "$RUN/teacher" --resume "${TEACHER[@]}" "${EXTRA[@]}"
    if [[ $ANNEAL_STEPS != 0 ]]; then  # the teacher that ships is the annealed copy
        anneal "$ANNEAL_STEPS"
        rm -rf "$RUN/teacher/model"
        cp -r "$RUN/anneal/model" "$RUN/teacher/model"
        cp "$RUN/anneal/evaluation.json" "$RUN/anneal/evaluation-448.json" "$RUN/anneal/anneal.json" \
            "$RUN/teacher/"
    fi
fi
[[ "${TEACHER_ONLY:-0}" == 1 ]] && exit 0
STUDENT_DATA=()
if ! renders "$STUDENT_RECIPE"; then  # a recipe that renders its scans needs no folder
    synth_train
    STUDENT_DATA=(--train "$RUN/train")
fi
if [[ ! -f "$RUN/student/checkpoint.pt" && -f "$STUDENT_KEEP/checkpoint.pt" && $FROM_KEPT == 1 ]]; then
    mkdir -p "$RUN/student"  # go on from the committed distillation
    cp "$STUDENT_KEEP/checkpoint.pt" "$STUDENT_KEEP/train_log.jsonl" "$RUN/student/"
    if [[ -f "$STUDENT_KEEP/history.jsonl" ]]; then cp "$STUDENT_KEEP/history.jsonl" "$RUN/student/"; fi
fi
# a finished student (its report written after its model) is not distilled again
[[ "$RUN/student/report.json" -nt "$RUN/student/model/model.safetensors" ]] ||
    "${DH[@]}" compress --teacher "$RUN/teacher/model" --recipe "$STUDENT_RECIPE" "${STUDENT_DATA[@]}" \
        --val "$RUN/val-pages" --out "$RUN/student" --resume "${STUDENT[@]}" "${EXTRA[@]}"
# a teacher evaluated since it was saved (scripts/device_default_model.sh teacher) is not read again
evaluate_both "$RUN/teacher"
evaluate_both "$RUN/student"
record finished
echo "done: $RUN/teacher/model, $RUN/student/model (report: $RUN/student/report.md)"
echo "ship them: ${DH[*]} ship --run $RUN --models models --readme README.md"
