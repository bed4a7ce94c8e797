#!/usr/bin/env bash
# Requests per CPU-second: `loadgen run --closed` vs `wrk -t1 -c50`, same upstream, same run,
# interleaved rounds. Upstream pinned on CPU 1, generator on CPU 0.
# Usage: loadgen/scripts/vs_wrk.sh [ROUNDS] [SECONDS]   (needs `apt-get install -y wrk`)
# Prints one line per round and generator, then the medians.
set -euo pipefail
ROUNDS=${1:-5}
SECS=${2:-10}
BIN=${LOADGEN:-target/release/loadgen}
command -v wrk >/dev/null || { echo "wrk not installed (apt-get install -y wrk)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'kill $UP 2>/dev/null || true; rm -rf "$tmp"' EXIT
taskset -c 1 "$BIN" upstream --listen 127.0.0.1:0 --body-bytes 100 > "$tmp/up" &
UP=$!
for _ in $(seq 50); do grep -q listening "$tmp/up" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^listening //p' "$tmp/up")
URL="http://$ADDR/"
echo "upstream $ADDR (cpu 1), generators on cpu 0, ${SECS}s per run, $ROUNDS rounds"
printf '%-8s %-6s %12s %10s %10s %14s\n' tool round requests user_s sys_s req_per_cpu_s
for r in $(seq "$ROUNDS"); do
  # wrk
  /usr/bin/time -f '%U %S' -o "$tmp/t" taskset -c 0 wrk -t1 -c50 -d"${SECS}s" "$URL" > "$tmp/w"
  n=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$tmp/w")
  read -r u s < "$tmp/t"
  printf '%-8s %-6s %12s %10s %10s %14.0f\n' wrk "$r" "$n" "$u" "$s" "$(echo "$n / ($u + $s)" | bc -l)" | tee -a "$tmp/res"
  # loadgen
  /usr/bin/time -f '%U %S' -o "$tmp/t" taskset -c 0 "$BIN" run --closed --url "$URL" --connections 50 \
    --duration "${SECS}s" --warmup 0s --quiet --json "$tmp/l.json" > /dev/null
  n=$(python3 -c "import json;print(json.load(open('$tmp/l.json'))['counts']['responses'])")
  read -r u s < "$tmp/t"
  printf '%-8s %-6s %12s %10s %10s %14.0f\n' loadgen "$r" "$n" "$u" "$s" "$(echo "$n / ($u + $s)" | bc -l)" | tee -a "$tmp/res"
done
for t in wrk loadgen; do
  awk -v t="$t" '$1==t {print $6, $3}' "$tmp/res" | sort -n | awk -v t="$t" '{v[NR]=$1; q[NR]=$2} END {m=int((NR+1)/2); printf "median %-8s %14.0f req/CPU-s  (%d requests in that round)\n", t, v[m], q[m]}'
done
