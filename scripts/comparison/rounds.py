"""The timed phases: calibration (Traefik's closed-loop max sets the rate grid) and the
interleaved rounds, where each target, started fresh, gets a pre-warm, a closed-loop max run, the
fixed-rate run and the open-loop ladder."""

import shlex
import time

from lib import procfs
from lib.procs import Fail, log

from .loadruns import loadgen_run, overloaded
from .targets import Target


def calibrate(ctx, record):
    p = ctx.p
    if ctx.args.rate_base:
        record["calibration"] = {"rate_base": ctx.args.rate_base, "source": "--rate-base"}
        return ctx.args.rate_base
    log("calibrate: Traefik closed-loop max sets the rate grid")
    t = Target("traefik", ctx)
    try:
        loadgen_run(ctx, t, "calibration warm-up", closed=True, duration=1.0)
        runs = [loadgen_run(ctx, t, "calibration", closed=True, duration=p["calib_s"])
                for _ in range(p["calib_runs"])]
    finally:
        t.stop()
    rates = [r["achieved_rate"] for r in runs]
    base = sorted(rates)[len(rates) // 2]
    record["calibration"] = {"source": "traefik closed-loop, median", "runs_rps": rates,
                             "rate_base": base}
    log(f"calibrate: Traefik max {', '.join(f'{x:.0f}' for x in rates)} req/s -> base {base:.0f}")
    return base


def one_target_round(ctx, name, grid, fixed_rate):
    p = ctx.p
    t = Target(name, ctx)
    res = {"target": name, "pids": t.pids, "command": shlex.join(getattr(t, "argv", []) or []),
           "env": getattr(t, "env", {})}
    try:
        loadgen_run(ctx, t, "pre-warm", closed=True, duration=p["prewarm_s"])
        res["closed"] = loadgen_run(ctx, t, "closed max", closed=True, duration=p["closed_s"])
        res["fixed"] = loadgen_run(ctx, t, "fixed rate", rate=fixed_rate, duration=p["fixed_s"])
        steps = []
        stop_reason = None
        for frac, rate in grid:
            if stop_reason:
                steps.append({"frac": frac, "rate": rate, "skipped": stop_reason})
                continue
            if frac == 0.5:
                s = dict(res["fixed"])  # the fixed-rate run is the 50 % step
                s["same_as_fixed"] = True
            else:
                s = loadgen_run(ctx, t, f"ladder {rate:.0f}/s", rate=rate, duration=p["step_s"])
            s["frac"], s["rate"] = frac, rate
            steps.append(s)
            if overloaded(s):
                stop_reason = f"overloaded at {rate:.0f} req/s"
        res["ladder"] = steps
        if t.pids:
            res["vm_hwm_kb"], res["vm_rss_kb"] = procfs.mem_kb(t.pids)
        res["pids"] = t.pids
    finally:
        t.stop()
    c = res["closed"]
    msg = f"  {name:8s} max {c['achieved_rate']:8.0f} req/s"
    if "cpu" in c:
        msg += (f"  cpu/req max {c['cpu']['us_per_req']:6.1f} us  fixed {res['fixed']['cpu']['us_per_req']:6.1f} us"
                f"  rss {res['vm_hwm_kb'] / 1024:.1f} MB")
    msg += f"  p99@fixed {res['fixed']['latency']['corrected']['p99_us'] / 1000:.2f} ms"
    log(msg)
    return res


def run_rounds(ctx, record, targets, up, grid, fixed_rate, save):
    """params["rounds"] rounds, the target order rotated by one each round; save(record) after
    each round keeps what is done should a later one fail."""
    rounds = []
    n = ctx.p["rounds"]
    for i in range(n):
        order = targets[i % len(targets):] + targets[:i % len(targets)]
        log(f"round {i + 1}/{n}: {' '.join(order)}")
        rr = {"round": i + 1, "order": order, "started": time.time(), "results": {}}
        for name in order:
            if not up.alive():
                raise Fail(f"upstream died: {up.log_tail()}")
            rr["results"][name] = one_target_round(ctx, name, grid, fixed_rate)
        rounds.append(rr)
        record["rounds"] = rounds
        save(record)
    record["rounds"] = rounds
    return rounds
