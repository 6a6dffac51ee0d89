#!/usr/bin/env bash
# `make run`: set up, start Redis (data under .k1/), migrate, then every Procfile process
# under honcho. Ctrl-C stops them all, and the Redis this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run

mkdir -p .k1/redis
if [ ! -f .env ]; then
    # Local secrets, generated once; .env is gitignored and read by honcho and `k1`.
    cat > .env <<ENV
K1_SECRET_KEY=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(48))')
K1_HOST=127.0.0.1
FLOWER_BASIC_AUTH=admin:$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(12))')
CONDUCTOR_SERVER_URL=http://127.0.0.1:8080/api
ENV
    echo "k1 run: wrote .env with a new K1_SECRET_KEY and Flower password"
fi
set -a
# shellcheck disable=SC1091
. ./.env
set +a
export PATH="$PWD/.venv/bin:$PATH"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export PORT="${PORT:-5000}" FLOWER_PORT="${FLOWER_PORT:-5555}"
# The local Conductor server (dev only) and where every process finds it.
export K1_CONDUCTOR_PORT="${K1_CONDUCTOR_PORT:-8080}"
export CONDUCTOR_SERVER_URL="${CONDUCTOR_SERVER_URL:-http://127.0.0.1:$K1_CONDUCTOR_PORT/api}"
export K1_EXTERNAL_SERVICE_PORT="${K1_EXTERNAL_SERVICE_PORT:-8090}"
export K1_EXTERNAL_SERVICE_URL="${K1_EXTERNAL_SERVICE_URL:-http://127.0.0.1:$K1_EXTERNAL_SERVICE_PORT}"

redis_port=$(python -c 'import os, urllib.parse as u; p = u.urlsplit(os.environ["REDIS_URL"]); print(p.port or 6379 if p.hostname in ("127.0.0.1", "localhost") else "")')
started_redis=""
if redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
    echo "k1 run: using the Redis already answering at $REDIS_URL"
elif [ -n "$redis_port" ]; then
    if [ -f .k1/redis.pid ] && ! kill -0 "$(cat .k1/redis.pid)" 2>/dev/null; then
        rm -f .k1/redis.pid  # left by a run that did not stop cleanly
    fi
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$PWD/.k1/redis" \
        --appendonly yes --daemonize yes --pidfile "$PWD/.k1/redis.pid" \
        --logfile "$PWD/.k1/redis/redis.log"
    for _ in $(seq 100); do redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -u "$REDIS_URL" ping >/dev/null || { echo "k1 run: Redis did not start" >&2; exit 1; }
    started_redis=1
    echo "k1 run: started Redis on port $redis_port (data in .k1/redis)"
else
    echo "k1 run: Redis at $REDIS_URL does not answer" >&2
    exit 1
fi

stop_redis() {
    if [ -n "$started_redis" ]; then
        redis-cli -u "$REDIS_URL" shutdown >/dev/null 2>&1 || true
        echo "k1 run: stopped Redis"
    fi
}
trap stop_redis EXIT

k1 db upgrade
echo
echo "  Dashboard   http://127.0.0.1:$PORT/"
echo "  API health  http://127.0.0.1:$PORT/api/health"
echo "  Flower      http://127.0.0.1:$FLOWER_PORT/  (user:password in .env, FLOWER_BASIC_AUTH)"
echo "  Conductor   $CONDUCTOR_SERVER_URL  (k1 workflows list)"
echo "  API token   .venv/bin/k1 token create --user you --project demo"
echo
# honcho gives web the port -p names; Ctrl-C reaches every process and honcho stops them.
status=0
# Dev only: the Procfile plus a local Conductor server (data in .k1/conductor) and the
# stand-in external service that k1.tasks.analyze_profile calls. Heroku's Procfile has
# neither: production points CONDUCTOR_SERVER_URL and K1_EXTERNAL_SERVICE_URL at real ones.
{
    cat Procfile
    echo "conductor-server: k1 conductor-server --port \$K1_CONDUCTOR_PORT"
    echo "external-service: k1 external-service --port \$K1_EXTERNAL_SERVICE_PORT"
} > .k1/Procfile.dev
honcho start -f .k1/Procfile.dev -p "$PORT" \
    web worker beat recorder conductor conductor-server external-service flower || status=$?
[ "$status" -eq 130 ] && status=0  # Ctrl-C is the normal way to stop
exit "$status"
