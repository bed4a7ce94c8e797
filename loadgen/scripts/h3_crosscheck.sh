#!/usr/bin/env bash
# Cross-checks of loadgen's HTTP/3 (issue 15). No load generator on this machine speaks HTTP/3
# (Debian's h2load is built without QUIC), so the checks are made against independent HTTP/3
# implementations instead:
#   interop  ngtcp2's client (Debian ngtcp2-client, GnuTLS) fetches from `loadgen upstream --http3`
#   caddy    loadgen --http3 against Caddy (quic-go): every request loadgen counts as answered is
#            in Caddy's own access log as an HTTP/3.0 200, and no more; handshake churn resumes
#   rate     loadgen --http3 against `loadgen upstream --http3`: sent and achieved within 1 %
#   stall    the upstream stalls 100 ms every second: corrected P99 shows it, service P99 not
#   0-RTT    --early-data against an upstream whose tickets allow it: new connections resume in
#            0-RTT, none refused
#   cost     requests per CPU-second of the generator, closed loop, 10 requests in flight:
#            TLS + HTTP/1.1 (10 connections), h2 over TLS and h3 (1 connection x 10 streams)
# Servers pinned on CPU 1, the generator on CPU 0, rounds interleaved.
# Usage: loadgen/scripts/h3_crosscheck.sh [ROUNDS] [RATE] [SECONDS]
set -euo pipefail
ROUNDS=${1:-3}
RATE=${2:-2000}
SECS=${3:-5}
BODY=1000
BIN=${LOADGEN:-target/release/loadgen}
tmp=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT

start_upstream() { # name args... -> sets PORT_<name>
  local name=$1; shift
  taskset -c 1 "$BIN" upstream --listen 127.0.0.1:0 --body-bytes "$BODY" --tls --http3 --cert-out "$tmp/$name.pem" "$@" > "$tmp/$name.out" &
  PIDS+=($!)
  for _ in $(seq 50); do grep -q listening "$tmp/$name.out" 2>/dev/null && break; sleep 0.1; done
  printf -v "PORT_$name" '%s' "$(sed -n 's/^listening 127.0.0.1://p' "$tmp/$name.out")"
}
start_upstream plain
start_upstream stall --stall-every 1s --stall-for 100ms
start_upstream early --early-data

echo "loadgen $("$BIN" --version | cut -d' ' -f2) at $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $ROUNDS rounds, rate $RATE req/s, ${SECS}s runs, body $BODY bytes; servers on cpu 1, generator on cpu 0; load $(cut -d' ' -f1-3 /proc/loadavg)"

# --- interop: an independent QUIC + HTTP/3 client against loadgen's upstream -----------------
if command -v gtlsclient > /dev/null; then
  mkdir -p "$tmp/dl"
  (cd "$tmp/dl" && timeout 20 gtlsclient --exit-on-all-streams-close --download="$tmp/dl" -n 10 \
    127.0.0.1 "$PORT_plain" "https://localhost:$PORT_plain/" > "$tmp/gtls.log" 2>&1) || true
  ok=$(grep -c ':status: 200' "$tmp/gtls.log" || true)
  bytes=$(grep -o 'http: stream 0x[0-9a-f]* body [0-9]* bytes' "$tmp/gtls.log" | awk '{s+=$5} END {print s+0}')
  echo "interop ngtcp2 $(dpkg-query -W -f '${Version}' ngtcp2-client 2>/dev/null) client -> loadgen upstream --http3: $ok of 10 streams answered 200, $bytes body bytes (expected $((10 * BODY)))"
else
  echo "interop: skipped (gtlsclient not installed: apt-get install ngtcp2-client)"
fi

# run NAME ARGS...: one loadgen run on CPU 0, JSON in $tmp/NAME.json, user/sys in $tmp/NAME.t
run() {
  local name=$1; shift
  /usr/bin/time -f '%U %S' -o "$tmp/$name.t" taskset -c 0 "$BIN" run "$@" --max-lag 25ms --quiet --allow-invalid \
    --json "$tmp/$name.json" > "$tmp/$name.txt" 2>&1 || true
}

summ() { # NAME MODE ROUND [caddy_count]
  python3 - "$tmp/$1.json" "$tmp/$1.t" "$2" "$3" "${4:--}" <<'PY'
import json, sys
p, t, mode, rnd, caddy = sys.argv[1:]
try:
    j = json.load(open(p))
    u, s = (float(x) for x in open(t).read().split()[-2:])
except (OSError, ValueError) as e:
    print(f"{mode:<9} {rnd:<5} RUN FAILED (no report or no CPU times: {e}); caddy saw {caddy}")
    sys.exit(0)
c, L = j["counts"], j["latency"]
n = c["responses"]
errs = sum(j["errors"].values())
neg = j["tls_negotiated"][0] if j["tls_negotiated"] else {}
print(f"{mode:<9} {rnd:<5} {j['meta']['protocol']:<8} {c['scheduled']:>8} {n:>8} {errs:>6} {caddy:>8} "
      f"{j['sent_rate']:>9.1f} {j['achieved_rate']:>9.1f} {j['handshakes']['full']:>5} {j['handshakes']['resumed']:>7} {j['handshakes'].get('zero_rtt', 0):>5} "
      f"{str(j.get('resumption_refused')):>7} {L['corrected']['p50_us']:>8.0f} {L['corrected']['p99_us']:>9.0f} "
      f"{L['uncorrected']['p99_us']:>9.0f} {u:>6.2f} {s:>6.2f} {n / (u + s) if u + s else 0:>9.0f} "
      f"{neg.get('version', '-')}/{neg.get('cipher_suite', '-')}/{neg.get('alpn', '-')}")
PY
}

