#!/usr/bin/env bash
# Creates .venv with the pinned requirements, or re-uses it when requirements.txt has not changed.
# Needs only python3 (>= 3.10) with venv and the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt requirements-nodeps.txt setup.cfg | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup: installing the pinned environment into .venv (about 2 minutes)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
