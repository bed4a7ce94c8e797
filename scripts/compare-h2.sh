#!/usr/bin/env bash
# The HTTP/2 comparison (issue 17): this project's proxy beside Traefik, nginx, HAProxy and the
# HTTP/2 relay floor (`loadgen relay --h2`, `--upstream-http1` in the TLS cases): TLS + HTTP/2
# at 1, 10 and 100 streams per connection to an HTTP/1.1 origin, and h2c -> h2c gRPC-style (the
# origin sends trailers); CPU per request (at max and at a fixed open-loop rate), P99 at that
# rate, RSS. See scripts/README.md.
#
#   flock /tmp/bench.lock scripts/compare-h2.sh [--quick] [--rounds N] [--out DIR]
#                          [--targets a,b,...] [--rate R] [--skip s100,h2c]
#
# Same set-up as scripts/compare-tls.sh (scripts/lib/setup.sh: builds the binaries if missing,
# installs missing peers; openssl, curl and nghttp); scripts/compare_h2.py does the measuring
# and the rendering (`python3 scripts/compare_h2.py --summarize DIR` re-renders a run). Default run
# ~16 min (5 rounds, estimated); --quick ~1.5 min (1 short round: a smoke test, not a result).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CMDLINE="scripts/compare-h2.sh${*:+ $*}"

TAG=compare-h2
# shellcheck source=lib/setup.sh
. "$ROOT/scripts/lib/setup.sh"
setup_project_bins
setup_system_tools
setup_peers
command -v openssl >/dev/null || apt_install openssl || die "openssl: cannot install"
command -v curl >/dev/null || apt_install curl || die "curl: cannot install"
# nghttp checks that the h2c case's trailers reach the client (curl does not show HTTP/2 trailers);
# without it the run goes on and its summary says "not checked"
command -v nghttp >/dev/null || apt_install nghttp2-client || echo "$TAG: no nghttp: trailers will not be checked" >&2
run_python "$ROOT/scripts/compare_h2.py" --command-line "$CMDLINE" "$@"
