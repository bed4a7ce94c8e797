#!/usr/bin/env bash
# System calls per request of `relay --h3` and `relay --h2 --tls` (the same set-up as run.sh):
# `strace -c -f -p RELAY` around an open-loop run at RATE req/s on 1 connection x 10 streams.
# Usage: results/loadgen/2026-12-01-vm/h3-relay/strace.sh [RATE] [SECONDS] > strace.txt
set -euo pipefail
RATE=${1:-4000}
SECS=${2:-2}
BIN=${LOADGEN:-target/release/loadgen}
tmp=$(mktemp -d)
trap 'kill $UP $R3 $R2 2>/dev/null || true; rm -rf "$tmp"' EXIT
wait_line() { for _ in $(seq 100); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "no listening line in $1" >&2; exit 1; }
taskset -c 1 "$BIN" upstream --listen 127.0.0.1:0 --body-bytes 100 --cpus 1 > "$tmp/up" &
UP=$!
wait_line "$tmp/up"
UADDR=$(sed -n 's/^listening //p' "$tmp/up")
taskset -c 1 "$BIN" relay --listen 127.0.0.1:0 --upstream "$UADDR" --h3 --cpus 1 --cert-out "$tmp/ca3.pem" > "$tmp/r3" &
R3=$!
taskset -c 1 "$BIN" relay --listen 127.0.0.1:0 --upstream "$UADDR" --h2 --tls --cpus 1 --cert-out "$tmp/ca2.pem" > "$tmp/r2" &
R2=$!
wait_line "$tmp/r3"
wait_line "$tmp/r2"
P3=$(sed -n 's/^listening 127.0.0.1://p' "$tmp/r3")
P2=$(sed -n 's/^listening 127.0.0.1://p' "$tmp/r2")
echo "# date $(date -u +%Y-%m-%dT%H:%M:%SZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# open loop $RATE req/s for ${SECS}s, no warmup, 1 connection x 10 streams; strace -c -f -p RELAY around the run (the connection is opened inside it)"
for mode in h3 h2; do
  if [ "$mode" = h3 ]; then P=$R3; args=(--http3 --url "https://localhost:$P3/" --ca "$tmp/ca3.pem"); else P=$R2; args=(--http2 --url "https://localhost:$P2/" --ca "$tmp/ca2.pem"); fi
  strace -c -f -p "$P" -o "$tmp/s.txt" &
  S=$!
  sleep 0.5
  echo "## $mode"
  taskset -c 0 "$BIN" run "${args[@]}" --streams 10 --connections 1 --rate "$RATE" --duration "${SECS}s" --warmup 0s --cpus 0 \
    --max-lag 25ms --allow-invalid --quiet --json "$tmp/j.json" | grep -E '^  (run|rate|status|errors)'
  sleep 0.3
  kill -INT $S; wait $S || true
  cat "$tmp/s.txt"
done
