"""User-space instructions per request: each target under `valgrind --tool=callgrind`, warmed
up, its counters zeroed (`callgrind_control -z`), a fixed-rate run, then dumped (`-d`): Ir ÷
responses, and the self cost by function from the dump. Go (Traefik) does not run under
valgrind."""

import os
import re
import time

from lib.procs import Fail, log, run_cmd

from .loadruns import loadgen_run
from .spec import CG_CONNECTIONS, VALGRIND_TARGETS
from .targets import Target


def callgrind_phase(ctx, record, targets):
    p = ctx.p
    out = {}
    cdir = os.path.join(ctx.out, "callgrind")
    os.makedirs(cdir, exist_ok=True)
    for name in targets:
        if name == "direct":
            continue
        if name not in VALGRIND_TARGETS:
            out[name] = {"measured": False,
                         "reason": "Go binaries do not run under valgrind (callgrind crashes on Go's runtime)"}
            continue
        log(f"callgrind: {name}")
        cgout = os.path.join(ctx.tmpdir, f"callgrind.{name}.out")
        for f in os.listdir(ctx.tmpdir):
            if f.startswith(f"callgrind.{name}.out"):
                os.unlink(os.path.join(ctx.tmpdir, f))
        vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cgout}", "--vgdb=yes"]
        t = Target(name, ctx, valgrind=vg)
        try:
            vg_pid = t.proc.pid  # taskset execs valgrind: same pid
            loadgen_run(ctx, t, "callgrind warm-up", rate=p["cg_rate"], duration=1.0,
                        connections=CG_CONNECTIONS)
            r = run_cmd(["callgrind_control", "-z", str(vg_pid)], 60, f"callgrind_control -z on {name}")
            if r.returncode != 0:
                raise Fail(f"callgrind on {name}: zeroing failed: {r.stdout.decode()} {r.stderr.decode()}")
            run = loadgen_run(ctx, t, "callgrind", rate=p["cg_rate"], duration=p["cg_s"],
                              connections=CG_CONNECTIONS)
            r = run_cmd(["callgrind_control", "-d", str(vg_pid)], 60, f"callgrind_control -d on {name}")
            if r.returncode != 0:
                raise Fail(f"callgrind on {name}: dump failed: {r.stdout.decode()} {r.stderr.decode()}")
            time.sleep(0.5)
        finally:
            t.stop()
        dumps = sorted(f for f in os.listdir(ctx.tmpdir) if f.startswith(f"callgrind.{name}.out."))
        if not dumps:
            raise Fail(f"callgrind on {name}: no dump file written")
        dump = os.path.join(ctx.tmpdir, dumps[0])
        ir = callgrind_total(dump)
        n = run["requests_handled"]
        top = callgrind_self_by_fn(dump)
        with open(os.path.join(cdir, f"{name}.txt"), "w") as f:
            f.write(f"# {name}: callgrind, {n} requests at {p['cg_rate']}/s on {CG_CONNECTIONS} connections after a\n"
                    f"# 1 s warm-up; counters zeroed before (callgrind_control -z), dumped after (-d).\n"
                    f"# Ir total {ir:,} = {ir / max(n, 1):,.0f} per request. Self cost by function (inlined code\n"
                    f"# counts in its caller), top 40:\n")
            f.write(f"# {'Ir':>14} {'Ir/request':>10} {'share':>6}  function\n")
            for fn, c in top[:40]:
                f.write(f"{c:>16,} {c / max(n, 1):>10,.0f} {c / max(ir, 1) * 100:>5.1f}%  {fn}\n")
        out[name] = {"measured": True, "requests": n, "rate": p["cg_rate"], "ir_total": ir,
                     "ir_per_request": ir / max(n, 1), "valid": run["valid"],
                     "errors": run["errors"], "file": f"callgrind/{name}.txt",
                     "top_self": [{"fn": fn, "ir_per_request": c / max(n, 1)} for fn, c in top[:15]]}
        log(f"  {name:8s} {ir / max(n, 1):8.0f} instructions/request ({n} requests)")
    record["callgrind"] = out


def callgrind_total(path):
    with open(path) as f:
        for line in f:
            m = re.match(r"^(summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(2))
    raise Fail(f"callgrind: no totals in {path}")


def callgrind_self_by_fn(path):
    """Self cost (Ir) per function from a callgrind dump, largest first.

    callgrind_annotate puts the whole cost on the frames that were live when the counters were
    zeroed (clone, start_thread, ...), so the dump is read here: a cost line counts for the
    current fn=, except the line after calls=, which is the cost of that call (inclusive).
    """
    names, selfc = {}, {}
    cur, after_calls = None, False

    def name_of(spec):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", spec)
        if not m:
            return spec.strip()
        if m.group(2):
            names[m.group(1)] = m.group(2).strip()
        return names.get(m.group(1), spec)

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if after_calls:
                    after_calls = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and cur is not None:
                    selfc[cur] = selfc.get(cur, 0) + int(parts[1])
            elif line.startswith("fn="):
                cur = name_of(line[3:])
            elif line.startswith("cfn="):
                name_of(line[4:])
            elif line.startswith("calls="):
                after_calls = True
    return sorted(selfc.items(), key=lambda kv: -kv[1])
