#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, then runs pytest.
#   bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Real Prometheus, Alertmanager and docker-compose from Debian (tests start the binaries).
missing=()
for pair in prometheus:prometheus promtool:prometheus prometheus-alertmanager:prometheus-alertmanager \
            amtool:prometheus-alertmanager docker-compose:docker-compose systemd-analyze:systemd \
            chromium:chromium node:nodejs npm:npm; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -q
  as_root apt-get install -y -q --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
fi

# The SQL tests use the machine's PostgreSQL (127.0.0.1:5432, trust auth, database test) and
# MariaDB (127.0.0.1:3306, root without password, database test), and Redis below.  Start them if they stopped;
# if they cannot be reached, the SQL tests fail (they never skip).
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && command -v pg_ctlcluster >/dev/null; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null && [ -x /usr/sbin/mariadbd ]; then
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  for _ in $(seq 30); do (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null && break; sleep 1; done
fi

# Redis (127.0.0.1:6379) for the consistency kind's Redis source tests.
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  command -v redis-server >/dev/null || { export DEBIAN_FRONTEND=noninteractive; as_root apt-get install -y -q --no-install-recommends redis-server; }
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no || true
  for _ in $(seq 30); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 1; done
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 'setuptools>=77' wheel
.venv/bin/python -m pip install --quiet -e '.[test]'

# prometheus-operator's CRD schemas for the Kubernetes manifest test, pinned by the lock file.
if [ ! -d tests/crd/node_modules/@kubernetes-models/prometheus-operator ]; then
  npm ci --prefix tests/crd --no-audit --no-fund --silent
fi

# The same end-to-end, alerting and dashboard tests run a second time against the releases users
# run now: Prometheus 3.5 LTS and Alertmanager 0.33, unpacked from Debian testing into .peers/ (no
# system install).  Skipped only when specific tests were asked for.  The second pass runs beside
# the first (the tests mostly wait on real processes; each pass takes its own half of the test
# ports, its own temporary directory and uniquely named database schemas); its output follows the
# first's.  Both passes run and report even when one fails; the script fails if either did.
second_pass=1
for arg in "$@"; do case "$arg" in -*) ;; *) second_pass=0 ;; esac; done
second=0
if [ "$second_pass" = 1 ]; then
  peers_bin="$(bash tools/fetch-peers.sh)"
  second_log="$(mktemp)"
  second_tmp="$(mktemp -d)"
  # (The tests that start Prometheus or Alertmanager and read what they computed or delivered.)
  PATH="$peers_bin:$PATH" STACKWATCH_TEST_PORTS=1/2 .venv/bin/python -m pytest "$@" -p no:cacheprovider \
    --basetemp "$second_tmp/basetemp" tests/test_e2e.py tests/test_alerting.py tests/test_dashboards.py \
    tests/test_alert_truth.py tests/test_documented_paths.py tests/test_distributed.py >"$second_log" 2>&1 &
  second_pid=$!
  trap 'kill "$second_pid" 2>/dev/null || true; rm -rf "$second_log" "$second_tmp"' EXIT
fi

first=0
STACKWATCH_TEST_PORTS=0/2 .venv/bin/python -m pytest "$@" || first=$?
[ "$second_pass" = 1 ] || exit "$first"

wait "$second_pid" || second=$?
echo "--- second pass: Prometheus 3.5, Alertmanager 0.33 ---"
cat "$second_log"
if [ "$first" != 0 ] || [ "$second" != 0 ]; then
  echo "tests/run.sh: first pass exit $first, second pass (Prometheus 3.5, Alertmanager 0.33) exit $second" >&2
  exit 1
fi
