#!/usr/bin/env python3
"""Render a comparison run (DIR/compare.json, written by compare.py) for people.

    python3 scripts/summarize.py DIR

Writes DIR/summary.md (the table, the goals), DIR/README.md (how the run was made) and the plots
DIR/latency.svg, DIR/cpu.svg, DIR/cpu_vs_rate.svg. Standard library only; it can be re-run on a
committed compare.json at any time (the JSON is the data, everything else is derived from it).

Statistics: per-round values are reduced to median [min–max] over rounds; ratios (vs Traefik, vs
the byte-relay floor, P99 minus the direct path's) are taken within a round, then reduced. Latency
percentiles on the ladder come from the rounds' HdrHistograms merged per step (never an average
of percentiles).
"""

import base64
import json
import math
import os
import struct
import sys
import zlib

TARGET_ORDER = ["direct", "relay", "native", "hyper", "traefik", "nginx", "haproxy"]
LABEL = {"direct": "direct (no proxy)", "relay": "byte-relay floor", "native": "proxy (native)",
         "hyper": "proxy (hyper)", "traefik": "Traefik 3.7", "nginx": "nginx 1.22", "haproxy": "HAProxy 2.6"}
COLOR = {"direct": "#7f7f7f", "relay": "#000000", "native": "#d62728", "hyper": "#ff9896",
         "traefik": "#1f77b4", "nginx": "#2ca02c", "haproxy": "#9467bd"}


# ---------------------------------------------------------------- HdrHistogram V2 (+deflate)


def hdr_decode(b64):
    """Decode a base64 'HISTFAAA...' V2-compressed HdrHistogram: (lowest, sig, unit, counts dict)."""
    raw = base64.b64decode(b64)
    cookie, length = struct.unpack(">ii", raw[:8])
    data = zlib.decompress(raw[8:8 + length])
    cookie2, plen, norm, sig, lowest, highest, ratio = struct.unpack(">iiiiqqd", data[:40])
    payload = data[40:40 + plen]
    counts = {}
    i = idx = 0
    while i < len(payload):
        v = shift = 0
        while True:  # LEB128, at most 9 bytes (the 9th carries 8 bits)
            byte = payload[i]
            i += 1
            if shift == 56:
                v |= byte << 56
                break
            v |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        v = (v >> 1) ^ -(v & 1)  # zigzag
        if v < 0:
            idx += -v
        else:
            if v:
                counts[idx] = counts.get(idx, 0) + v
            idx += 1
    return {"lowest": lowest, "sig": sig, "counts": counts}


class Hist:
    """Merged histogram: counts keyed by the value range's highest equivalent value (ns)."""

    def __init__(self):
        self.counts = {}

    def add_b64(self, b64):
        h = hdr_decode(b64)
        sig, lowest = h["sig"], h["lowest"]
        sub_bucket_count_mag = math.ceil(math.log2(2 * 10 ** sig))
        half_mag = sub_bucket_count_mag - 1
        half = 1 << half_mag
        unit_mag = int(math.floor(math.log2(lowest)))
        for idx, c in h["counts"].items():
            bucket = (idx >> half_mag) - 1
            sub = (idx & (half - 1)) + half
            if bucket < 0:
                sub -= half
                bucket = 0
            lo = sub << (bucket + unit_mag)
            hi = lo + (1 << (bucket + unit_mag)) - 1
            self.counts[hi] = self.counts.get(hi, 0) + c

    def total(self):
        return sum(self.counts.values())

    def quantile(self, q):
        n = self.total()
        if n == 0:
            return None
        want = max(1, math.ceil(q * n))
        acc = 0
        for v in sorted(self.counts):
            acc += self.counts[v]
            if acc >= want:
                return v
        return max(self.counts)

    def max(self):
        return max(self.counts) if self.counts else None


# ---------------------------------------------------------------- statistics


