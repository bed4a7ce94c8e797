#!/usr/bin/env bash
# One `loadgen hold` run against the release proxy (issue 14): one worker on CPU 1, `loadgen
# upstream` and `loadgen hold` on CPU 0; the proxy's environment can be set (e.g. jemalloc's
# `_RJEM_MALLOC_CONF=tcache:false`) and `loadgen hold` given more flags (HOLD_ARGS, e.g.
# `--partial-head`). Writes OUT/NAME.json (the hold report) and OUT/NAME.txt.
#   scripts/memory-hold.sh OUT NAME COUNTS [VAR=value ...]
#   e.g. scripts/memory-hold.sh /tmp/m base 1000,10000,10000,1000
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n 2,7p "$0"; exit 2; }
OUT=$1 NAME=$2 COUNTS=$3; shift 3
mkdir -p "$OUT"
cargo build -q --release -p proxy -p loadgen
B=${CARGO_TARGET_DIR:-target}/release
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"; kill $(jobs -p) 2>/dev/null || true' EXIT
cat > "$tmp/proxy.toml" <<TOML
[server]
workers = 1
[[listeners]]
address = "127.0.0.1:18380"
[limits]
max_connections = 20000
client_idle_timeout = "5m"
header_read_timeout = "5m"
[[routes]]
upstream = "o"
[upstreams.o]
servers = ["127.0.0.1:18390"]
TOML
taskset -c 0 "$B/loadgen" upstream --listen 127.0.0.1:18390 --body-bytes 100 >/dev/null 2>&1 & up=$!
env "$@" taskset -c 1 "$B/proxy" --config "$tmp/proxy.toml" >/dev/null 2>&1 & px=$!
sleep 1
# shellcheck disable=SC2086
taskset -c 0 "$B/loadgen" hold --url http://127.0.0.1:18380/ --pid "$px" --connections "$COUNTS" \
  --settle 2.5s ${HOLD_ARGS:-} --json "$OUT/$NAME.json" | tee "$OUT/$NAME.txt"
kill "$px" "$up"; wait "$px" "$up" 2>/dev/null || true
