"""summary.md (the table, the goals, the latency ladder) and README.md (how the run was made) of a
comparison run, from compare.json and stats.compute's numbers."""

import os

from .labels import LABEL
from .stats import med, stat


def fmt(s, digits=1, unit=""):
    if s is None:
        return "—"
    f = f"{{:.{digits}f}}"
    if s["n"] == 1 or s["min"] == s["max"]:
        return f"{f.format(s['median'])}{unit}"
    return f"{f.format(s['median'])}{unit} [{f.format(s['min'])}–{f.format(s['max'])}]"


def fmt_k(s):
    if s is None:
        return "—"
    k = lambda v: f"{v / 1000:.1f}k"
    if s["n"] == 1 or s["min"] == s["max"]:
        return k(s["median"])
    return f"{k(s['median'])} [{k(s['min'])}–{k(s['max'])}]"


def kib(v):
    """KiB per connection: two decimals below 10, one above."""
    if v is None:
        return "—"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def mem_counts_label(d):
    return " / ".join(f"{n:,}" for n in d["memory"]["connections"])


def mem_cell(d, s):
    """The summary table's memory cell: KiB per idle connection per crowd, and the largest
    crowd's RSS after release ÷ before."""
    m = s.get("memory")
    if not m:
        return "—"
    cells = []
    for n in d["memory"]["connections"]:
        v = m["kib_per_conn"].get(str(n))
        cells.append(kib(v) + ("" if m["valid"].get(str(n), False) else " (INVALID)"))
    after = f" (after: {m['after_ratio']:.2f}×)" if m.get("after_ratio") is not None else ""
    return " / ".join(cells) + " KiB" + after


