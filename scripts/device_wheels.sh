#!/usr/bin/env bash
# Wheels that the GPU machine of the `device` tool lacks, for training and benchmarks there.
# Its image has Python 3.12, torch (CUDA), transformers, tokenizers, typer, rich, pyyaml and pillow, but
# not pydantic, pydantic-settings, zss or python-barcode. Run this here (PyPI reachable), then name `.whl`
# in the run's `carry` and start its command with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
# Versions are those of this project's venv, so the machine runs what the tests ran.
# Usage: scripts/device_wheels.sh [OUT_DIR]   (default .whl, ignored by git)
set -euo pipefail
OUT=${1:-.whl}
PY=${PY:-.venv/bin/python}
BINARY=(pydantic pydantic-core pydantic-settings python-dotenv typing-inspection annotated-types python-barcode)
SOURCE_ONLY=(zss)  # published as a source archive only: built here into a pure-Python wheel
pin() { echo "$1==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1")"; }
mkdir -p "$OUT"
pins=()
for name in "${BINARY[@]}"; do pins+=("$(pin "$name")"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$OUT" "${pins[@]}"
for name in "${SOURCE_ONLY[@]}"; do "$PY" -m pip wheel -q --no-deps -w "$OUT" "$(pin "$name")"; done
ls -l "$OUT"
