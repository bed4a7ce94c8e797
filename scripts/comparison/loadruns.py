"""One loadgen run against a target, with the target's CPU (clock ticks from /proc/PID/stat and
schedstat ns) read before and after it; what is kept of loadgen's report."""

import json
import os
import shlex
import time

from lib.procfs import CLK_TCK
from lib.procs import Fail, run_cmd

from .spec import CONNECTIONS, DESC, REQ_TIMEOUT


def trim_report(rep, extra_keys=()):
    """Keep what the summary and a later reader need; drop the bulky per-second series.
    extra_keys: more top-level keys of the report to keep (the TLS comparison: handshakes)."""
    keep = {k: rep.get(k) for k in ("valid", "invalid_reasons", "target_rate", "sent_rate",
                                    "achieved_rate", "counts", "status_codes", "errors",
                                    "error_causes", "latency") + tuple(extra_keys)}
    keep["histogram_corrected"] = rep.get("histograms", {}).get("corrected")
    return keep


def loadgen_run(ctx, target, what, *, closed=False, rate=None, duration, warmup=0.0,
                connections=CONNECTIONS, extra_args=(), extra_keys=(), keep_command=False):
    """Run loadgen against target, reading the target's CPU from /proc before and after.
    The target's client_args (e.g. --ca over TLS) and extra_args are added to the command; with
    neither closed nor a rate, extra_args must say how to send (e.g. --connect-rate R)."""
    jpath = os.path.join(ctx.tmpdir, f"lg-{ctx.seq()}.json")
    argv = ["taskset", "-c", DESC["loader_cpu"], ctx.bins["loadgen"], "run", "--url", target.url,
            "--duration", f"{duration}s", "--warmup", f"{warmup}s", "--connections", str(connections),
            "--cpus", DESC["loader_cpu"], "--timeout", REQ_TIMEOUT, "--json", jpath, "--quiet",
            "--allow-invalid"]
    if closed:
        argv.append("--closed")
    elif rate is not None:
        argv += ["--rate", str(int(round(rate)))]
    argv += list(getattr(target, "client_args", ())) + list(extra_args)
    c0 = target.cpu()
    t0 = time.monotonic()
    r = run_cmd(argv, timeout=duration + warmup + 30, what=f"loadgen against {target.name} ({what})")
    t1 = time.monotonic()
    c1 = target.cpu()
    if r.returncode != 0 or not os.path.exists(jpath):
        target.check_alive()
        raise Fail(f"loadgen against {target.name} ({what}) failed with code {r.returncode}: "
                   f"{r.stderr.decode('utf-8', 'replace').strip()[-800:]}")
    with open(jpath) as f:
        rep = json.load(f)
    os.unlink(jpath)
    target.check_alive()
    out = trim_report(rep, extra_keys)
    # requests the target handled: every response (warmup 0, so the window is the whole run),
    # plus errored requests (they cost the target CPU too)
    nreq = rep["counts"]["responses"]
    if keep_command:
        out["command"] = shlex.join(argv)
    out["requests_handled"] = nreq
    out["wall_s"] = t1 - t0
    if target.pids:
        du, ds = (c1[0][0] - c0[0][0]) / CLK_TCK, (c1[0][1] - c0[0][1]) / CLK_TCK
        dn = (c1[1] - c0[1]) / 1e9
        out["cpu"] = {"user_s": du, "sys_s": ds, "ticks_per_s": CLK_TCK,
                      "util": (du + ds) / max(t1 - t0, 1e-9),
                      "us_per_req_user": du / max(nreq, 1) * 1e6,
                      "us_per_req_sys": ds / max(nreq, 1) * 1e6,
                      "us_per_req": (du + ds) / max(nreq, 1) * 1e6,
                      "sched_s": dn, "sched_us_per_req": dn / max(nreq, 1) * 1e6}
    return out


def overloaded(step):
    """A ladder step past which the target is not pushed further in this round."""
    lat = step["latency"]["corrected"]
    errs = sum((step.get("errors") or {}).values())
    return (step["achieved_rate"] < 0.9 * step["target_rate"] or lat["p99_us"] > 500_000
            or errs > 0.01 * max(step["counts"]["scheduled"], 1))
