#!/usr/bin/env bash
# loadgen against h2load (Debian nghttp2-client) on the same origin, same run, interleaved
# rounds; upstreams (cleartext h2c and TLS offering h2 and http/1.1) pinned on CPU 1,
# generators on CPU 0.
#
# 1. Low load, per protocol (h2c, h2 over TLS): 1 connection, 1 stream, RATE req/s for SECS s.
#      h2load -n RATE*SECS -c 1 -m 1 --rps RATE --log-file LOG URL
#      loadgen run --http2 --connections 1 --streams 1 --rate RATE --duration SECS --warmup 0s
#    Compared: requests answered 200 (same counts) and median latency (h2load: from its
#    per-request log, time from its send to the end of the response; loadgen: service time,
#    the same thing, and corrected latency, from the intended send time).
# 2. Cost, closed loop for SECS s (both as fast as they go), per round one pair (h2load, then
#    loadgen) per case:
#      h2c10    h2c, 1 connection, 10 streams     h2load -c 1 -m 10 -D SECS http://…
#                                                 loadgen run --closed --http2 --connections 1 --streams 10
#      h2tls10  h2 over TLS, 1 connection, 10 streams: the same on https://localhost:PORT/
#      h1tls1   TLS + HTTP/1.1, 1 connection      h2load --h1 -c 1 -m 1 -D SECS https://…
#                                                 loadgen run --closed --connections 1 (ALPN http/1.1)
#      h1tls10  TLS + HTTP/1.1, 10 connections    h2load --h1 -c 10 -m 1; loadgen --connections 10
#    (h2load: one thread, -t 1, its default; loadgen: one thread, its default. The TLS
#    connections are set up once per run, before or at its start: a kept-connection cost.)
#    Requests per CPU-second = responses / (user + sys of the generator from /usr/bin/time).
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
echo "low load: $RATE req/s, ${SECS}s, 1 connection, 1 stream; cost: closed loop, ${SECS}s, cases h2c10 h2tls10 h1tls1 h1tls10; $ROUNDS rounds; $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %-5s %-8s %9s %9s %8s %12s %12s\n' proto round tool requests ok_200 errors p50_us corr_p50_us
low() { # proto url [loadgen args...]
  local proto=$1 url=$2; shift 2
  # h2load appends to its log file: start each run with an empty one
  rm -f "$tmp/h2.log"
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
cost() { # case "h2load args" "loadgen args" (URL last in both)
  local case=$1 h2args=$2 lgargs=$3 n e u s
  # shellcheck disable=SC2086 # the argument lists are split on purpose
  /usr/bin/time -f '%U %S' -o "$tmp/t" taskset -c 0 h2load $h2args > "$tmp/h2.out" 2>&1 || true
  read -r u s < "$tmp/t"
  n=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$tmp/h2.out")
  e=$(sed -n 's/^requests: .* \([0-9]*\) failed, \([0-9]*\) errored.*/\1 \2/p' "$tmp/h2.out" | awk '{print $1 + $2}')
  printf '%-8s %-5s %-8s %9s requests %6s errors  user %5s sys %5s  %7s req/cpu_s\n' "$case" "$r" h2load "${n:-0}" "${e:-?}" "$u" "$s" \
    "$(python3 -c "print(round(${n:-0} / ($u + $s)) if $u + $s else 0)")" | tee -a "$tmp/cost"
  # shellcheck disable=SC2086
  /usr/bin/time -f '%U %S' -o "$tmp/t" taskset -c 0 "$BIN" run --closed $lgargs --duration "${SECS}s" --warmup 0s --quiet \
    --json "$tmp/l.json" > /dev/null || true
  read -r u s < "$tmp/t"
  read -r n e < <(python3 -c "import json; j = json.load(open('$tmp/l.json')); print(j['counts']['responses'], sum(j['errors'].values()))")
  printf '%-8s %-5s %-8s %9s requests %6s errors  user %5s sys %5s  %7s req/cpu_s\n' "$case" "$r" loadgen "$n" "$e" "$u" "$s" \
    "$(python3 -c "print(round($n / ($u + $s)) if $u + $s else 0)")" | tee -a "$tmp/cost"
}
CASES="h2c10 h2tls10 h1tls1 h1tls10"
costs() {
  local https="https://localhost:$TLS_PORT/"
  cost h2c10 "-c 1 -m 10 -D $SECS http://$PLAIN/" "--http2 --connections 1 --streams 10 --url http://$PLAIN/"
  cost h2tls10 "-c 1 -m 10 -D $SECS $https" "--http2 --connections 1 --streams 10 --ca $tmp/ca.pem --url $https"
  cost h1tls1 "--h1 -c 1 -m 1 -D $SECS $https" "--connections 1 --ca $tmp/ca.pem --url $https"
  cost h1tls10 "--h1 -c 10 -m 1 -D $SECS $https" "--connections 10 --ca $tmp/ca.pem --url $https"
}
for r in $(seq "$ROUNDS"); do
  low h2c "http://$PLAIN/"
  low h2tls "https://localhost:$TLS_PORT/" --ca "$tmp/ca.pem"
  costs
done
echo "medians:"
for p in h2c h2tls; do
  for t in h2load loadgen; do
    printf '  %-6s %-8s service p50 %s us\n' "$p" "$t" "$(awk -v p="$p" -v t="$t" '$1==p && $3==t {print $7}' "$tmp/res" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
  done
done
for c in $CASES; do
  h=$(awk -v c="$c" '$1==c && $3=="h2load" {print $(NF-1)}' "$tmp/cost" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  l=$(awk -v c="$c" '$1==c && $3=="loadgen" {print $(NF-1)}' "$tmp/cost" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  # the ratio within each round (loadgen / h2load), then its median
  q=$(awk -v c="$c" '$1==c {v[$2 " " $3]=$(NF-1); r[$2]=1} END {for (k in r) if (v[k " h2load"] > 0) printf "%.3f\n", v[k " loadgen"] / v[k " h2load"]}' "$tmp/cost" | sort -n | tr '\n' ' ')
  m=$(echo "$q" | tr ' ' '\n' | awk 'NF {a[++n]=$1} END {print a[int((n+1)/2)]}')
  printf '  cost   %-8s h2load %s  loadgen %s req/cpu_s (medians); loadgen/h2load per round (sorted): %s-> median %s\n' "$c" "$h" "$l" "$q" "$m"
done