def memory_section(d, targets, S):
    """## Memory per idle keep-alive connection: every crowd's figures per target."""
    mem = d["memory"]
    counts = mem["connections"]
    L = ["## Memory per idle keep-alive connection (issue 14)\n",
         f"`loadgen hold` on CPU {d['meta']['description']['loader_cpu']} against each target started fresh "
         f"(one worker, pinned; its config with room for the crowd and client idle timeouts longer than the hold: "
         f"`configs/<target>-memory/`): crowds of {', '.join(f'{n:,}' for n in counts)} connections in turn, each "
         f"sending one verified keep-alive GET and then idle; VmRSS of the target's processes (summed: nginx "
         f"master + worker) before, after {mem['settle']} held idle, and {mem['settle']} after all closed. KiB per "
         f"connection = (held − before) ÷ connections held, where a crowd's \"before\" is the RSS after the "
         f"previous crowd left (memory kept from it is reused, not counted again). \"after ÷ before\" is the "
         f"largest crowd's (the gate's figure); \"after ÷ start\" is RSS after the last crowd ÷ RSS of the "
         f"freshly started target. Raw reports: "
         f"[memory/](memory/).\n"]
    hdr = ["target"] + [f"KiB/conn at {n:,}" for n in counts] + ["RSS at start (MB)"] + \
          [f"RSS held {n:,} (MB)" for n in counts] + [f"RSS after {counts[-1]:,} closed (MB)",
                                                      f"after ÷ before ({counts[-1]:,})", "after ÷ start"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for t in targets:
        m = S[t].get("memory")
        if not m:
            why = (mem["targets"].get(t) or {}).get("reason", "not measured")
            L.append(f"| {LABEL[t]} | " + " | ".join(["—"] * (len(hdr) - 2)) + f" | not measured: {why} |")
            continue
        row = [LABEL[t]]
        for n in counts:
            row.append(kib(m["kib_per_conn"].get(str(n))) + ("" if m["valid"].get(str(n)) else " (INVALID)"))
        row.append(f"{m['rss_before_mb']:.1f}")
        row += [f"{m['rss_held_mb'][str(n)]:.1f}" for n in counts]
        row.append(f"{m['rss_after_mb']:.1f}")
        row.append(f"{m['after_ratio']:.2f}×" if m.get("after_ratio") is not None else "—")
        row.append(f"{m['after_vs_start']:.2f}×" if m.get("after_vs_start") is not None else "—")
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    return L


def goal_lines(d, targets, S):
    out = []
    n = S.get("native")
    if not n:
        return ["(the native engine was not measured in this run)"]

    def line(goal, value, ok, note=""):
        mark = "met" if ok else ("**not met**" if ok is not None else "not measured")
        out.append(f"| {goal} | {value} | {mark} | {note} |")

    fr = d["grid"]["fixed_rate"]
    m = n["closed_us_per_req"]
    f = n["fixed_us_per_req"]
    floor = S.get("relay", {})

    def floor_note(key, goal):
        fs = floor.get(key)
        if fs and fs["median"] > goal:
            return (f"the byte-relay floor itself costs {fs['median']:.1f} µs here: the absolute goal is below "
                    f"what any proxy can do on this machine; the floor-relative goal (issue 8) applies")
        return ""

    line("CPU/request at max ≤ 20 µs", fmt(m, 1, " µs"), m and m["median"] <= 20,
         floor_note("closed_us_per_req", 20))
    line(f"CPU/request at 50 % of Traefik's max ({fr:.0f} req/s) ≤ 30 µs", fmt(f, 1, " µs"),
         f and f["median"] <= 30, floor_note("fixed_us_per_req", 30))
    for peer in ("nginx", "haproxy"):
        if peer in S:
            for where, key in (("max", "closed"), ("fixed rate", "fixed")):
                ratios = []
                for r in d["rounds"]:
                    res = r["results"]
                    if "native" in res and peer in res:
                        ratios.append(res["native"][key]["cpu"]["us_per_req"] / res[peer][key]["cpu"]["us_per_req"])
                st = stat(ratios)
                line(f"CPU/request below {peer} at {where} (native ÷ {peer}, within a round)",
                     fmt(st, 2, "×"), st and st["median"] < 1,
                     f"below in {sum(1 for x in ratios if x < 1)} of {len(ratios)} rounds")
    for where, key in (("max", "less_than_traefik_max"), ("fixed rate", "less_than_traefik_fixed")):
        st = n.get(key)
        line(f"≥ 6× less CPU/request than Traefik at {where}", fmt(st, 1, "×"), st and st["median"] >= 6)
    st = n.get("p99_minus_direct_ms")
    line("P99 at the fixed rate within 0.3 ms of the direct path", fmt(st, 2, " ms") + " above direct",
         st and st["median"] <= 0.3)
    st = n.get("rss_mb")
    line("RSS ≤ 10 MB (VmHWM)", fmt(st, 1, " MB"), st and st["median"] <= 10)
    for where, key in (("max", "floor_x_max"), ("fixed rate", "floor_x_fixed")):
        st = n.get(key)
        line(f"(issue 8) ≤ 1.1× the byte-relay floor in CPU/request at {where}", fmt(st, 2, "×"),
             st and st["median"] <= 1.1)
    v = n.get("syscalls_per_req")
    line("(issue 8) ≤ 5.3 syscalls/request", f"{v:.2f}" if v else "—", (v <= 5.3) if v else None,
         f"strace -c -f, {d.get('syscalls', {}).get('native', {}).get('requests', '?')} requests at "
         f"{d.get('syscalls', {}).get('native', {}).get('rate', '?')} req/s; the floor: "
         f"{(S.get('relay', {}).get('syscalls_per_req') or 0):.2f}")
    v = n.get("ir_per_req")
    line("(issue 8) ≤ 5,000 user-space instructions/request", f"{v:,.0f}" if v else "—",
         (v <= 5000) if v else None)
    if "memory" in n:
        m = n["memory"] or {}
        for c in d["memory"]["connections"]:
            v = (m.get("kib_per_conn") or {}).get(str(c))
            valid = (m.get("valid") or {}).get(str(c))
            line(f"(issue 14) ≤ 1 KiB per idle keep-alive connection, {c:,} held", f"{kib(v)} KiB",
                 (v <= 1.0) if v is not None and valid else None, "" if valid or v is None else "INVALID count")
        v = m.get("after_ratio")
        line(f"(issue 14) RSS after {m.get('largest') or 0:,} closed within +10 % of before",
             f"{v:.2f}×" if v is not None else "—", (v <= 1.10) if v is not None else None)
    return out


def write_summary(d, targets, S, ladder, out):
    meta = d["meta"]
    fr = d["grid"]["fixed_rate"]
    base = d["grid"]["rate_base"]
    nrounds = len(d.get("rounds", []))
    L = []
    L.append(f"# Comparison run {os.path.basename(out.rstrip('/'))}\n")
    L.append(f"`{meta['command_line']}` — {meta['mode']} mode, {nrounds} interleaved round(s), "
             f"{meta['machine']['cpus']} × {meta['machine']['cpu_model']}, kernel {meta['machine']['kernel']}. "
             f"Target under test pinned on CPU {meta['description']['proxy_cpu']}, loadgen and the upstream on "
             f"CPU {meta['description']['loader_cpu']}. 100-byte responses, keep-alive both sides, one worker each. "
             f"How it was made: [README.md](README.md); raw data: [compare.json](compare.json).\n")
    load = meta["machine"].get("loadavg_at_start", "0").split()[0]
    if float(load) > 1.0:
        L.append(f"> **Warning:** the 1-minute load average was {load} when this run started: other work was "
                 f"running on this 2-core machine and every number below is distorted by it.\n")
    n = S.get("native")
    if n and n.get("less_than_traefik_max"):
        L.append(f"**Headline: this project's proxy (native engine) needs "
                 f"{n['less_than_traefik_max']['median']:.1f}× less CPU per request than Traefik at max load "
                 f"and {n['less_than_traefik_fixed']['median']:.1f}× less at {fr:.0f} req/s** "
                 f"(medians of within-round ratios; min–max in the table).\n")
        if n.get("floor_x_max"):
            L.append(f"Against the byte-relay floor measured in the same rounds it costs "
                     f"{n['floor_x_max']['median']:.2f}× the floor's CPU per request at max and "
                     f"{n['floor_x_fixed']['median']:.2f}× at {fr:.0f} req/s.\n")
    if "memory" in d:
        parts = [f"{LABEL[t]} {mem_cell(d, S[t])}" for t in targets if S[t].get("memory")]
        if parts:
            L.append(f"Memory per idle keep-alive connection at {mem_counts_label(d)} held (RSS after the "
                     f"largest crowd left ÷ before it came): " + "; ".join(parts) + ".\n")
    L.append("Values are median [min–max] over rounds. CPU is the target process's utime+stime from "
             "/proc/PID/stat (all threads; nginx: master + worker) divided by the responses it served; "
             "\"× less than Traefik\" and \"× floor\" are ratios within each round. "
             f"\"Fixed rate\" = {fr:.0f} req/s open loop = 50 % of Traefik's closed-loop max "
             f"({base:.0f} req/s, calibrated at the start of the run).\n")
    hdr = ["target", "CPU µs/req at max (user + kernel)", f"CPU µs/req at {fr:.0f} req/s",
           "× less CPU than Traefik (max / fixed)", "× floor (max / fixed)", "req/s max (closed loop)",
           f"P99 at {fr:.0f} req/s", "RSS (VmHWM)", "instructions/req (callgrind)", "syscalls/req (strace)",
           f"max rate, P99 ≤ {meta['slo_p99_ms']:g} ms (grid / search)"]
    if "memory" in d:
        hdr.append(f"KiB per idle connection at {mem_counts_label(d)} (RSS after release ÷ before)")
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    for t in targets:
        s = S[t]
        um = s["closed_us_per_req_user"]
        km = s["closed_us_per_req_sys"]
        cm = fmt(s["closed_us_per_req"], 1)
        if um and km:
            cm += f" ({um['median']:.1f} + {km['median']:.1f})"
        uf = s["fixed_us_per_req_user"]
        kf = s["fixed_us_per_req_sys"]
        cf = fmt(s["fixed_us_per_req"], 1)
        if uf and kf:
            cf += f" ({uf['median']:.1f} + {kf['median']:.1f})"
        lt = "—"
        if s.get("less_than_traefik_max"):
            lt = f"{fmt(s['less_than_traefik_max'], 2)} / {fmt(s['less_than_traefik_fixed'], 2)}"
        fl = "—"
        if s.get("floor_x_max"):
            fl = f"{fmt(s['floor_x_max'], 2)} / {fmt(s['floor_x_fixed'], 2)}"
        rps = fmt_k(s["rps_max"])
        if s["util_max"] and s["util_max"]["median"] < 0.9:
            rps = "≥ " + rps + f" (target CPU {s['util_max']['median'] * 100:.0f} % busy: loader-bound)"
        elif t == "direct":
            rps = "≥ " + rps + " (loader-bound)"
        p99 = fmt(s["p99_fixed_ms"], 2, " ms")
        if s.get("p99_minus_direct_ms"):
            p99 += f" (Δdirect {s['p99_minus_direct_ms']['median']:+.2f})"
        rss = fmt(s["rss_mb"], 1, " MB")
        ir = f"{s['ir_per_req']:,.0f}" if s.get("ir_per_req") else ("— (Go: no valgrind)" if s.get("ir_note") else "—")
        if s.get("ir_x_floor") and t != "relay":
            ir += f" ({s['ir_x_floor']:.1f}× floor)"
        sc = f"{s['syscalls_per_req']:.2f}" if s.get("syscalls_per_req") else "—"
        if s.get("sys_x_floor") and t != "relay":
            sc += f" ({s['sys_x_floor']:.2f}× floor)"
        g = s["slo_grid_rate"]
        first = d["grid"]["steps"][0]["rate"] if d["grid"]["steps"] else 0
        if g and g["max"] == 0:
            slo = f"< {first / 1000:.1f}k (first step failed)"
        else:
            slo = fmt_k(g)
        if s.get("slo_search_rate") is not None:
            slo += f" / {s['slo_search_rate'] / 1000:.1f}k"
        mc = f" {mem_cell(d, s)} |" if "memory" in d else ""
        L.append(f"| {LABEL[t]} | {cm} | {cf} | {lt} | {fl} | {rps} | {p99} | {rss} | {ir} | {sc} | {slo} |{mc}")
    L.append("")
    L.append("![CPU per request](cpu.svg)\n")
    L.append("![Latency vs offered rate](latency.svg)\n")
    if "memory" in d:
        L += memory_section(d, targets, S)
    L.append("## Goals (phase 1, issue 6; floor goals, issue 8" + ("; memory, issue 14" if "memory" in d else "")
             + ")\n")
    L.append("| goal | measured (native engine) | status | note |")
    L.append("|---|---|---|---|")
    L += goal_lines(d, targets, S)
    L.append("")
    # ladder table
    L.append("## Latency vs offered rate (open loop; P50 / P99 / P99.9 / max in ms, all rounds' histograms merged)\n")
    L.append("A step marked * had at least one INVALID run (the generator could not apply the load on time, "
             "see loadgen/README.md); a step after the first overloaded one (achieved < 90 % of the rate, "
             "P99 > 500 ms or > 1 % errors) is not run in that round.\n")
    L.append("| offered req/s | " + " | ".join(LABEL[t] for t in targets) + " |")
    L.append("|---|" + "---|" * len(targets))
    for gi, g in enumerate(d["grid"]["steps"]):
        cells = []
        for t in targets:
            row = ladder[t][gi]
            if row["runs"] == 0:
                cells.append("(overloaded)")
                continue
            c = f"{row['p50_ms']:.2f} / {row['p99_ms']:.2f} / {row['p999_ms']:.2f} / {row['max_ms']:.1f}"
            if row["invalid"]:
                c += "*"
            if row["skipped"]:
                c += f" ({row['runs']} of {row['runs'] + row['skipped']} rounds)"
            cells.append(c)
        L.append(f"| {g['rate']:.0f} ({g['frac'] * 100:.0f} %) | " + " | ".join(cells) + " |")
    L.append("")
    L.append("![CPU per request vs offered rate](cpu_vs_rate.svg)\n")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(L) + "\n")


