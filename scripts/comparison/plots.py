"""The run's three plots: latency vs offered rate, CPU per request, CPU per request vs rate."""

import os

from .labels import COLOR, LABEL
from .svg import Svg, legend, nice_ticks, panel


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
