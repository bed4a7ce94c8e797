#!/usr/bin/env python3
"""Side-by-side comparison of this project's proxy with Traefik, nginx and HAProxy.

Called by `scripts/compare.sh` (which builds the binaries and installs the peers first); see
scripts/README.md for what is measured and what each number means. Python standard library only.

Phases (each bounded in time; every process started here is killed on exit):
  1. calibrate: Traefik's closed-loop max sets the rate grid (fixed rate = 50 % of it).
  2. rounds: for each round, each target in rotated order is started fresh, pinned on CPU 1,
     and gets: a short pre-warm, a closed-loop max run, the fixed-rate open-loop run, and an
     open-loop ladder over the grid; CPU (user/kernel) is read from /proc around every run.
  3. syscalls per request (strace -c -f, separate short run at a low fixed rate).
  4. user-space instructions per request (callgrind, zeroed after a warm-up, fixed request count).
  5. memory per idle keep-alive connection (`loadgen hold`, crowds of 1,000 and 10,000), each
     proxy started fresh (issue 14).
  6. max sustainable rate under the P99 SLO (`loadgen ladder --search`), once per target.
Writes OUT/compare.json (schema_version 1), OUT/configs/, OUT/strace/, OUT/callgrind/, OUT/memory/, then
calls summarize.py for summary.md, README.md and the SVG plots. The parts are in comparison/
(one module per concern) and lib/ (child processes, /proc, the Rust-owned readings).

Binaries: PROXY_BIN, LOADGEN_BIN, TRAEFIK_BIN (required), NGINX_BIN, HAPROXY_BIN (default: on
PATH), PROBE_BIN (gates' probe: schedstat and strace summaries; default
$CARGO_TARGET_DIR/release/probe).
"""

import argparse
import atexit
import datetime
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

from comparison.callgrind_phase import callgrind_phase
from comparison.ctx import Ctx
from comparison.memory_phase import memory_phase
from comparison.record import new_record, utc_stamp, write_json
from comparison.rounds import calibrate, run_rounds
from comparison.search_phase import search_phase_in_budget
from comparison.spec import ALL_TARGETS, MODES
from comparison.strace_phase import strace_phase
from comparison.targets import start_upstream
from lib import bins as binpaths
from lib import procfs
from lib.procs import Fail, install_signal_handlers, kill_all, log

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one short round (< 5 min), for checking")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (full: 5, quick: 1)")
    ap.add_argument("--out", help="results folder (full: results/compare/<date>-<host>; quick: target/compare/...)")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS),
                    help="comma-separated subset of " + ",".join(ALL_TARGETS))
    ap.add_argument("--slo-ms", type=float, default=5.0, help="P99 SLO for the max sustainable rate")
    ap.add_argument("--rate-base", type=float, help="skip calibration: use this as Traefik's max req/s")
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: strace,callgrind,search,memory")
    ap.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in ALL_TARGETS:
            ap.error(f"unknown target {t!r} (known: {', '.join(ALL_TARGETS)})")
    return args, targets


def binaries():
    return {
        "proxy": os.environ["PROXY_BIN"],
        "loadgen": os.environ["LOADGEN_BIN"],
        "traefik": os.environ["TRAEFIK_BIN"],
        "nginx": os.environ.get("NGINX_BIN", shutil.which("nginx") or "/usr/sbin/nginx"),
        "haproxy": os.environ.get("HAPROXY_BIN", shutil.which("haproxy") or "/usr/sbin/haproxy"),
        "probe": binpaths.path("probe"),
    }


def out_dir(args, now):
    host = socket.gethostname().split(".")[0]
    if args.out:
        out = os.path.abspath(args.out)
    elif args.quick:
        out = os.path.join(ROOT, "target", "compare", f"{now:%Y-%m-%d}-{host}-quick")
    else:
        out = os.path.join(ROOT, "results", "compare", f"{now:%Y-%m-%d}-{host}")
    if os.path.exists(os.path.join(out, "compare.json")) and not args.quick:
        raise Fail(f"{out} already holds a run: pass --out DIR for a new one")
    os.makedirs(out, exist_ok=True)
    return out


def main():
    args, targets = parse_args()
    bins = binaries()
    mode = "quick" if args.quick else "full"
    params = dict(MODES[mode])
    if args.rounds:
        params["rounds"] = args.rounds
    skip = set(x for x in args.skip.split(",") if x)

    now = datetime.datetime.now(datetime.timezone.utc)
    out = out_dir(args, now)
    ctx = Ctx(out, mode, params, args, bins)
    atexit.register(kill_all)
    install_signal_handlers((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))

    t_start = time.monotonic()
    record = new_record(args, mode, params, targets, bins, now)
    log(f"compare: {mode} mode, {params['rounds']} round(s), targets {', '.join(targets)}; out {out}")

    up, up_argv = start_upstream(ctx)
    record["meta"]["upstream_command"] = shlex.join(up_argv)
    if "traefik" in targets or args.rate_base:
        base = calibrate(ctx, record)
    else:
        raise Fail("traefik is not in --targets: pass --rate-base N (the grid is relative to Traefik's max)")
    grid = [(f, base * f) for f in params["ladder"]]
    fixed_rate = base * 0.5
    record["grid"] = {"rate_base": base, "fixed_rate": fixed_rate,
                      "steps": [{"frac": f, "rate": r} for f, r in grid]}

    rounds = run_rounds(ctx, record, targets, up, grid, fixed_rate, lambda rec: write_json(out, rec))

    if "strace" not in skip:
        strace_phase(ctx, record, targets)
        write_json(out, record)
    if "callgrind" not in skip:
        callgrind_phase(ctx, record, targets)
        write_json(out, record)
    if "memory" not in skip:
        memory_phase(ctx, record, targets)
        write_json(out, record)
    if "search" not in skip:
        search_phase_in_budget(ctx, record, targets, rounds, t_start)
        write_json(out, record)

    up.stop()
    record["meta"]["end_time"] = utc_stamp()
    record["meta"]["elapsed_s"] = time.monotonic() - t_start
    record["meta"]["machine"]["loadavg_at_end"] = procfs.loadavg_text()
    write_json(out, record)
    log(f"done in {record['meta']['elapsed_s']:.0f}s; summarizing")
    r = subprocess.run([sys.executable, os.path.join(HERE, "summarize.py"), out])
    if r.returncode != 0:
        raise Fail("summarize.py failed")
    print(os.path.join(out, "summary.md"))


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        kill_all()
        print(f"compare: error: {e}", file=sys.stderr)
        sys.exit(1)
