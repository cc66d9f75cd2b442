#!/usr/bin/env bash
# The current peer releases, from Debian's testing suite ("forky"), unpacked into .peers/ of this
# checkout: Prometheus 3.5 LTS (+ promtool), Alertmanager 0.33 (+ amtool), blackbox_exporter 0.28.
# Their binaries run on Debian 12.  Nothing is installed system-wide: a private sources list and
# apt state live under .peers/apt, and each package is unpacked with dpkg -x.
#
#   bash tools/fetch-peers.sh          # prints the bin folder to put first on PATH
#
# Cached: a second run with the same versions does nothing.  Fails if the versions are older
# than the ones the tests and benchmarks are written for.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="$PWD/.peers"
ROOT="$PEERS/root"
BIN="$ROOT/usr/bin"
want_prometheus=3.5
want_alertmanager=0.33
want_blackbox=0.28

version_of() { "$1" --version 2>&1 | grep -oE 'version [0-9]+\.[0-9]+\.[0-9]+' | head -1 | cut -d' ' -f2; }
at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

have() {
  [ -x "$BIN/prometheus" ] && [ -x "$BIN/prometheus-alertmanager" ] && [ -x "$BIN/prometheus-blackbox-exporter" ] \
    && at_least "$(version_of "$BIN/prometheus")" "$want_prometheus" \
    && at_least "$(version_of "$BIN/prometheus-alertmanager")" "$want_alertmanager" \
    && at_least "$(version_of "$BIN/prometheus-blackbox-exporter")" "$want_blackbox"
}

if ! have; then
  mkdir -p "$PEERS/apt/lists/partial" "$PEERS/apt/cache/archives/partial" "$PEERS/debs" "$ROOT"
  echo "deb http://deb.debian.org/debian forky main" > "$PEERS/apt/sources.list"
  apt_opts=(-o "Dir::Etc::sourcelist=$PEERS/apt/sources.list" -o "Dir::Etc::sourceparts=-"
            -o "Dir::State::Lists=$PEERS/apt/lists" -o "Dir::Cache=$PEERS/apt/cache"
            -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root" -q)
  apt-get "${apt_opts[@]}" update >/dev/null
  (cd "$PEERS/debs" && rm -f ./*.deb && apt-get "${apt_opts[@]}" download \
      prometheus promtool prometheus-alertmanager prometheus-blackbox-exporter >/dev/null)
  for deb in "$PEERS"/debs/*.deb; do dpkg -x "$deb" "$ROOT"; done
  have || { echo "fetch-peers: the unpacked binaries are not the expected versions" >&2; exit 1; }
fi
echo "prometheus $(version_of "$BIN/prometheus"), alertmanager $(version_of "$BIN/prometheus-alertmanager"), blackbox_exporter $(version_of "$BIN/prometheus-blackbox-exporter")" >&2
echo "$BIN"
