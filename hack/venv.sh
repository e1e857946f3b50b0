#!/usr/bin/env bash
# Create or update the development virtualenv (.venv) from pyproject.toml. Idempotent: it does
# nothing when pyproject.toml has not changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$py" -m venv .venv
fi
stamp=.venv/.necrocode-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]] && .venv/bin/python -c 'import necrocode' 2>/dev/null; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
echo "$want" >"$stamp"
