"""Syscalls per request: a separate run (tracing distorts timing) with `strace -c -f` attached to
every process of the target, calls ÷ responses. The summary is parsed by gates' probe binary
(the syscall gate's parser)."""

import os
import signal
import time

from lib import probe
from lib.procs import Fail, Proc, log

from .loadruns import loadgen_run
from .spec import CG_CONNECTIONS
from .targets import Target


def strace_phase(ctx, record, targets):
    p = ctx.p
    out = {}
    sdir = os.path.join(ctx.out, "strace")
    os.makedirs(sdir, exist_ok=True)
    for name in targets:
        if name == "direct":
            continue
        log(f"strace: {name}")
        t = Target(name, ctx)
        try:
            loadgen_run(ctx, t, "pre-warm", closed=True, duration=p["prewarm_s"])
            opath = os.path.join(sdir, f"{name}.txt")
            argv = ["strace", "-c", "-f", "-o", opath]
            for pid in t.pids:
                argv += ["-p", str(pid)]
            st = Proc("strace", argv, os.path.join(ctx.logdir, f"strace-{name}.log"))
            time.sleep(1.0)  # attach to every thread
            if not st.alive():
                raise Fail(f"strace on {name}: exited early: {st.log_tail()}")
            run = loadgen_run(ctx, t, "strace", rate=p["strace_rate"], duration=p["strace_s"],
                              connections=CG_CONNECTIONS)
            st.stop(sig=signal.SIGINT, grace=10.0)
            calls = dict(probe.strace_summary(opath))
        finally:
            t.stop()
        out[name] = per_request(name, calls, run, p["strace_rate"])
        log(f"  {name:8s} {out[name]['per_request']:5.2f} syscalls/request ({run['requests_handled']} requests)")
    record["syscalls"] = out


def per_request(name, calls, run, rate):
    """The record of one target's strace run: calls {syscall: count, in the summary's order}
    ÷ the run's responses; the total is their sum (what strace's `total` line says)."""
    n = run["requests_handled"]
    total = sum(calls.values())
    return {"requests": n, "rate": rate, "connections": CG_CONNECTIONS,
            "total_calls": total,
            "per_request": total / max(n, 1),
            "by_syscall_per_request": {k: v / max(n, 1) for k, v in
                                       sorted(calls.items(), key=lambda kv: -kv[1])},
            "file": f"strace/{name}.txt", "valid": run["valid"]}