# --- Caddy ------------------------------------------------------------------------------------
CADDY_PORT=
if command -v caddy > /dev/null; then
  mkdir -p "$tmp/caddy"
  CADDY_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$tmp/caddy/Caddyfile" <<EOF
{
	admin off
	auto_https disable_redirects
	skip_install_trust
	storage file_system $tmp/caddy/data
	servers {
		protocols h1 h2 h3
	}
}
https://localhost:$CADDY_PORT {
	tls internal
	log {
		output file $tmp/caddy/access.log
		format json
	}
	respond "$(head -c "$BODY" /dev/zero | tr '\0' x)" 200
}
EOF
  HOME="$tmp/caddy" GOMAXPROCS=1 taskset -c 1 caddy run --config "$tmp/caddy/Caddyfile" --adapter caddyfile > "$tmp/caddy/log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do [ -f "$tmp/caddy/data/pki/authorities/local/root.crt" ] && ss -uln | grep -q ":$CADDY_PORT " && break; sleep 0.1; done
  sleep 0.5
  echo "caddy: $(caddy version | cut -d' ' -f1) (quic-go), GOMAXPROCS=1, on https://localhost:$CADDY_PORT/"
fi
caddy_h3_200() { # lines of the access log that are HTTP/3.0 200s
  python3 - "$tmp/caddy/access.log" <<'PY'
import json, sys
n = 0
try:
    for line in open(sys.argv[1]):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("request", {}).get("proto") == "HTTP/3.0" and e.get("status") == 200:
            n += 1
except FileNotFoundError:
    pass
print(n)
PY
}

printf '%-9s %-5s %-8s %8s %8s %6s %8s %9s %9s %5s %7s %5s %7s %8s %9s %9s %6s %6s %9s %s\n' \
  check round proto sched resp errors server sent/s achvd/s full resumed 0rtt refused p50_us p99_us svc_p99 user_s sys_s req/cpu_s tls
U="https://localhost:$PORT_plain/"
CA=(--ca "$tmp/plain.pem")
for r in $(seq "$ROUNDS"); do
  rm -f "$tmp"/*.json "$tmp"/*.t
  if [ -n "$CADDY_PORT" ]; then
    CU="https://localhost:$CADDY_PORT/"
    CCA=(--ca "$tmp/caddy/data/pki/authorities/local/root.crt")
    before=$(caddy_h3_200)
    run caddy --url "$CU" "${CCA[@]}" --http3 --streams 4 --connections 2 --rate "$RATE" --duration "${SECS}s" --warmup 0s
    sleep 0.3
    summ caddy caddy "$r" "$(( $(caddy_h3_200) - before ))"
    before=$(caddy_h3_200)
    run caddychurn --url "$CU" "${CCA[@]}" --http3 --new-connection-every 10 --connections 4 --rate 500 --duration "${SECS}s" --warmup 0s
    sleep 0.3
    summ caddychurn caddy-new10 "$r" "$(( $(caddy_h3_200) - before ))"
  fi
  run rate --url "$U" "${CA[@]}" --http3 --streams 4 --connections 2 --rate "$RATE" --duration "${SECS}s" --warmup 1s
  summ rate rate "$r"
  run churn --url "$U" "${CA[@]}" --http3 --new-connection-every 10 --connections 4 --rate 500 --duration "${SECS}s" --warmup 0s
  summ churn new10 "$r"
  run early --url "https://localhost:$PORT_early/" --ca "$tmp/early.pem" --http3 --early-data --new-connection-every 10 --connections 4 --rate 500 --duration "${SECS}s" --warmup 0s
  summ early 0rtt-new10 "$r"
  run stall --url "https://localhost:$PORT_stall/" --ca "$tmp/stall.pem" --http3 --streams 4 --connections 2 --rate 1000 --duration "${SECS}s" --warmup 500ms
  summ stall stall "$r"
  run h1 --url "$U" "${CA[@]}" --closed --connections 10 --duration "${SECS}s" --warmup 0s
  summ h1 cost-h1 "$r"
  run h2 --url "$U" "${CA[@]}" --http2 --streams 10 --closed --connections 1 --duration "${SECS}s" --warmup 0s
  summ h2 cost-h2 "$r"
  run h3 --url "$U" "${CA[@]}" --http3 --streams 10 --closed --connections 1 --duration "${SECS}s" --warmup 0s
  summ h3 cost-h3 "$r"
done
echo "EXIT 0"
