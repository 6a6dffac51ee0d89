#!/usr/bin/env bash
# `make run`: set up, start Redis (data under .k1/), migrate, then every Procfile process
# under honcho. Ctrl-C stops them all, and the Redis this script started.
#   scripts/run.sh [PROCESS...]   only these processes (default: all of them)
# Configuration: the environment, then .env for what it leaves unset (never the reverse).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run

mkdir -p .k1/redis
secret() { .venv/bin/python -c "import secrets; print(secrets.token_urlsafe($1))"; }
if [ ! -f .env ]; then
    # Local secrets, generated once; .env is gitignored and read by `k1` and this script.
    cat > .env <<ENV
K1_SECRET_KEY=$(secret 48)
K1_HOST=127.0.0.1
FLOWER_BASIC_AUTH=admin:$(secret 12)
REDIS_URL=redis://:$(secret 24)@127.0.0.1:6379/0
CONDUCTOR_SERVER_URL=http://127.0.0.1:8080/api
ENV
    chmod 600 .env
    echo "k1 run: wrote .env with a new K1_SECRET_KEY, Flower password and Redis password"
fi
# .env fills in only what the environment leaves unset, as in every k1 command: an
# exported K1_SECRET_KEY or FLOWER_BASIC_AUTH is never replaced by the file's.
dotenv_exports=$(.venv/bin/k1 env --export)  # a failure stops the script (set -e)
eval "$dotenv_exports"
export PATH="$PWD/.venv/bin:$PATH"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export PORT="${PORT:-5000}" FLOWER_PORT="${FLOWER_PORT:-5555}"
# The local Conductor server (dev only) and where every process finds it.
export K1_CONDUCTOR_PORT="${K1_CONDUCTOR_PORT:-8080}"
export CONDUCTOR_SERVER_URL="${CONDUCTOR_SERVER_URL:-http://127.0.0.1:$K1_CONDUCTOR_PORT/api}"
export K1_EXTERNAL_SERVICE_PORT="${K1_EXTERNAL_SERVICE_PORT:-8090}"
export K1_EXTERNAL_SERVICE_URL="${K1_EXTERNAL_SERVICE_URL:-http://127.0.0.1:$K1_EXTERNAL_SERVICE_PORT}"

# The local Redis this script may start: its port, and the password REDIS_URL names.
read -r redis_port redis_password < <(python - <<'PY'
import os, urllib.parse as u
p = u.urlsplit(os.environ["REDIS_URL"])
local = p.hostname in ("127.0.0.1", "localhost") and p.scheme == "redis"
print(p.port or 6379 if local else "-", u.unquote(p.password or "") or "-")
PY
)
redis_shown=$(python -c 'import os; from k1.settings import redact; print(redact(os.environ["REDIS_URL"]))')
# redis-py, not redis-cli: `redis-cli -u redis://:PASSWORD@...` fails to authenticate.
redis_do() {
    python -c 'import os, sys, redis
r = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2)
getattr(r, sys.argv[1])()' "$1" 2>/dev/null
}
started_redis=""
if redis_do ping; then
    echo "k1 run: using the Redis already answering at $redis_shown"
elif [ "$redis_port" != "-" ]; then
    if [ -f .k1/redis.pid ] && ! kill -0 "$(cat .k1/redis.pid)" 2>/dev/null; then
        rm -f .k1/redis.pid  # left by a run that did not stop cleanly
    fi
    # The password goes in a private config file, not on a command line `ps` shows.
    (umask 077; : > .k1/redis.conf)
    if [ "$redis_password" != "-" ]; then
        echo "requirepass \"$redis_password\"" > .k1/redis.conf
    else
        echo "k1 run: Redis runs WITHOUT a password (this .env predates them). To add one," \
             "stop make run, then: echo REDIS_URL=redis://:$(secret 24)@127.0.0.1:$redis_port/0 >> .env" >&2
    fi
    redis-server "$PWD/.k1/redis.conf" --port "$redis_port" --bind 127.0.0.1 \
        --dir "$PWD/.k1/redis" --appendonly yes --daemonize yes \
        --pidfile "$PWD/.k1/redis.pid" --logfile "$PWD/.k1/redis/redis.log"
    for _ in $(seq 50); do redis_do ping && break; sleep 0.1; done
    redis_do ping || { echo "k1 run: Redis did not start (log: .k1/redis/redis.log)" >&2; exit 1; }
    started_redis=1
    echo "k1 run: started Redis on port $redis_port (data in .k1/redis)"
else
    echo "k1 run: Redis at $redis_shown does not answer" >&2
    exit 1
fi

stop_redis() {
    if [ -n "$started_redis" ]; then
        redis_do shutdown || true
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
# The operator's sign-in link (a short-lived, single-use token the page exchanges), when
# this version of k1 has the command.
if k1 token signin-link --help >/dev/null 2>&1; then
    echo "  Sign in     $(k1 token signin-link --base-url "http://127.0.0.1:$PORT")"
fi
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
# `-e /dev/null`: honcho would otherwise apply .env over the environment in every child.
[ "$#" -gt 0 ] || set -- web worker beat recorder conductor conductor-server external-service flower
honcho start -e /dev/null -f .k1/Procfile.dev -p "$PORT" "$@" || status=$?
[ "$status" -eq 130 ] && status=0  # Ctrl-C is the normal way to stop
exit "$status"
