#!/usr/bin/env bash
# The TLS comparison: this project's proxy (native engine) terminating TLS beside Traefik, nginx,
# HAProxy and the TLS byte-relay floor (`loadgen relay --tls`). See scripts/README.md.
#
#   scripts/compare-tls.sh [--smoke] [--rounds N] [--out DIR] [--targets a,b,...]
#                          [--rate-base N] [--full-rate R] [--resumed-rate R] [--churn-every N]
#                          [--skip rsa,memory]
#
# Same set-up as scripts/compare.sh (scripts/lib/setup.sh: builds the binaries if missing,
# installs missing peers) plus openssl for the certificates; then scripts/compare_tls.py does the
# measuring and scripts/summarize_tls.py the rendering. Default run ~12–13 min (5 rounds, estimated); --smoke
# ~2.5 min (1 short round, every phase). Exit status non-zero, naming the peer, when a peer cannot
# be installed or started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CMDLINE="scripts/compare-tls.sh${*:+ $*}"

TAG=compare-tls
# shellcheck source=lib/setup.sh
. "$ROOT/scripts/lib/setup.sh"
setup_project_bins
setup_system_tools
setup_peers
command -v openssl >/dev/null || apt_install openssl || die "openssl: cannot install"
run_python "$ROOT/scripts/compare_tls.py" --command-line "$CMDLINE" "$@"