def memory_readme(d):
    m = d["memory"]
    return (f" Memory: each target started fresh from configs/<target>-memory/, then `loadgen hold "
            f"--connections {','.join(str(n) for n in m['connections'])} --settle {m['settle']}` on CPU "
            f"{d['meta']['description']['loader_cpu']} (reports in [memory/](memory/)).")


def write_readme(d, out):
    meta = d["meta"]
    m = meta["machine"]
    v = meta["versions"]
    p = meta["params"]
    L = [f"# {os.path.basename(out.rstrip('/'))}: proxy vs Traefik, nginx, HAProxy\n",
         "The numbers are in [summary.md](summary.md); the raw data in [compare.json](compare.json) "
         "(`schema_version` 1); the generated peer configs in [configs/](configs/), strace tables in "
         "[strace/](strace/), callgrind profiles (top functions) in [callgrind/](callgrind/).\n",
         "## Command\n", "```sh", meta["command_line"], "```\n",
         f"Started {meta['start_time']}, ended {meta.get('end_time', '?')} "
         f"({meta.get('elapsed_s', 0) / 60:.1f} min). Mode `{meta['mode']}`: {p['rounds']} rounds; per target "
         f"and round a fresh process, {p['prewarm_s']} s closed-loop pre-warm, {p['closed_s']} s closed loop "
         f"({meta['connections']} connections), {p['fixed_s']} s open loop at the fixed rate, then "
         f"{p['step_s']} s per ladder step at {', '.join(f'{x:g}' for x in p['ladder'])} × Traefik's max. "
         f"strace: {p['strace_s']} s at {p['strace_rate']} req/s. callgrind: counters zeroed after 1 s "
         f"of warm-up, then {p['cg_s']} s at {p['cg_rate']} req/s on {meta['callgrind_connections']} "
         f"connections, dumped. SLO search: `loadgen ladder --search`, P99 ≤ {meta['slo_p99_ms']:g} ms, "
         f"{p['search_step_s']} s steps." + (memory_readme(d) if "memory" in d else "") + "\n",
         f"Upstream: `{meta.get('upstream_command', '?')}`\n",
         "## Machine and tools\n",
         "| | |", "|---|---|",
         f"| host | {m['host']} |", f"| CPU | {m['cpus']} × {m['cpu_model']} |",
         f"| kernel | {m['kernel_full']} |", f"| load average at start | {m['loadavg_at_start']} |",
         f"| git commit | {meta['git']['commit']} |",
         f"| uncommitted changes in proxy/, loadgen/ | {len(meta['git']['dirty_paths_proxy_loadgen'])} paths |"]
    for k, val in v.items():
        L.append(f"| {k} | {val} |")
    for k, val in meta["binaries"].items():
        L.append(f"| {k} binary | `{val}` |")
    if meta.get("binaries_note"):
        L.append(f"| how the binaries were built | {meta['binaries_note']} |")
    L.append(f"| pinning | target {meta['pinning']['target']}; loadgen + upstream {meta['pinning']['loadgen_and_upstream']} |")
    L.append("")
    cal = d.get("calibration", {})
    L.append(f"Calibration: {cal.get('source')}: {', '.join(f'{x:.0f}' for x in cal.get('runs_rps', []))} "
             f"→ rate base {d['grid']['rate_base']:.0f} req/s; fixed rate {d['grid']['fixed_rate']:.0f} req/s.\n")
    tr = [r["results"]["traefik"]["closed"]["achieved_rate"] for r in d.get("rounds", []) if "traefik" in r["results"]]
    if tr:
        L.append(f"Traefik's closed-loop max in the rounds themselves: median {med(tr):.0f} req/s "
                 f"(min {min(tr):.0f}, max {max(tr):.0f}); the fixed rate was "
                 f"{d['grid']['fixed_rate'] / med(tr) * 100:.0f} % of that median.\n")
    L.append("Round order (rotated each round):\n")
    for r in d.get("rounds", []):
        L.append(f"- round {r['round']}: {' → '.join(r['order'])}")
    L.append("")
    notes = os.path.join(out, "NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            L.append(f.read())
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(L) + "\n")