def med(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def stat(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": med(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


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


def compute(d):
    targets = [t for t in TARGET_ORDER if t in d["meta"]["targets"]]
    rounds = d.get("rounds", [])
    slo_us = d["meta"]["slo_p99_ms"] * 1000
    S = {}
    for t in targets:
        per = [r["results"][t] for r in rounds if t in r["results"]]
        s = {"rounds": len(per)}

        def cpu(run, k):
            return run.get("cpu", {}).get(k)

        s["rps_max"] = stat([p["closed"]["achieved_rate"] for p in per])
        s["util_max"] = stat([cpu(p["closed"], "util") for p in per])
        for where in ("closed", "fixed"):
            for k in ("us_per_req", "us_per_req_user", "us_per_req_sys"):
                s[f"{where}_{k}"] = stat([cpu(p[where], k) for p in per])
        s["p99_fixed_ms"] = stat([p["fixed"]["latency"]["corrected"]["p99_us"] / 1000 for p in per])
        s["p50_fixed_ms"] = stat([p["fixed"]["latency"]["corrected"]["p50_us"] / 1000 for p in per])
        s["fixed_valid"] = sum(1 for p in per if p["fixed"]["valid"])
        s["rss_mb"] = stat([p["vm_hwm_kb"] / 1024 for p in per if "vm_hwm_kb" in p])
        # the max sustainable rate on the grid: the last step of an unbroken run of passing steps
        slo_rates = []
        for p in per:
            best = 0.0
            for st in p["ladder"]:
                if "skipped" in st:
                    break
                ok = (st["valid"] and st["latency"]["corrected"]["p99_us"] <= slo_us
                      and sum(st["errors"].values()) == 0)
                if not ok:
                    break
                best = st["rate"]
            slo_rates.append(best)
        s["slo_grid_rate"] = stat(slo_rates)
        S[t] = s

    # ratios within a round
    def ratio_series(t, ref, key, invert):
        out = []
        for r in rounds:
            res = r["results"]
            if t not in res or ref not in res:
                continue
            a = res[t][key].get("cpu", {}).get("us_per_req")
            b = res[ref][key].get("cpu", {}).get("us_per_req")
            if a and b:
                out.append(b / a if invert else a / b)
        return stat(out)

    for t in targets:
        s = S[t]
        if t == "direct":
            continue
        if "traefik" in targets:
            s["less_than_traefik_max"] = ratio_series(t, "traefik", "closed", True)
            s["less_than_traefik_fixed"] = ratio_series(t, "traefik", "fixed", True)
            s["rps_vs_traefik"] = stat([r["results"][t]["closed"]["achieved_rate"]
                                        / r["results"]["traefik"]["closed"]["achieved_rate"]
                                        for r in rounds if t in r["results"] and "traefik" in r["results"]])
        if "relay" in targets:
            s["floor_x_max"] = ratio_series(t, "relay", "closed", False)
            s["floor_x_fixed"] = ratio_series(t, "relay", "fixed", False)
        if "direct" in targets:
            s["p99_minus_direct_ms"] = stat([
                (r["results"][t]["fixed"]["latency"]["corrected"]["p99_us"]
                 - r["results"]["direct"]["fixed"]["latency"]["corrected"]["p99_us"]) / 1000
                for r in rounds if t in r["results"] and "direct" in r["results"]])
    for name in ("native", "hyper", "nginx", "haproxy"):
        if name in S and "nginx" in S:
            pass
    # single-shot phases
    cg = d.get("callgrind", {})
    sc = d.get("syscalls", {})
    se = d.get("slo_search", {})
    for t in targets:
        s = S[t]
        c = cg.get(t)
        s["ir_per_req"] = c.get("ir_per_request") if c and c.get("measured") else None
        s["ir_note"] = c.get("reason") if c and not c.get("measured") else None
        y = sc.get(t)
        s["syscalls_per_req"] = y.get("per_request") if y else None
        z = se.get(t) if isinstance(se, dict) else None
        s["slo_search_rate"] = (z or {}).get("report", {}).get("max_sustainable_rate") if z else None
    for t in targets:
        s = S[t]
        r = S.get("relay", {})
        s["ir_x_floor"] = s["ir_per_req"] / r["ir_per_req"] if s.get("ir_per_req") and r.get("ir_per_req") else None
        s["sys_x_floor"] = (s["syscalls_per_req"] / r["syscalls_per_req"]
                            if s.get("syscalls_per_req") and r.get("syscalls_per_req") else None)

    # latency ladder: merge the rounds' histograms per step
    ladder = {}
    grid = d.get("grid", {}).get("steps", [])
    for t in targets:
        rows = []
        for gi, g in enumerate(grid):
            h = Hist()
            runs = invalid = skipped = 0
            cpu_us = []
            for r in rounds:
                if t not in r["results"]:
                    continue
                st = r["results"][t]["ladder"][gi]
                if "skipped" in st:
                    skipped += 1
                    continue
                runs += 1
                invalid += 0 if st["valid"] else 1
                if st.get("histogram_corrected"):
                    h.add_b64(st["histogram_corrected"])
                c = st.get("cpu", {})
                cpu_us.append(c.get("sched_us_per_req", c.get("us_per_req")))
            if runs == 0:
                rows.append({"frac": g["frac"], "rate": g["rate"], "runs": 0, "skipped": skipped})
                continue
            q = lambda x: (h.quantile(x) or 0) / 1e6
            rows.append({"frac": g["frac"], "rate": g["rate"], "runs": runs, "invalid": invalid,
                         "skipped": skipped, "count": h.total(),
                         "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999),
                         "max_ms": (h.max() or 0) / 1e6, "cpu_us": med(cpu_us)})
        ladder[t] = rows
    return targets, S, ladder


# ---------------------------------------------------------------- markdown


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
    L.append("Values are median [min–max] over rounds. CPU is the target process's utime+stime from "
             "/proc/PID/stat (all threads; nginx: master + worker) divided by the responses it served; "
             "\"× less than Traefik\" and \"× floor\" are ratios within each round. "
             f"\"Fixed rate\" = {fr:.0f} req/s open loop = 50 % of Traefik's closed-loop max "
             f"({base:.0f} req/s, calibrated at the start of the run).\n")
    hdr = ["target", "CPU µs/req at max (user + kernel)", f"CPU µs/req at {fr:.0f} req/s",
           "× less CPU than Traefik (max / fixed)", "× floor (max / fixed)", "req/s max (closed loop)",
           f"P99 at {fr:.0f} req/s", "RSS (VmHWM)", "instructions/req (callgrind)", "syscalls/req (strace)",
           f"max rate, P99 ≤ {meta['slo_p99_ms']:g} ms (grid / search)"]
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
        L.append(f"| {LABEL[t]} | {cm} | {cf} | {lt} | {fl} | {rps} | {p99} | {rss} | {ir} | {sc} | {slo} |")
    L.append("")
    L.append("![CPU per request](cpu.svg)\n")
    L.append("![Latency vs offered rate](latency.svg)\n")
    L.append("## Goals (phase 1, issue 6; floor goals, issue 8)\n")
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
         f"{p['search_step_s']} s steps.\n",
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


# ---------------------------------------------------------------- SVG


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Svg:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.el = []

    def add(self, s):
        self.el.append(s)

    def text(self, x, y, s, size=12, anchor="start", weight="normal", color="#000", rotate=None):
        tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                 f'font-weight="{weight}" fill="{color}"{tr}>{esc(s)}</text>')

    def line(self, x1, y1, x2, y2, color="#000", width=1, dash=None):
        da = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
                 f'stroke-width="{width}"{da}/>')

    def rect(self, x, y, w, h, fill, stroke="none"):
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" '
                 f'fill="{fill}" stroke="{stroke}"/>')

    def polyline(self, pts, color, width=2):
        p = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        self.add(f'<polyline points="{p}" fill="none" stroke="{color}" stroke-width="{width}"/>')

    def circle(self, x, y, r, color, hollow=False):
        fill = "#fff" if hollow else color
        self.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}" stroke="{color}" stroke-width="1.5"/>')

    def save(self, path):
        with open(path, "w") as f:
            f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
                    f'viewBox="0 0 {self.w} {self.h}" font-family="Helvetica, Arial, sans-serif">\n')
            f.write(f'<rect width="{self.w}" height="{self.h}" fill="#fff"/>\n')
            f.write("\n".join(self.el))
            f.write("\n</svg>\n")


