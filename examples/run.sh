#!/usr/bin/env bash
# Run stackwatch on the example platform: http://127.0.0.1:9938/ (status page) and /metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/stackwatch ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[test]'
fi
.venv/bin/python examples/demo_platform.py --port 18500 &
platform=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/18500) 2>/dev/null && break; sleep 0.1; done
trap 'kill $platform 2>/dev/null' EXIT
.venv/bin/stackwatch --config.file examples/stackwatch.yml --web.listen-address 127.0.0.1:9938 "$@"
