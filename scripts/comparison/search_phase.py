"""The max sustainable rate under the P99 SLO: `loadgen ladder --search` once per target, starting
from the highest grid step that passed in round 1, skipped when the time budget is short."""

import json
import os
import time

from lib.procs import Fail, log, run_cmd

from .loadruns import loadgen_run
from .spec import CONNECTIONS, DESC, REQ_TIMEOUT
from .targets import Target


def search_phase_in_budget(ctx, record, targets, rounds, t_start):
    """search_phase when the time left allows it, else record why it was skipped."""
    p = ctx.p
    elapsed = time.monotonic() - t_start
    est = 25 * len(targets) * p["search_step_s"] * 1.2
    if elapsed + est > p["budget_s"] * 0.97:
        record["slo_search"] = {"skipped": f"time budget: {elapsed:.0f}s used, ~{est:.0f}s needed"}
        log("search: skipped (time budget)")
        return
    # start each search at the highest grid step that passed the SLO in round 1
    hint = {}
    for name, res in rounds[0]["results"].items():
        ok = [s["rate"] for s in res["ladder"] if "skipped" not in s and s["valid"]
              and s["latency"]["corrected"]["p99_us"] <= ctx.args.slo_ms * 1000
              and sum(s["errors"].values()) == 0]
        hint[name] = ok[-1] if ok else 500
    log(f"search: loadgen ladder --search, P99 SLO {ctx.args.slo_ms} ms")
    search_phase(ctx, record, targets, hint)


def search_phase(ctx, record, targets, grid_hint):
    p = ctx.p
    out = {}
    for name in targets:
        t = Target(name, ctx)
        try:
            loadgen_run(ctx, t, "pre-warm", closed=True, duration=p["prewarm_s"])
            start = max(500, int(grid_hint.get(name) or 500))
            jpath = os.path.join(ctx.tmpdir, f"ladder-{name}.json")
            argv = ["taskset", "-c", DESC["loader_cpu"], ctx.bins["loadgen"], "ladder", "--url", t.url,
                    "--search", "--start-rate", str(start), "--slo-p99", f"{ctx.args.slo_ms}ms",
                    "--precision", str(p["search_precision"]), "--duration", f"{p['search_step_s']}s",
                    "--warmup", f"{p['search_warmup_s']}s", "--connections", str(CONNECTIONS),
                    "--cpus", DESC["loader_cpu"], "--timeout", REQ_TIMEOUT, "--json", jpath]
            r = run_cmd(argv, timeout=240, what=f"loadgen ladder on {name}")
            t.check_alive()
        finally:
            t.stop()
        if not os.path.exists(jpath):
            raise Fail(f"loadgen ladder on {name} wrote no report (code {r.returncode}): "
                       f"{r.stderr.decode('utf-8', 'replace')[-500:]}")
        with open(jpath) as f:
            rep = json.load(f)
        out[name] = {"start_rate": start, "exit_code": r.returncode, "report": rep}
        log(f"  {name:8s} max sustainable under P99 {ctx.args.slo_ms} ms: "
            f"{rep.get('max_sustainable_rate')} req/s")
    record["slo_search"] = out