def nice_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=mag * 10)
    t = math.ceil(lo / step) * step
    out = []
    while t <= hi + 1e-9:
        out.append(t)
        t += step
    return out


def fmt_rate(v):
    return f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"


def panel(svg, x0, y0, w, h, title, series, xmax, ylog, ylabel, xlabel="offered rate (req/s)"):
    """series: list of (target, [(x, y, hollow)]) drawn as lines with markers."""
    ys = [p[1] for _, pts in series for p in pts if p[1] and p[1] > 0]
    if not ys:
        return
    svg.text(x0 + w / 2, y0 - 8, title, size=14, anchor="middle", weight="bold")
    svg.rect(x0, y0, w, h, "none", stroke="#999")
    if ylog:
        lo = 10 ** math.floor(math.log10(min(ys)))
        hi = 10 ** math.ceil(math.log10(max(ys)))
        fy = lambda v: y0 + h - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * h
        e = math.log10(lo)
        decades = math.log10(hi) - math.log10(lo)
        while 10 ** e <= hi * 1.0001:
            for m in ((1, 2, 5) if decades <= 3 else (1,)):
                v = m * 10 ** e
                if v > hi * 1.0001:
                    break
                svg.line(x0, fy(v), x0 + w, fy(v), "#ddd" if m == 1 else "#f0f0f0")
                svg.text(x0 - 5, fy(v) + 4, f"{v:g}", size=11 if m == 1 else 9, anchor="end",
                         color="#000" if m == 1 else "#777")
            e += 1
    else:
        hi = max(ys) * 1.1
        fy = lambda v: y0 + h - v / hi * h
        for v in nice_ticks(0, hi):
            svg.line(x0, fy(v), x0 + w, fy(v), "#ddd")
            svg.text(x0 - 5, fy(v) + 4, f"{v:g}", size=11, anchor="end")
    fx = lambda v: x0 + v / xmax * w
    for v in nice_ticks(0, xmax, 6):
        svg.line(fx(v), y0 + h, fx(v), y0 + h + 4, "#666")
        svg.text(fx(v), y0 + h + 16, fmt_rate(v), size=11, anchor="middle")
    svg.text(x0 + w / 2, y0 + h + 32, xlabel, size=12, anchor="middle")
    svg.text(x0 - 42, y0 + h / 2, ylabel, size=12, anchor="middle", rotate=-90)
    for t, pts in series:
        pts = [p for p in pts if p[1] and p[1] > 0]
        if not pts:
            continue
        svg.polyline([(fx(x), fy(y)) for x, y, _ in pts], COLOR[t])
        for x, y, hollow in pts:
            svg.circle(fx(x), fy(y), 3.5, COLOR[t], hollow)


