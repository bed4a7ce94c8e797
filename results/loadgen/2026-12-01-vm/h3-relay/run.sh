#!/usr/bin/env bash
# The HTTP/3 floor's cost: requests per CPU-second of `loadgen relay --h3` (HTTP/3 from the
# client, h2c to the upstream) beside `loadgen relay --h2 --tls` (h2 over TLS from the client,
# h2c to the upstream), interleaved rounds. Upstream and both relays pinned on CPU 1, generator on
# CPU 0; closed loop, 1 connection x 10 streams, no warmup. The relay's CPU is utime + stime of
# /proc/PID/stat around each run (clock ticks); the upstream's the same way, for reference.
# Usage (from the repository root, after cargo build --release -p loadgen):
#   flock /tmp/bench.lock results/loadgen/2026-12-01-vm/h3-relay/run.sh [ROUNDS] [SECONDS] > raw.txt
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
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
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "# date $(date -u +%Y-%m-%dT%H:%M:%SZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $(nproc) cpus; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $ROUNDS rounds x ${SECS}s closed loop, 1 connection x 10 streams, no warmup; upstream ($UADDR) and relays on cpu 1, generator on cpu 0; CLK_TCK $HZ"
echo "# h3: taskset -c 0 $BIN run --http3 --closed --streams 10 --connections 1 --url https://localhost:$P3/ --ca CA --duration ${SECS}s --warmup 0s --cpus 0"
echo "#     relay: taskset -c 1 $BIN relay --listen 127.0.0.1:0 --upstream $UADDR --h3 --cpus 1 --cert-out CA"
echo "# h2: taskset -c 0 $BIN run --http2 --closed --streams 10 --connections 1 --url https://localhost:$P2/ --ca CA --duration ${SECS}s --warmup 0s --cpus 0"
echo "#     relay: taskset -c 1 $BIN relay --listen 127.0.0.1:0 --upstream $UADDR --h2 --tls --cpus 1 --cert-out CA"
summary=()
for r in $(seq "$ROUNDS"); do
  for mode in h3 h2; do
    if [ "$mode" = h3 ]; then P=$R3; args=(--http3 --url "https://localhost:$P3/" --ca "$tmp/ca3.pem"); else P=$R2; args=(--http2 --url "https://localhost:$P2/" --ca "$tmp/ca2.pem"); fi
    t0=$(ticks "$P"); u0=$(ticks "$UP")
    echo "## round $r $mode: load average $(cut -d' ' -f1-3 /proc/loadavg)"
    taskset -c 0 "$BIN" run "${args[@]}" --closed --streams 10 --connections 1 --duration "${SECS}s" --warmup 0s --cpus 0 \
      --quiet --json "$tmp/j.json"
    t1=$(ticks "$P"); u1=$(ticks "$UP")
    line=$(python3 - "$mode" "$r" "$t0" "$t1" "$u0" "$u1" "$HZ" "$tmp/j.json" <<'PY'
import json, sys
mode, r, t0, t1, u0, u1, hz, p = sys.argv[1:]
j = json.load(open(p))
n = j["counts"]["responses"]
ok = j["status_codes"].get("200", 0)
cpu = (int(t1) - int(t0)) / int(hz)
up = (int(u1) - int(u0)) / int(hz)
print(f"{mode:<4} {r:<5} {n:>9} {ok:>9} {sum(j['errors'].values()):>6} {cpu:>9.2f} {n / cpu if cpu else 0:>12.0f} {cpu / n * 1e6 if n else 0:>9.1f} {up:>9.2f} {n / j['meta']['window_s']:>9.0f}")
PY
)
    echo "$line"
    summary+=("$line")
  done
done
echo "## summary"
printf '%-4s %-5s %9s %9s %6s %9s %12s %9s %9s %9s\n' mode round responses 200s errors relay_s req/relay-s us/req upstream_s req/s
printf '%s\n' "${summary[@]}"
echo "# end $(date -u +%Y-%m-%dT%H:%M:%SZ); load average $(cut -d' ' -f1-3 /proc/loadavg)"
