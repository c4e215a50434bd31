#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: installs what the tests need, then runs
# ruff, mypy --strict and pytest. Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q -e '.[test]'
# flagd-core 1.x (the plain murmur3 scheme) cannot be installed beside 2.x (CBOR scheme):
# keep it in its own folder; tests/test_bucketing.py loads its fractional() from there.
if [ ! -d .ci-deps/flagd-core-1 ]; then
    python -m pip install -q --no-deps --target .ci-deps/flagd-core-1 'openfeature-flagd-core==1.0.0'
fi

# Debian's prometheus gives promtool, which checks the example's rules and config; its
# post-install does not start a server. Installed once, when missing.
if ! command -v promtool >/dev/null 2>&1; then
    echo "== installing Debian's prometheus (promtool)"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        prometheus >/dev/null
fi

# Debian's redis-server: the redis:// store's tests start their own on a free 127.0.0.1 port
# (tests/redis_server.py); a service the package may start is not used. Installed once.
if ! command -v redis-server >/dev/null 2>&1; then
    echo "== installing Debian's redis-server"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        redis-server >/dev/null
fi

# Debian's chromium: tests/test_web_browser.py drives it headless through Playwright (from the
# test extra) with executable_path=/usr/bin/chromium: no browser download. Installed once.
if ! command -v chromium >/dev/null 2>&1; then
    echo "== installing Debian's chromium"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        chromium >/dev/null
fi

echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
# mypy sees the contrib folders under their import names through a symlinked tree.
tc=.ci-deps/typecheck/openfeature/contrib
mkdir -p "$tc/provider" "$tc/hook"
ln -sfn ../../../../../providers/canary "$tc/provider/canary"
ln -sfn ../../../../../hooks/canary "$tc/hook/canary"
echo "== mypy --strict"
MYPYPATH=.ci-deps/typecheck mypy --strict -p openfeature_canary \
    -p openfeature.contrib.provider.canary -p openfeature.contrib.hook.canary
# In parallel (pytest-xdist): most tests wait on servers, subprocesses and timers, not on a
# core, so more workers than cores. Measured on 2 shared cores: the whole suite took 9 min
# 20 s serially, 6-7 min with 4 workers (two CPU-bound two-day simulations of ~4.5 min each
# run beside everything else); 6 workers were slower than 4 and missed timing bounds.
# PYTEST_WORKERS=N overrides.
# --dist loadgroup keeps the modules that share a costly server fixture on one worker
# (tests/conftest.py), which also puts the longest tests first (--no-loadscope-reorder keeps
# that order); --durations=25 prints the slowest tests for CI.
echo "== pytest"
pytest -n "${PYTEST_WORKERS:-4}" --dist loadgroup --no-loadscope-reorder --durations=25 "$@"
