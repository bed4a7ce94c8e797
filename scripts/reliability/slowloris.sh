#!/usr/bin/env bash
# Slowloris crowd beside open-loop load against the release proxy. See scripts/reliability/README.md.
#   flock /tmp/bench.lock scripts/reliability/slowloris.sh [--quick] [options of slowloris.py]
# Builds the release proxy and loadgen when missing (PROXY_BIN / LOADGEN_BIN override), raises the
# fd limit, then runs slowloris.py. Exit 0 pass, 1 a criterion failed, 2 the run could not be made.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/reliability/prepare.sh
exec python3 scripts/reliability/slowloris.py --command-line "scripts/reliability/slowloris.sh${*:+ $*}" "$@"
