#!/usr/bin/env bash
# Run the reference rollout plan end to end in virtual time (installs the package on first use).
# Usage: bash scripts/demo.sh [--fault latency|errors|mismatch|lag] [--fault-at STAGE] [--metrics-port N]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c 'import openfeature_canary, openfeature.contrib.hook.canary' 2>/dev/null; then
    python -m pip install -q --upgrade pip >/dev/null
    python -m pip install -q -e .
fi
exec openfeature-canary demo --plan examples/canary_plan.toml "$@"
