#!/usr/bin/env bash
# Create or update the development virtualenv (.venv) from pyproject.toml. Idempotent: it does
# nothing when pyproject.toml has not changed since the last successful run.
#   hack/venv.sh bench   also the benchmark extras (matplotlib), for make bench; a stamp of its own
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$py" -m venv .venv
fi
extras=dev stamp=.venv/.necrocode-stamp probe=necrocode
case ${1:-} in
  "") ;;
  bench) extras=dev,bench stamp=.venv/.necrocode-bench-stamp probe=matplotlib ;;
  *) echo "usage: hack/venv.sh [bench]" >&2; exit 2 ;;
esac
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]] && .venv/bin/python -c "import necrocode, $probe" 2>/dev/null; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
echo "$want" >"$stamp"
