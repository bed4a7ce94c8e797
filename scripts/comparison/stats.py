"""The numbers of a comparison run (summary.json): per-round values reduced to median [min–max]
over rounds; ratios (vs Traefik, vs the byte-relay floor, P99 minus the direct path's) taken
within a round, then reduced; the latency ladder from the rounds' histograms merged per step."""

from lib import hist

from .labels import TARGET_ORDER

LADDER_QUANTILES = (0.5, 0.99, 0.999)


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


def compute(d):
    """(targets in display order, per-target figures, latency ladder): summary.json's numbers."""
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

    if "memory" in d:  # runs before issue 14 have no memory phase: their summary.json is unchanged
        mem = d["memory"].get("targets", {})
        for t in targets:
            S[t]["memory"] = memory_figures(mem.get(t))

    ladder = latency_ladder(d, targets, rounds)
    return targets, S, ladder


def memory_figures(m):
    """summary.json's memory figures of one target from its memory-phase record: KiB per idle
    connection per crowd, the largest crowd's RSS after release ÷ before, and the last RSS after
    ÷ the first before (against the freshly started target); None when not measured."""
    if not m or not m.get("measured"):
        return None
    counts = m["counts"]
    last = counts[-1] if counts else {}
    return {"kib_per_conn": {str(c["connections"]): c["kib_per_conn"] for c in counts},
            "valid": {str(c["connections"]): c["valid"] for c in counts},
            "rss_before_mb": counts[0]["rss_before_kib"] / 1024 if counts else None,
            "rss_held_mb": {str(c["connections"]): c["rss_held_kib"] / 1024 for c in counts},
            "rss_after_mb": last.get("rss_after_kib", 0) / 1024 if counts else None,
            "after_ratio": last.get("after_ratio"),
            "after_vs_start": m.get("after_vs_start"),
            "largest": last.get("connections")}


def latency_ladder(d, targets, rounds):
    """Per target and grid step: the rounds' corrected-latency HdrHistograms merged (by
    `loadgen hist`, in one call; never an average of percentiles) and the median CPU µs per
    request."""
    grid = d.get("grid", {}).get("steps", [])
    ladder = {}
    measured = []  # (row, the step's histograms over the rounds, median CPU µs/request)
    for t in targets:
        rows = []
        for gi, g in enumerate(grid):
            hists = []
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
                    hists.append(st["histogram_corrected"])
                c = st.get("cpu", {})
                cpu_us.append(c.get("sched_us_per_req", c.get("us_per_req")))
            if runs == 0:
                rows.append({"frac": g["frac"], "rate": g["rate"], "runs": 0, "skipped": skipped})
                continue
            row = {"frac": g["frac"], "rate": g["rate"], "runs": runs, "invalid": invalid, "skipped": skipped}
            rows.append(row)
            measured.append((row, hists, med(cpu_us)))
        ladder[t] = rows
    merged = hist.merge([hists for _, hists, _ in measured], LADDER_QUANTILES)
    for (row, _, cpu), m in zip(measured, merged):
        p50, p99, p999 = ((v or 0) / 1e6 for v in m["quantiles"])
        row.update({"count": m["count"], "p50_ms": p50, "p99_ms": p99, "p999_ms": p999,
                    "max_ms": (m["max"] or 0) / 1e6, "cpu_us": cpu})
    return ladder