def legend(svg, x, y, targets, per_row=7):
    for i, t in enumerate(targets):
        cx = x + (i % per_row) * 150
        cy = y + (i // per_row) * 18
        svg.line(cx, cy - 4, cx + 22, cy - 4, COLOR[t], 3)
        svg.text(cx + 28, cy, LABEL[t], size=12)


def plot_latency(d, targets, ladder, out):
    W, H = 1100, 780
    svg = Svg(W, H)
    fr = d["grid"]["fixed_rate"]
    svg.text(W / 2, 24, f"Latency vs offered rate (open loop, corrected from intended send time; "
             f"{len(d['rounds'])} round{'s' if len(d['rounds']) != 1 else ''} merged)", size=16, anchor="middle", weight="bold")
    legend(svg, 60, 50, targets)
    xmax = max(g["rate"] for g in d["grid"]["steps"]) * 1.05
    pw, ph = 440, 250
    keys = [("p50_ms", "P50"), ("p99_ms", "P99"), ("p999_ms", "P99.9"), ("max_ms", "max")]
    for i, (k, title) in enumerate(keys):
        x0 = 90 + (i % 2) * (pw + 110)
        y0 = 100 + (i // 2) * (ph + 90)
        series = []
        for t in targets:
            pts = [(r["rate"], r.get(k), bool(r.get("invalid"))) for r in ladder[t] if r["runs"]]
            series.append((t, pts))
        panel(svg, x0, y0, pw, ph, f"{title} latency (ms, log scale)", series, xmax, True, "ms")
    svg.text(W / 2, H - 12, f"Hollow marker: a run at that step was INVALID (generator late). A line ends where the "
             f"target was overloaded. Fixed rate for the table: {fr:.0f} req/s.", size=11, anchor="middle")
    svg.save(os.path.join(out, "latency.svg"))


def plot_cpu(d, targets, S, out):
    proxied = [t for t in targets if t != "direct"]
    W, H = 1100, 470
    svg = Svg(W, H)
    fr = d["grid"]["fixed_rate"]
    svg.text(W / 2, 24, "CPU time of the target process per request (µs; median of rounds, whisker = min–max)",
             size=16, anchor="middle", weight="bold")
    svg.rect(330, 40, 14, 12, "#444")
    svg.text(350, 51, "user", size=12)
    svg.rect(400, 40, 14, 12, "#bbb")
    svg.text(420, 51, "kernel", size=12)
    svg.line(480, 46, 510, 46, "#000", 2, "6,4")
    svg.text(516, 51, "byte-relay floor (same run)", size=12)
    panels = [("closed", "at max (closed loop, 50 connections)"), ("fixed", f"at {fr:.0f} req/s (open loop)")]
    pw, ph = 480, 320
    for pi, (key, title) in enumerate(panels):
        x0 = 70 + pi * (pw + 70)
        y0 = 80
        vals = [S[t][f"{key}_us_per_req"] for t in proxied]
        top = max((v["max"] for v in vals if v), default=1) * 1.1
        fy = lambda v: y0 + ph - v / top * ph
        svg.text(x0 + pw / 2, y0 - 6, title, size=14, anchor="middle", weight="bold")
        for v in nice_ticks(0, top):
            svg.line(x0, fy(v), x0 + pw, fy(v), "#e5e5e5")
            svg.text(x0 - 5, fy(v) + 4, f"{v:g}", size=11, anchor="end")
        svg.line(x0, y0 + ph, x0 + pw, y0 + ph, "#666")
        bw = pw / len(proxied)
        for i, t in enumerate(proxied):
            s = S[t]
            tot, u = s[f"{key}_us_per_req"], s[f"{key}_us_per_req_user"]
            if not tot:
                continue
            bx = x0 + i * bw + bw * 0.18
            bwid = bw * 0.64
            user = min(u["median"], tot["median"]) if u else 0
            svg.rect(bx, fy(user), bwid, y0 + ph - fy(user), "#444")
            svg.rect(bx, fy(tot["median"]), bwid, fy(user) - fy(tot["median"]), "#bbb")
            svg.rect(bx, y0 + ph + 2, bwid, 4, COLOR[t])
            cx = bx + bwid / 2
            svg.line(cx, fy(tot["min"]), cx, fy(tot["max"]), "#000", 1.2)
            svg.line(cx - 5, fy(tot["min"]), cx + 5, fy(tot["min"]), "#000", 1.2)
            svg.line(cx - 5, fy(tot["max"]), cx + 5, fy(tot["max"]), "#000", 1.2)
            svg.text(cx, fy(tot["max"]) - 5, f"{tot['median']:.1f}", size=11, anchor="middle", weight="bold")
            svg.text(cx, y0 + ph + 20, LABEL[t].replace(" (", "\u00a0("), size=10, anchor="middle")
        floor = S.get("relay", {}).get(f"{key}_us_per_req")
        if floor:
            svg.line(x0, fy(floor["median"]), x0 + pw, fy(floor["median"]), "#000", 2, "6,4")
    svg.text(W / 2, H - 12, "utime + stime from /proc/PID/stat (all threads; nginx master + worker) before/after "
             "each run ÷ responses served. Bar = median total, dark part = median user time.", size=11,
             anchor="middle")
    svg.save(os.path.join(out, "cpu.svg"))


def plot_cpu_vs_rate(d, targets, ladder, out):
    proxied = [t for t in targets if t != "direct"]
    W, H = 800, 450
    svg = Svg(W, H)
    svg.text(W / 2, 24, "CPU µs per request vs offered rate (median of rounds, log scale)", size=16,
             anchor="middle", weight="bold")
    legend(svg, 40, 50, proxied, per_row=4)
    xmax = max(g["rate"] for g in d["grid"]["steps"]) * 1.05
    series = [(t, [(r["rate"], r.get("cpu_us"), bool(r.get("invalid"))) for r in ladder[t] if r["runs"]])
              for t in proxied]
    panel(svg, 90, 110, 660, 270, "", series, xmax, True, "µs/request")
    svg.save(os.path.join(out, "cpu_vs_rate.svg"))


def main():
    if len(sys.argv) != 2:
        print("usage: summarize.py DIR (holding compare.json)", file=sys.stderr)
        sys.exit(2)
    out = sys.argv[1]
    with open(os.path.join(out, "compare.json")) as f:
        d = json.load(f)
    if d.get("schema_version") != 1:
        print(f"summarize: unknown schema_version {d.get('schema_version')}", file=sys.stderr)
        sys.exit(2)
    targets, S, ladder = compute(d)
    write_summary(d, targets, S, ladder, out)
    write_readme(d, out)
    plot_latency(d, targets, ladder, out)
    plot_cpu(d, targets, S, out)
    plot_cpu_vs_rate(d, targets, ladder, out)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"schema_version": 1, "kind": "compare-summary", "targets": S, "ladder": ladder}, f, indent=1)


if __name__ == "__main__":
    main()
