#!/usr/bin/env bash
# The default models' training chain is the command `donut-hole train-default` (see its --help):
#   .venv/bin/donut-hole train-default runs/default            teacher → anneal → student → evaluation
#   .venv/bin/donut-hole train-default --anneal 1000 runs/default
#   .venv/bin/donut-hole train-default --save runs/default
# This script only runs it, with the same arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m donut_hole train-default "$@"
