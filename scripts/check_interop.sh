#!/usr/bin/env bash
# Stock transformers 4.x reads this project's model folders as `donut-hole predict` does.
#
# In a second virtual environment (VENV4, default .venv-tf4: torch 2.13.0 and transformers 4.57, made when
# missing), scripts/read_with_stock_transformers.py (stock DonutProcessor + VisionEncoderDecoderModel, no
# donut_hole import) reads three scans with both shipped models and with a fresh `compress` output
# (vocabulary pruned); each must give the fields `donut-hole predict` gives. `make test` runs it last.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
VENV4=${VENV4:-.venv-tf4}
if ! "$VENV4/bin/python" -c 'import sys, transformers; sys.exit(not transformers.__version__.startswith("4.57."))' 2>/dev/null; then
    echo "interop: making $VENV4 (torch 2.13.0, transformers 4.57)"
    python3 -m venv "$VENV4"
    "$VENV4/bin/python" -m pip install --quiet torch==2.13.0 'transformers==4.57.*' pillow \
        >"$VENV4/install.log" 2>&1 || { tail -20 "$VENV4/install.log"; exit 1; }
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$BIN/donut-hole" synth --kind all --n 3 --seed 2024 --out "$WORK/scans" >/dev/null
"$BIN/donut-hole" compress --teacher models/teacher-small --recipe configs/donut-hole-cpu.yaml --steps 0 \
    --set prune.target_density=1.0 --set prune.vocabulary=true --set data=null --train "$WORK/scans" \
    --val "$WORK/scans" --set report.cka_samples=4 --set report.latency_samples=1 \
    --set report.latency_repeats=1 --out "$WORK/student" >/dev/null 2>&1
SCANS=("$WORK"/scans/*.jpg)
for model in models/teacher-small models/donut-hole-small "$WORK/student/model"; do
    label=$model
    [[ $model == "$WORK"/* ]] && label="a compress output (vocabulary pruned)"
    "$BIN/donut-hole" predict --model "$model" "${SCANS[@]}" >"$WORK/ours.jsonl"
    "$VENV4/bin/python" scripts/read_with_stock_transformers.py "$model" "${SCANS[@]}" \
        >"$WORK/stock.jsonl" 2>"$WORK/stock.log" || { cat "$WORK/stock.log"; exit 1; }
    "$BIN/python" - "$label" "$WORK/ours.jsonl" "$WORK/stock.jsonl" <<'PY'
import json, sys
name, ours, stock = sys.argv[1], *(
    [json.loads(line) for line in open(path) if line.startswith("{")] for path in sys.argv[2:]
)
assert len(ours) == len(stock) == 3, (len(ours), len(stock))
for a, b in zip(ours, stock):
    assert a["fields"] == b["fields"], f"{name}: {a['file']}: donut-hole {a['fields']} != stock {b['fields']}"
print(f"interop: transformers 4.57 reads {name} as donut-hole predict does (3 scans)")
PY
done
