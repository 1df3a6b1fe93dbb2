#!/usr/bin/env bash
# Set-up of the test suite, run by `make test` (and so by .ci/run): start PostgreSQL and Redis on
# 127.0.0.1 when they are not running, and install the offline compose parser (`docker-compose config`,
# used by tests/deploy; no Docker engine is needed) when it is missing. Safe to run again: it only acts
# on what is missing. DONUT_HOLE_TEST_SKIP_SETUP=1 leaves everything as it is (services elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "${DONUT_HOLE_TEST_SKIP_SETUP:-0}" = 1 ] && exit 0

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        echo "test set-up: '$*' needs root (or sudo); run it once, or start the service yourself" >&2
        return 1
    fi
}

apt_install() {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v pg_isready >/dev/null 2>&1 || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "test set-up: installing PostgreSQL"
    apt_install postgresql
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "test set-up: starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
    for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "test set-up: installing Redis"
    apt_install redis-server
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "test set-up: starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/test.log
    for _ in $(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi

pg_isready -h 127.0.0.1 -p 5432 -q || { echo "test set-up: PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { echo "test set-up: Redis is not reachable on 127.0.0.1:6379" >&2; exit 1; }

if ! command -v docker-compose >/dev/null 2>&1; then
    echo "test set-up: installing docker-compose (the compose parser tests/deploy uses)"
    apt_install docker-compose
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "test set-up: installing Chromium and its driver (the review page's browser test)"
    apt_install chromium chromium-driver
fi
