#!/usr/bin/env bash
# Soak: open-loop load with config reloads every 30 s (10 min; --quick: 60 s). See
# scripts/reliability/README.md.
#   flock /tmp/bench.lock scripts/reliability/soak.sh [--quick] [options of soak.py]
# Builds the release proxy and loadgen when missing (PROXY_BIN / LOADGEN_BIN override), then runs
# soak.py. Exit 0 pass, 1 a criterion failed, 2 the run could not be made.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/reliability/prepare.sh
exec python3 scripts/reliability/soak.py --command-line "scripts/reliability/soak.sh${*:+ $*}" "$@"
