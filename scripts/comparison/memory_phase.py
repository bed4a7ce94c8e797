"""Memory per idle keep-alive connection (issue 14): each target started fresh from its memory
variant of the config (room for the crowd, client idle timeouts longer than the hold; one worker,
pinned like every other phase), then `loadgen hold` on the loader CPU opens each crowd of
spec.MEMORY_CONNECTIONS in turn (one verified keep-alive GET per connection, then idle) and reads
VmRSS of the target's processes (summed with its descendants: nginx's and HAProxy's workers)
before, while held and after closing them all. loadgen's own report is kept as
memory/<target>.json; the record keeps per crowd KiB per idle connection ((held − before) ÷
connections held) and RSS after release ÷ before.

Not measured: `direct` (the upstream is the origin: its memory is not a proxy's) and `relay`
(the byte relay opens one upstream connection per client and owns two copy buffers per
connection by design: it is a CPU floor, not a memory floor, and 10,000 clients need 20,000
descriptors, the limit here)."""

import json
import os

from lib.procs import Fail, log, run_cmd

from .spec import DESC, MEMORY_CONNECTIONS, MEMORY_SETTLE, MEMORY_TARGETS
from .targets import Target

NOT_MEASURED = {
    "direct": "the upstream itself: the origin's memory is not a proxy's",
    "relay": "one upstream connection and two copy buffers per client by design: a CPU floor, not a memory one",
}


def memory_phase(ctx, record, targets):
    mdir = os.path.join(ctx.out, "memory")
    os.makedirs(mdir, exist_ok=True)
    counts = ",".join(str(n) for n in MEMORY_CONNECTIONS)
    out = {}
    for name in targets:
        if name not in MEMORY_TARGETS:
            out[name] = {"measured": False, "reason": NOT_MEASURED.get(name, "not a memory target")}
            continue
        log(f"memory: {name}")
        jpath = os.path.join(mdir, f"{name}.json")
        t = Target(name, ctx, for_memory=True)
        try:
            argv = ["taskset", "-c", DESC["loader_cpu"], ctx.bins["loadgen"], "hold", "--url", t.url,
                    "--pid", str(t.proc.pid), "--connections", counts, "--settle", MEMORY_SETTLE,
                    "--allow-failures", "--json", jpath]
            r = run_cmd(argv, timeout=300, what=f"loadgen hold against {name}")
            t.check_alive()
            if r.returncode != 0 or not os.path.exists(jpath):
                raise Fail(f"loadgen hold against {name} failed with code {r.returncode}: "
                           f"{r.stderr.decode('utf-8', 'replace').strip()[-800:]}")
        finally:
            t.stop()
        with open(jpath) as f:
            rep = json.load(f)
        rec = hold_record(rep, f"memory/{name}.json")
        rec["config"] = f"configs/{name}-memory/"
        out[name] = rec
        log("  " + hold_line(name, rec))
    record["memory"] = {"connections": MEMORY_CONNECTIONS, "settle": MEMORY_SETTLE, "targets": out}


def hold_record(rep, file):
    """What the record keeps of one `loadgen hold --json` report: per crowd, KiB per idle
    connection and after ÷ before, with the RSS figures; the whole run's after (last crowd) ÷
    before (first crowd), i.e. against the freshly started target."""
    if rep.get("schema_version") != 1:
        raise Fail(f"{file}: loadgen hold schema_version {rep.get('schema_version')!r}, expected 1")
    counts = []
    for c in rep["counts"]:
        counts.append({
            "connections": c["connections"], "n_ok": c["n_ok"], "valid": c["valid"],
            "failed": sum(c["failures"].values()), "first_failure": c.get("first_failure"),
            "rss_before_kib": c["rss_before_kib"], "rss_held_kib": c["rss_held_kib"],
            "rss_after_kib": c["rss_after_kib"], "kib_per_conn": c["kib_per_conn"],
            "after_ratio": c["after_ratio"], "processes": c["processes"]})
    first, last = (counts[0], counts[-1]) if counts else (None, None)
    return {
        "measured": True, "file": file, "valid": rep["valid"],
        "invalid_reasons": rep.get("invalid_reasons", []),
        "settle_s": rep["meta"]["settle_s"], "target_command": rep["meta"]["target_command"],
        "counts": counts,
        "after_vs_start": (last["rss_after_kib"] / first["rss_before_kib"]
                           if first and first["rss_before_kib"] else None),
    }


def hold_line(name, rec):
    """One log line: KiB per idle connection per crowd, after ÷ before of the largest."""
    parts = []
    for c in rec["counts"]:
        k = c["kib_per_conn"]
        parts.append(f"{c['connections']}: {k:.2f} KiB/conn" if k is not None else f"{c['connections']}: —")
        if not c["valid"]:
            parts[-1] += " (INVALID)"
    last = rec["counts"][-1] if rec["counts"] else None
    after = f"; after release {last['after_ratio']:.3f}× before" if last and last["after_ratio"] else ""
    return f"{name:8s} " + ", ".join(parts) + after
