"""schedstat and `strace -c` summaries, read by gates' `probe` binary: the Rust code the floor and
syscall gates use (gates/src/floor.rs) is their one owner, and this is its Python side."""

import json

from . import bins
from .procs import Fail, run_cmd


def _probe(args, what):
    exe = bins.path("probe")
    try:
        r = run_cmd([exe] + args, timeout=30, what=what)
    except FileNotFoundError:
        raise Fail(f"{what}: no probe binary at {exe} ({bins.KNOWN['probe'][1]}, or set PROBE_BIN)")
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip()
        raise Fail(f"{what}: {err or f'probe exited with code {r.returncode}'}")
    return json.loads(r.stdout)


def schedstat_ns(pids):
    """Time on CPU in ns (schedstat) summed over every thread of pids: finer than clock ticks.
    Fail when a process is gone."""
    if not pids:
        return 0
    return _probe(["schedstat"] + [str(p) for p in pids], "probe schedstat")["total_ns"]


def strace_summary(path):
    """[(syscall, calls)] of an `strace -c` summary file in its order, `total` left out."""
    return [(name, n) for name, n in _probe(["strace-summary", path], "probe strace-summary")["calls"]]
