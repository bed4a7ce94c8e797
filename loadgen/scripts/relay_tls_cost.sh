#!/usr/bin/env bash
# CPU per request of the relay floor: `loadgen relay` (cleartext bytes) against
# `loadgen relay --tls` (terminates TLS, relays the plaintext), interleaved rounds.
# The upstream and both relays pinned on CPU 1, the generator on CPU 0, open loop at RATE on
# 16 kept connections, no warmup. The relay's CPU is utime + stime of /proc/PID/stat around each
# run (clock ticks: use runs of a few seconds so one tick is well under 1 %).
# Usage: loadgen/scripts/relay_tls_cost.sh [ROUNDS] [RATE] [SECONDS]
set -euo pipefail
ROUNDS=${1:-3}
RATE=${2:-4000}
SECS=${3:-5}
BIN=${LOADGEN:-target/release/loadgen}
tmp=$(mktemp -d)
trap 'kill $UP $R1 $R2 2>/dev/null || true; rm -rf "$tmp"' EXIT
taskset -c 1 "$BIN" upstream --listen 127.0.0.1:0 --body-bytes 100 > "$tmp/up" &
UP=$!
for _ in $(seq 50); do [ -s "$tmp/up" ] && break; sleep 0.1; done
UADDR=$(sed -n 's/^listening //p' "$tmp/up")
taskset -c 1 "$BIN" relay --listen 127.0.0.1:0 --upstream "$UADDR" > "$tmp/r1" &
R1=$!
taskset -c 1 "$BIN" relay --listen 127.0.0.1:0 --upstream "$UADDR" --tls --cert-out "$tmp/ca.pem" > "$tmp/r2" &
R2=$!
for _ in $(seq 50); do [ -s "$tmp/r1" ] && [ -s "$tmp/r2" ] && break; sleep 0.1; done
PLAIN=$(sed -n 's/^listening //p' "$tmp/r1")
TLS_PORT=$(sed -n 's/^listening 127.0.0.1://p' "$tmp/r2")
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "rate $RATE req/s, ${SECS}s per run, $ROUNDS rounds; upstream and relays on cpu 1, generator on cpu 0; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-5s %9s %6s %10s %12s %10s %6s\n' mode round responses errors relay_cpu_s us/request p50_us valid
for r in $(seq "$ROUNDS"); do
  for mode in plain tls; do
    if [ "$mode" = plain ]; then P=$R1; args=(--url "http://$PLAIN/"); else P=$R2; args=(--url "https://localhost:$TLS_PORT/" --ca "$tmp/ca.pem"); fi
    t0=$(ticks "$P")
    taskset -c 0 "$BIN" run "${args[@]}" --rate "$RATE" --duration "${SECS}s" --warmup 0s --connections 16 \
      --max-lag 25ms --quiet --allow-invalid --json "$tmp/j.json" > /dev/null
    t1=$(ticks "$P")
    python3 - "$mode" "$r" "$t0" "$t1" "$HZ" "$tmp/j.json" <<'PY'
import json, sys
mode, r, t0, t1, hz, p = sys.argv[1:]
j = json.load(open(p))
n = j["counts"]["responses"]
cpu = (int(t1) - int(t0)) / int(hz)
print(f"{mode:<6} {r:<5} {n:>9} {sum(j['errors'].values()):>6} {cpu:>10.2f} {cpu / n * 1e6 if n else 0:>12.1f} "
      f"{j['latency']['corrected']['p50_us']:>10.0f} {str(j['valid']):>6}")
PY
  done
done
