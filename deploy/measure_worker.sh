#!/usr/bin/env bash
# Measure the memory of a real `donut-hole worker` (Celery parent + pool processes) after it has read a
# few scans: the number behind the worker pods' memory requests. Runs on the embedded defaults (SQLite
# database and broker, local object store), so it needs no services.
#
#   deploy/measure_worker.sh MODEL_DIR [CONCURRENCY] [N_SCANS]
#
# Prints VmRSS / VmHWM (peak) / Pss of each process; the sum of Pss is what the processes take together
# (shared pages counted once), i.e. close to what a container's memory cgroup charges.
set -euo pipefail

model="${1:?usage: deploy/measure_worker.sh MODEL_DIR [CONCURRENCY] [N_SCANS]}"
concurrency="${2:-1}"
n="${3:-8}"
bin="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

export DONUT_HOLE_DATA_DIR="$work/var" DONUT_HOLE_MODEL_PATH="$model"
export DONUT_HOLE_TORCH_THREADS="${DONUT_HOLE_TORCH_THREADS:-2}" DONUT_HOLE_BATCH_SIZE="${DONUT_HOLE_BATCH_SIZE:-4}"

"$bin/donut-hole" migrate >/dev/null
"$bin/donut-hole" synth --out "$work/scans" --n "$n" >/dev/null
"$bin/donut-hole" worker --concurrency "$concurrency" --queues cpu >"$work/worker.log" 2>&1 &
worker=$!
batch="$("$bin/donut-hole" enqueue "$work/scans" 2>&1 | grep -oE '[0-9a-f]{8}-[0-9a-f-]{27}' | head -n1)"

finished=""
for _ in $(seq 600); do
    finished="$("$bin/donut-hole" results --batch "$batch" --format json 2>/dev/null | "$bin/python" -c \
        'import json, sys; c = json.load(sys.stdin)["counts"]; print(c["done"] + c["failed"] == c["total"])' \
        2>/dev/null || true)"
    [ "$finished" = "True" ] && break
    sleep 1
done
[ "$finished" = "True" ] || { echo "the worker did not finish in 10 minutes; log: $work/worker.log" >&2; exit 1; }

total_pss=0
for pid in "$worker" $(pgrep -P "$worker"); do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
    pss=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup")
    total_pss=$((total_pss + pss))
    printf 'pid %-7s rss %5d MiB  peak %5d MiB  pss %5d MiB\n' "$pid" $((rss / 1024)) $((hwm / 1024)) $((pss / 1024))
done
printf 'worker total pss %d MiB (concurrency %s, %s scans)\n' $((total_pss / 1024)) "$concurrency" "$n"
kill -TERM "$worker"
wait "$worker"
