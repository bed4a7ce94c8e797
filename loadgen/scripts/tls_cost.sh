#!/usr/bin/env bash
# Requests per CPU-second of the generator at one open-loop rate: cleartext, TLS with kept
# connections, and TLS with a new connection (a handshake) per request, interleaved rounds.
# Upstreams (cleartext and --tls) pinned on CPU 1, the generator on CPU 0, 16 connections,
# no warmup (so the CPU time covers exactly the requests counted).
# Usage: loadgen/scripts/tls_cost.sh [ROUNDS] [RATE] [SECONDS]
# Prints one line per round and mode, then the medians.
set -euo pipefail
ROUNDS=${1:-3}
RATE=${2:-2000}
SECS=${3:-5}
BIN=${LOADGEN:-target/release/loadgen}
tmp=$(mktemp -d)
trap 'kill $UP1 $UP2 2>/dev/null || true; rm -rf "$tmp"' EXIT
taskset -c 1 "$BIN" upstream --listen 127.0.0.1:0 --body-bytes 100 > "$tmp/up1" &
UP1=$!
taskset -c 1 "$BIN" upstream --listen 127.0.0.1:0 --body-bytes 100 --tls --cert-out "$tmp/ca.pem" > "$tmp/up2" &
UP2=$!
for _ in $(seq 50); do grep -q listening "$tmp/up1" "$tmp/up2" 2>/dev/null && [ -s "$tmp/up2" ] && break; sleep 0.1; done
PLAIN=$(sed -n 's/^listening //p' "$tmp/up1")
TLS_PORT=$(sed -n 's/^listening 127.0.0.1://p' "$tmp/up2")
echo "rate $RATE req/s, ${SECS}s per run, $ROUNDS rounds; upstreams on cpu 1, generator on cpu 0; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-11s %-5s %9s %6s %6s %8s %7s %7s %9s %10s %10s\n' mode round responses errors full resumed user_s sys_s req/cpu_s p50_us p99_us
one() { # mode args...
  local mode=$1; shift
  /usr/bin/time -f '%U %S' -o "$tmp/t" taskset -c 0 "$BIN" run "$@" --rate "$RATE" --duration "${SECS}s" --warmup 0s \
    --connections 16 --max-lag 25ms --quiet --allow-invalid --json "$tmp/j.json" > /dev/null
  read -r u s < "$tmp/t"
  python3 - "$mode" "$r" "$u" "$s" "$tmp/j.json" <<'PY' | tee -a "$tmp/res"
import json, sys
mode, r, u, s, p = sys.argv[1:]
j = json.load(open(p))
n = j["counts"]["responses"]
cpu = float(u) + float(s)
print(f"{mode:<11} {r:<5} {n:>9} {sum(j['errors'].values()):>6} {j['handshakes']['full']:>6} {j['handshakes']['resumed']:>8} "
      f"{u:>7} {s:>7} {n / cpu if cpu else 0:>9.0f} {j['latency']['corrected']['p50_us']:>10.0f} {j['latency']['corrected']['p99_us']:>10.0f}")
PY
}
for r in $(seq "$ROUNDS"); do
  one http --url "http://$PLAIN/"
  one https --url "https://localhost:$TLS_PORT/" --ca "$tmp/ca.pem"
  one https-new1 --url "https://localhost:$TLS_PORT/" --ca "$tmp/ca.pem" --new-connection-every 1
done
echo "medians (req/cpu_s):"
for m in http https https-new1; do
  printf '  %-11s %s\n' "$m" "$(awk -v m="$m" '$1==m {print $9}' "$tmp/res" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
done
