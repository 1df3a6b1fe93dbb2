#!/usr/bin/env bash
# The default models on the GPU machine of the `device` tool, in two calls of a fixed time each.
#
# Here first (PyPI reachable): scripts/device_wheels.sh   (pydantic & co., which that image lacks, in .whl)
# Then, through the device tool, run from the repository root with carry [".whl"]:
#   call 1: scripts/device_default_model.sh teacher   (synth 30,000 + 500 scans, teacher for TEACHER_S s)
#   call 2: scripts/device_default_model.sh student   (DONUT-hole for STUDENT_S s, both evaluated)
# Call 2 needs call 1's runs/ folder: on a machine still warm it is there (ignored outputs are kept); on a
# fresh one, carry runs/default/teacher/model back as well (it is in call 1's $OUT) and the data is made
# again from its seeds (byte-identical). Everything worth keeping is copied to $OUT at the end of a call:
# the models (fp32 safetensors, ~30 MB and ~16 MB), run.json, logs, histories, evaluations and the report.
# Then here: donut-hole ship --run <the fetched run> --readme README.md
# The transformers of that image (5.17) passes this project's model and compression tests (checked on CPU).
# Smoke test on a CPU: SMOKE=1 WHEELS=none PY=.venv/bin/python DH=".venv/bin/python -m donut_hole" \
#     RUN=/tmp/dev/run OUT=/tmp/dev/out scripts/device_default_model.sh teacher  (then: ... student)
set -euo pipefail
PHASE=${1:?usage: $0 teacher|student}
RUN=${RUN:-runs/default}
N_TRAIN=${N_TRAIN:-30000}
OUT=${OUT:-/tmp/device-out}
WHEELS=${WHEELS:-.whl}  # WHEELS=none: use the packages already there (a CPU smoke test in the venv)
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PY=${PY:-python3} DH=${DH:-python3 -m donut_hole}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
status=0
case "$PHASE" in
    teacher)  # then the teacher's held-out evaluation, the first answer to "does it read?"
        $DH train-default --teacher-only --teacher-seconds "${TEACHER_S:-300}" --n-train "$N_TRAIN" "$RUN" &&
            $DH evaluate --model "$RUN/teacher/model" --data "$RUN/val-pages" --max-new-tokens 192 \
                --out "$RUN/teacher/evaluation.json" || status=$? ;;
    student)
        $DH train-default --student-only --student-seconds "${STUDENT_S:-150}" --n-train "$N_TRAIN" "$RUN" ||
            status=$? ;;
    *) echo "unknown phase $PHASE: teacher or student" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
# The run without the data (it regenerates from its seeds) and without optimizer checkpoints.
(cd "$(dirname "$RUN")" && tar --exclude='*/train' --exclude='*/val' --exclude='*/val-pages' --exclude='checkpoint.pt' \
    -cf - "$(basename "$RUN")") | tar -xf - -C "$OUT"
du -sh "$OUT"/*
exit $status
