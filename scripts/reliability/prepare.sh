# Sourced by slowloris.sh and soak.sh from the repository root: binaries, tools, fd limit.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}
export PROXY_BIN=${PROXY_BIN:-$CARGO_TARGET_DIR/release/proxy}
export LOADGEN_BIN=${LOADGEN_BIN:-$CARGO_TARGET_DIR/release/loadgen}
if [ ! -x "$PROXY_BIN" ] || [ ! -x "$LOADGEN_BIN" ]; then
  echo "reliability: building proxy and loadgen (release)" >&2
  cargo build --release -p proxy -p loadgen >&2
fi
for t in taskset python3; do
  command -v "$t" >/dev/null || { echo "reliability: $t is required" >&2; exit 2; }
done
# 1,000 slow connections + the load + the proxy's own: raise the soft fd limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
  echo "reliability: fd limit $(ulimit -n) < 4096 (raise the hard limit: ulimit -Hn)" >&2
  exit 2
fi
