#!/usr/bin/env bash
# The HTTP/3 comparison: this project's proxy (`http3 = true`) beside Traefik 3.7 and Caddy 2.6
# (quic-go), the HTTP/3 relay floor (`loadgen relay --h3 --upstream-http1`) and the direct path
# (`loadgen upstream --tls --http3`), all over QUIC on 127.0.0.1 to the same HTTP/1.1 origin:
# CPU per request (relative to the floor, in the same round) at a low and a high open-loop rate,
# achieved rate, errors by kind, corrected P50/P99, RSS. See scripts/README.md.
#
#   scripts/compare-h3.sh --lock /tmp/bench.lock [--quick] [--rounds N] [--out DIR]
#                         [--targets a,b,...] [--rates LOW,HIGH] [--streams N] [--connections N]
#
# --lock takes the exclusive lock around each round (about a minute each) and the checks, not
# around the whole run; or run the whole of it under `flock /tmp/bench.lock` without --lock.
# Set-up: scripts/lib/setup.sh (builds the binaries if missing; installs Traefik into
# target/peers/, Caddy and tshark with apt-get); scripts/compare_h3.py does the measuring and the
# rendering (`python3 scripts/compare_h3.py --summarize DIR` re-renders a run). Default run ~6 min
# (5 rounds x 5 targets x ~12 s, plus the checks); --quick ~1.5 min.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CMDLINE="scripts/compare-h3.sh${*:+ $*}"

TAG=compare-h3
# shellcheck source=lib/setup.sh
. "$ROOT/scripts/lib/setup.sh"
setup_project_bins
setup_system_tools
setup_traefik
setup_caddy
command -v openssl >/dev/null || apt_install openssl || die "openssl: cannot install"
# tshark reads the key-exchange group off the wire (QUIC Initial packets); without it the run goes
# on and its summary says "not checked"
command -v tshark >/dev/null || apt_install tshark || echo "$TAG: no tshark: the key-exchange group will not be checked" >&2
run_python "$ROOT/scripts/compare_h3.py" --command-line "$CMDLINE" "$@"
