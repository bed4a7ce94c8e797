#!/usr/bin/env bash
# loadgen --http2 against h2load (Debian nghttp2-client) on the same origin, same run,
# interleaved rounds; upstreams (cleartext h2c and TLS h2) pinned on CPU 1, generators on CPU 0.
#
# 1. Low load, per protocol (h2c, h2 over TLS): 1 connection, 1 stream, RATE req/s for SECS s.
#      h2load -n RATE*SECS -c 1 -m 1 --rps RATE --log-file LOG URL
#      loadgen run --http2 --connections 1 --streams 1 --rate RATE --duration SECS --warmup 0s
#    Compared: requests answered 200 (same counts) and median latency (h2load: from its
#    per-request log, time from its send to the end of the response; loadgen: service time,
#    the same thing, and corrected latency, from the intended send time).
# 2. Cost, h2c, 1 connection, 10 streams, closed loop for SECS s (both as fast as they go):
#      h2load -c 1 -m 10 -D SECS URL
#      loadgen run --closed --http2 --connections 1 --streams 10 --duration SECS --warmup 0s
#    Requests per CPU-second (user + sys of the generator from /usr/bin/time).
# Usage: loadgen/scripts/vs_h2load.sh [ROUNDS] [RATE] [SECS]
set -euo pipefail
ROUNDS=${1:-3}
RATE=${2:-200}
SECS=${3:-5}
BIN=${LOADGEN:-target/release/loadgen}
command -v h2load > /dev/null || { echo "h2load not found: apt-get install -y nghttp2-client" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill $UP1 $UP2 2>/dev/null || true; rm -rf "$tmp"' EXIT
taskset -c 1 "$BIN" upstream --listen 127.0.0.1:0 --body-bytes 100 > "$tmp/up1" &
UP1=$!
taskset -c 1 "$BIN" upstream --listen 127.0.0.1:0 --body-bytes 100 --tls --cert-out "$tmp/ca.pem" > "$tmp/up2" &
UP2=$!
for _ in $(seq 50); do [ -s "$tmp/up1" ] && [ -s "$tmp/up2" ] && break; sleep 0.1; done
PLAIN=$(sed -n 's/^listening //p' "$tmp/up1")
TLS_PORT=$(sed -n 's/^listening 127.0.0.1://p' "$tmp/up2")
N=$((RATE * SECS))
echo "h2load: $(h2load --version | head -1); loadgen: $("$BIN" --version 2>/dev/null || echo loadgen) at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "low load: $RATE req/s, ${SECS}s, 1 connection, 1 stream; cost: closed loop, 1 connection, 10 streams, ${SECS}s; $ROUNDS rounds; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-5s %-8s %9s %9s %8s %12s %12s\n' proto round tool requests ok_200 errors p50_us corr_p50_us
low() { # proto url [loadgen args...]
  local proto=$1 url=$2; shift 2
  taskset -c 0 h2load -n "$N" -c 1 -m 1 --rps "$RATE" --log-file="$tmp/h2.log" "$url" > "$tmp/h2.out" 2>&1 || true
  python3 - "$proto" "$r" "$tmp/h2.out" "$tmp/h2.log" <<'PY' | tee -a "$tmp/res"
import re, sys
proto, r, out, log = sys.argv[1:]
text = open(out).read()
m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
total, done, ok, failed, errored = (int(x) for x in m.groups()) if m else (0, 0, 0, 0, 0)
s2 = re.search(r"status codes: (\d+) 2xx", text)
lat = sorted(int(l.split("\t")[2]) for l in open(log) if l.count("\t") == 2 and l.split("\t")[1] == "200")
p50 = lat[(len(lat) - 1) // 2] if lat else 0
print(f"{proto:<6} {r:<5} {'h2load':<8} {done:>9} {int(s2.group(1)) if s2 else 0:>9} {failed + errored:>8} {p50:>12} {'-':>12}")
PY
  taskset -c 0 "$BIN" run --url "$url" "$@" --http2 --connections 1 --streams 1 --rate "$RATE" --duration "${SECS}s" \
    --warmup 0s --max-lag 25ms --quiet --allow-invalid --json "$tmp/l.json" > /dev/null
  python3 - "$proto" "$r" "$tmp/l.json" <<'PY' | tee -a "$tmp/res"
import json, sys
proto, r, p = sys.argv[1:]
j = json.load(open(p))
print(f"{proto:<6} {r:<5} {'loadgen':<8} {j['counts']['responses']:>9} {j['status_codes'].get('200', 0):>9} {sum(j['errors'].values()):>8} "
      f"{j['latency']['uncorrected']['p50_us']:>12.0f} {j['latency']['corrected']['p50_us']:>12.0f}")
PY
}
cost() {
  /usr/bin/time -f '%U %S' -o "$tmp/t" taskset -c 0 h2load -c 1 -m 10 -D "$SECS" "http://$PLAIN/" > "$tmp/h2.out" 2>&1 || true
  read -r u s < "$tmp/t"
  local n
  n=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$tmp/h2.out")
  echo "cost   $r     h2load   $n requests  user $u sys $s  $(python3 -c "print(round($n / ($u + $s)) if $u + $s else 0)") req/cpu_s" | tee -a "$tmp/cost"
  /usr/bin/time -f '%U %S' -o "$tmp/t" taskset -c 0 "$BIN" run --closed --http2 --url "http://$PLAIN/" --connections 1 --streams 10 \
    --duration "${SECS}s" --warmup 0s --quiet --json "$tmp/l.json" > /dev/null
  read -r u s < "$tmp/t"
  n=$(python3 -c "import json; print(json.load(open('$tmp/l.json'))['counts']['responses'])")
  echo "cost   $r     loadgen  $n requests  user $u sys $s  $(python3 -c "print(round($n / ($u + $s)) if $u + $s else 0)") req/cpu_s" | tee -a "$tmp/cost"
}
for r in $(seq "$ROUNDS"); do
  low h2c "http://$PLAIN/"
  low h2tls "https://localhost:$TLS_PORT/" --ca "$tmp/ca.pem"
  cost
done
echo "medians:"
for p in h2c h2tls; do
  for t in h2load loadgen; do
    printf '  %-6s %-8s service p50 %s us\n' "$p" "$t" "$(awk -v p="$p" -v t="$t" '$1==p && $3==t {print $7}' "$tmp/res" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
  done
done
for t in h2load loadgen; do
  printf '  cost   %-8s %s req/cpu_s\n' "$t" "$(awk -v t="$t" '$3==t {print $(NF-1)}' "$tmp/cost" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
done
