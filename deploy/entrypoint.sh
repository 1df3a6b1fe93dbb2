#!/usr/bin/env bash
# Entry point of the donut-hole image: one image, one role per container.
#
#   api                  donut-hole api --host $DONUT_HOLE_API_HOST --port $DONUT_HOLE_API_PORT
#   worker               donut-hole worker --concurrency $DONUT_HOLE_WORKER_CONCURRENCY --queues $DONUT_HOLE_QUEUE
#                        [--metrics-port $DONUT_HOLE_METRICS_PORT]   (Prometheus /metrics, when set)
#   migrate              donut-hole migrate             (Alembic upgrade head on DONUT_HOLE_DATABASE_URL)
#   enqueue|results|purge|...  donut-hole <that command> ARGS...
#   anything else        run as given (sh, celery, python, ...)
#
# Extra arguments are appended to the donut-hole command. The last step is `exec`, so the process gets
# the container's signals itself (SIGTERM: uvicorn shuts down, Celery does a warm shutdown and finishes
# the tasks in flight). With DONUT_HOLE_DRY_RUN=1 it prints the command and the DONUT_HOLE_* settings
# (passwords and API keys masked) instead of running it; the deploy tests use that.
set -euo pipefail

role="${1:-api}"
[ "$#" -gt 0 ] && shift

case "$role" in
    api)
        set -- donut-hole api \
            --host "${DONUT_HOLE_API_HOST:-0.0.0.0}" \
            --port "${DONUT_HOLE_API_PORT:-8000}" "$@"
        ;;
    worker)
        metrics=()
        if [ -n "${DONUT_HOLE_METRICS_PORT:-}" ]; then
            metrics=(--metrics-port "$DONUT_HOLE_METRICS_PORT")
        fi
        set -- donut-hole worker \
            --concurrency "${DONUT_HOLE_WORKER_CONCURRENCY:-1}" \
            --queues "${DONUT_HOLE_QUEUE:-cpu}" "${metrics[@]}" "$@"
        ;;
    migrate | enqueue | results | delete | purge | demo | synth | predict | evaluate | train | compress)
        set -- donut-hole "$role" "$@"
        ;;
    donut-hole)
        set -- donut-hole "$@"
        ;;
    *)
        set -- "$role" "$@"
        ;;
esac

if [ "${DONUT_HOLE_DRY_RUN:-0}" = "1" ]; then
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
    # user:password@ in URLs and the API keys never reach the output.
    env | grep '^DONUT_HOLE_' | grep -v '^DONUT_HOLE_DRY_RUN=' | LC_ALL=C sort \
        | sed -E -e 's#(://[^:/@]*):.*@#\1:***@#' -e 's#^(DONUT_HOLE_API_KEYS)=.*#\1=***#' || true
    exit 0
fi

exec "$@"
