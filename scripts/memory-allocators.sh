#!/usr/bin/env bash
# Memory per idle keep-alive connection with each allocator the proxy binary can be built with
# (issue 14): jemalloc (the default, settings in .cargo/config.toml), mimalloc, and the system
# allocator (glibc). Each build serves alone: one worker on CPU 1; `loadgen upstream` and
# `loadgen hold` on CPU 0. Writes OUT/<allocator>.json (loadgen hold's report) and OUT/README.md.
#   scripts/memory-allocators.sh [OUT]   (default: results/memory/<date>-<host>)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/memory/$(date -u +%Y-%m-%d)-$(hostname -s | sed 's/[^a-zA-Z0-9]/-/g')}
COUNTS=${COUNTS:-1000,10000}
mkdir -p "$OUT"
T=${CARGO_TARGET_DIR:-target}/memory-allocators
cargo build -q --release -p loadgen
LOADGEN=${CARGO_TARGET_DIR:-target}/release/loadgen
declare -A FEATURES=([jemalloc]="" [mimalloc]="--features mimalloc" [glibc]="--no-default-features")
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"; kill $(jobs -p) 2>/dev/null || true' EXIT
cat > "$tmp/proxy.toml" <<TOML
[server]
workers = 1
[[listeners]]
address = "127.0.0.1:18380"
[limits]
max_connections = 20000
client_idle_timeout = "5m"
[[routes]]
upstream = "o"
[upstreams.o]
servers = ["127.0.0.1:18390"]
TOML
for alloc in jemalloc mimalloc glibc; do
  # shellcheck disable=SC2086
  CARGO_TARGET_DIR="$T/$alloc" cargo build -q --release -p proxy ${FEATURES[$alloc]}
  taskset -c 0 "$LOADGEN" upstream --listen 127.0.0.1:18390 --body-bytes 100 >/dev/null 2>&1 & up=$!
  taskset -c 1 "$T/$alloc/release/proxy" --config "$tmp/proxy.toml" >/dev/null 2>&1 & px=$!
  sleep 1
  taskset -c 0 "$LOADGEN" hold --url http://127.0.0.1:18380/ --pid "$px" --connections "$COUNTS" \
    --settle 2.5s --json "$OUT/$alloc.json" | tee "$OUT/$alloc.txt"
  kill "$px" "$up"; wait "$px" "$up" 2>/dev/null || true
done
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
rows = []
for alloc in ["jemalloc", "mimalloc", "glibc"]:
    d = json.load(open(os.path.join(out, f"{alloc}.json")))
    for c in d["counts"]:
        rows.append(f"| {alloc} | {c['connections']} | {c['rss_before_kib']} | {c['rss_held_kib']} | {c['rss_after_kib']} | {c['kib_per_conn']:.2f} | {c['after_ratio']:.3f} |")
with open(os.path.join(out, "README.md"), "w") as f:
    f.write("# Memory per idle keep-alive connection, by allocator\n\n")
    f.write("`scripts/memory-allocators.sh`: each build of the proxy alone, one worker on CPU 1, `loadgen hold` on CPU 0;\n")
    f.write("counts in turn in one process (each count's *before* is the reading after the previous count left).\n")
    f.write("Raw reports: `<allocator>.json` / `.txt`.\n\n")
    f.write("| allocator | connections | RSS before KiB | held KiB | after KiB | KiB per connection | after ÷ before |\n|---|---|---|---|---|---|---|\n")
    f.write("\n".join(rows) + "\n")
PY
echo "wrote $OUT"
