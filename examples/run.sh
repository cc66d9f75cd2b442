#!/usr/bin/env bash
# `stackwatch demo` from a fresh clone: creates .venv if needed, then runs a simulated platform
# with the seed documents' failures and stackwatch watching it (http://127.0.0.1:9938/).
#   ./examples/run.sh [--with-prometheus]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/stackwatch ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[test]'
fi
exec .venv/bin/stackwatch demo "$@"
