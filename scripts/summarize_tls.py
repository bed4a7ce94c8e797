#!/usr/bin/env python3
"""Render a TLS comparison run (DIR/tls.json, written by compare_tls.py) for people.

    python3 scripts/summarize_tls.py DIR

Writes DIR/summary.md (the tables), DIR/summary.json (the derived numbers), DIR/runs.csv (one
line per loadgen run, with its exact command), DIR/commands.md (the exact commands, one of each
kind) and DIR/noise.md (load average, the spread over rounds, what the figures do not say).
DIR/NOTES.md is the hand-written part (compare_tls.py leaves a stub). Standard library only; can be re-run on a committed
tls.json at any time.

Statistics as in the cleartext comparison (comparison/stats.py): per-round values reduced to
median [min–max] over rounds; ratios (× the TLS relay floor, × less CPU than Traefik, ÷ nginx)
taken within a round, then reduced.
"""

import csv
import json
import os
import sys

from comparison.stats import stat

ORDER = ["relay", "native", "traefik", "nginx", "haproxy"]
LABEL = {"relay": "TLS relay floor (`loadgen relay --tls`)", "native": "this proxy (native)",
         "traefik": "Traefik", "nginx": "nginx", "haproxy": "HAProxy"}
HS_PHASES = [("ecdsa", "full"), ("rsa", "full"), ("ecdsa", "resumed"), ("rsa", "resumed")]


def cpu_s(run):
    c = run.get("cpu")
    return (c["user_s"] + c["sys_s"]) if c else None


def n_hs(run):
    h = run.get("handshakes") or {}
    return h.get("full", 0) + h.get("resumed", 0)


def us_per_req(run):
    c = cpu_s(run)
    return c / run["requests_handled"] * 1e6 if c is not None and run["requests_handled"] else None


def us_per_hs(run):
    c = cpu_s(run)
    return c / n_hs(run) * 1e6 if c is not None and n_hs(run) else None


def hs_per_cpu_s(run):
    c = cpu_s(run)
    return n_hs(run) / c if c and n_hs(run) else None


def errors(run):
    return sum((run.get("errors") or {}).values())


def ratio(a, b):
    return a / b if a is not None and b else None


def compute(d):
    targets = [t for t in ORDER if t in d["meta"]["targets"]]
    rounds = d.get("rounds", [])
    S = {}
    for t in targets:
        per = [r["results"][t] for r in rounds if t in r["results"]]
        s = {"rounds": len(per)}
        e = [p["ecdsa"] for p in per]
        s["warm_max_rps"] = stat([x["closed"]["achieved_rate"] for x in e])
        s["warm_max_util"] = stat([x["closed"].get("cpu", {}).get("util") for x in e])
        for where in ("closed", "fixed", "churn"):
            s[f"{where}_us_per_req"] = stat([us_per_req(x[where]) for x in e])
            s[f"{where}_us_per_req_user"] = stat([x[where]["cpu"]["us_per_req_user"] for x in e if x[where].get("cpu")])
            s[f"{where}_us_per_req_sys"] = stat([x[where]["cpu"]["us_per_req_sys"] for x in e if x[where].get("cpu")])
            s[f"{where}_p50_ms"] = stat([x[where]["latency"]["corrected"]["p50_us"] / 1000 for x in e])
            s[f"{where}_p99_ms"] = stat([x[where]["latency"]["corrected"]["p99_us"] / 1000 for x in e])
        s["churn_full"] = stat([(x["churn"].get("handshakes") or {}).get("full") for x in e])
        s["churn_resumed"] = stat([(x["churn"].get("handshakes") or {}).get("resumed") for x in e])
        s["rss_peak_mb"] = stat([x["vm_hwm_kb"] / 1024 for x in e if "vm_hwm_kb" in x])
        for kt, ph in HS_PHASES:
            runs = [p[kt][ph] for p in per if kt in p]
            s[f"{kt}_{ph}_hs_per_cpu_s"] = stat([hs_per_cpu_s(r) for r in runs])
            s[f"{kt}_{ph}_us_per_hs"] = stat([us_per_hs(r) for r in runs])
            s[f"{kt}_{ph}_achieved"] = stat([r["achieved_rate"] for r in runs])
            s[f"{kt}_{ph}_resumed_frac"] = stat([ratio((r.get("handshakes") or {}).get("resumed", 0), n_hs(r)) for r in runs])
            s[f"{kt}_{ph}_hs_p99_ms"] = stat([(r["latency"].get("handshake") or {}).get("p99_us", 0) / 1000
                                             if r["latency"].get("handshake") else None for r in runs])
        # ratios within a round
        def within(f):
            return stat([f(p, r["results"]) for r, p in zip([r for r in rounds if t in r["results"]], per)])
        for where in ("closed", "fixed"):
            s[f"{where}_x_floor"] = within(lambda p, R, w=where: ratio(us_per_req(p["ecdsa"][w]),
                                                                      us_per_req(R["relay"]["ecdsa"][w]) if "relay" in R else None))
            s[f"{where}_x_less_than_traefik"] = within(lambda p, R, w=where: ratio(
                us_per_req(R["traefik"]["ecdsa"][w]) if "traefik" in R else None, us_per_req(p["ecdsa"][w])))
        for kt, ph in HS_PHASES:
            s[f"{kt}_{ph}_x_less_than_traefik"] = within(lambda p, R, kt=kt, ph=ph: ratio(
                us_per_hs(R["traefik"][kt][ph]) if "traefik" in R and kt in R["traefik"] else None,
                us_per_hs(p[kt][ph]) if kt in p else None))
            s[f"{kt}_{ph}_x_nginx"] = within(lambda p, R, kt=kt, ph=ph: ratio(
                us_per_hs(p[kt][ph]) if kt in p else None,
                us_per_hs(R["nginx"][kt][ph]) if "nginx" in R and kt in R["nginx"] else None))
        runs_all = [x[w] for x in e for w in ("closed", "fixed", "churn", "full", "resumed")]
        runs_all += [p["rsa"][w] for p in per if "rsa" in p for w in ("full", "resumed")]
        s["runs"] = len(runs_all)
        s["invalid_runs"] = sum(1 for r in runs_all if not r["valid"])
        s["invalid_reasons"] = sorted({why.split(":")[0] for r in runs_all for why in (r.get("invalid_reasons") or [])})
        lags = [r["latency"]["send_lag"]["p99_us"] / 1000 for r in runs_all if r["latency"].get("send_lag")]
        s["send_lag_p99_ms"] = stat(lags)
        s["errors"] = sum(errors(r) for r in runs_all)
        s["negotiated"] = sorted({f"{n['version']} {n['cipher_suite']}" for r in runs_all
                                  for n in (r.get("tls_negotiated") or [])})
        S[t] = s
    mem = {}
    for t, m in ((d.get("memory") or {}).get("targets") or {}).items():
        if not m.get("measured"):
            mem[t] = {"measured": False, "reason": m.get("reason")}
            continue
        mem[t] = {"measured": True, "valid": m["valid"], "counts": m["counts"], "tls_handshakes": m.get("tls_handshakes")}
    return targets, S, mem


def fmt(st, digits=1, suffix=""):
    if not st:
        return "—"
    m, lo, hi = st["median"], st["min"], st["max"]
    f = f"{{:,.{digits}f}}"
    if st["n"] == 1 or lo == hi:
        return f.format(m) + suffix
    return f"{f.format(m)}{suffix} [{f.format(lo)}–{f.format(hi)}]"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_summary(d, targets, S, mem, out):
    m = d["meta"]
    p, rates = m["params"], d["rates"]
    L = []
    smoke = m["mode"] == "smoke"
    L.append(f"# TLS comparison{' (SMOKE RUN: not a measurement, see NOTES.md)' if smoke else ''}: {m['start_time']} on {m['machine']['host']}")
    L.append("")
    L.append(f"`{m['command_line']}` — {m['mode']} mode, {p['rounds']} round(s), {m.get('elapsed_s', 0):.0f} s; "
             f"load average at start `{m['machine']['loadavg_at_start']}`, at end `{m['machine'].get('loadavg_at_end', '?')}`. "
             f"Commit `{m['git']['commit'][:12]}`. Target on CPU {m['description']['proxy_cpu']}, loadgen and the "
             f"upstream on CPU {m['description']['loader_cpu']}; one worker each; HTTP/1.1, {m['description']['body_bytes']}-byte body; "
             "TLS terminated by the target with the same certificate (ECDSA P-256 or RSA-2048, one per process), "
             "cleartext to the upstream. Method and column meanings: [scripts/README.md](../../../scripts/README.md#scriptscompare-tlssh-the-tls-comparison); "
             "noise: [noise.md](noise.md) and [NOTES.md](NOTES.md).")
    L.append("")
    cal = d["calibration"]
    utils = [u for u in cal.get("traefik_util") or [] if u is not None]
    if utils:
        busy = f"Traefik {min(utils) * 100:.0f}–{max(utils) * 100:.0f} % busy"
        busy += (": loader-bound, the fixed rate is below half Traefik's capacity" if max(utils) < 0.9 else "")
    else:
        busy = "Traefik's CPU during calibration not recorded (older run): see section 1's req/s max"
    L.append(f"Rates: Traefik's TLS keep-alive max {rates['rate_base']:,.0f} req/s ({cal['source']}; {busy}); fixed rate "
             f"{rates['fixed_rate']:,.0f} req/s (50 %); full handshakes offered at {rates['full_rate']:,.0f}/s, resumed at "
             f"{rates['resumed_rate']:,.0f}/s (`--connect-rate`, {m['hs_max_connections']} connections at most); churn: "
             f"`--new-connection-every {rates['churn_every']}` at the fixed rate. Values: median [min–max] over rounds.")
    L.append("")
    L.append("## 1. Warm TLS keep-alive connections (ECDSA, 50 connections)")
    L.append("")
    rows = []
    for t in targets:
        s = S[t]
        rps = fmt(s["warm_max_rps"], 0)
        if s["warm_max_util"] and s["warm_max_util"]["median"] < 0.9:
            rps = f"≥ {rps} (loader-bound: target {s['warm_max_util']['median'] * 100:.0f} % busy)"
        rows.append([LABEL[t], rps, fmt(s["closed_us_per_req"]), fmt(s["closed_x_floor"], 2, "×"),
                     fmt(s["fixed_us_per_req"]), f"{fmt(s['fixed_us_per_req_user'])} + {fmt(s['fixed_us_per_req_sys'])}",
                     fmt(s["fixed_x_floor"], 2, "×"), fmt(s["fixed_x_less_than_traefik"], 2, "×"),
                     fmt(s["fixed_p50_ms"], 2), fmt(s["fixed_p99_ms"], 2)])
    L.append(table(["target", "req/s max (closed)", "CPU µs/req at max", "× floor at max", "CPU µs/req at fixed rate",
                    "user + kernel", "× floor at fixed", "× less than Traefik at fixed", "P50 ms fixed", "P99 ms fixed"], rows))
    L.append("")
    L.append("## 2. Full handshakes (a new connection per request, `--resume off`)")
    L.append("")
    rows = []
    for t in targets:
        s = S[t]
        for kt in ("ecdsa", "rsa"):
            if not s.get(f"{kt}_full_hs_per_cpu_s"):
                continue
            rows.append([LABEL[t], "ECDSA P-256" if kt == "ecdsa" else "RSA-2048", fmt(s[f"{kt}_full_hs_per_cpu_s"], 0),
                         fmt(s[f"{kt}_full_us_per_hs"], 0), fmt(s[f"{kt}_full_x_less_than_traefik"], 2, "×"),
                         fmt(s[f"{kt}_full_x_nginx"], 2, "×"), fmt(s[f"{kt}_full_achieved"], 0), fmt(s[f"{kt}_full_hs_p99_ms"], 2)])
    L.append(table(["target", "key", "full handshakes per CPU-second", "CPU µs per handshake", "× less CPU than Traefik",
                    "÷ nginx (≤ 1 = at or below)", "achieved/s", "set-up P99 ms"], rows))
    L.append("")
    L.append("## 3. Resumed handshakes (TLS 1.3 tickets, resume on)")
    L.append("")
    rows = []
    for t in targets:
        s = S[t]
        for kt in ("ecdsa", "rsa"):
            if not s.get(f"{kt}_resumed_hs_per_cpu_s"):
                continue
            rows.append([LABEL[t], "ECDSA P-256" if kt == "ecdsa" else "RSA-2048", fmt(s[f"{kt}_resumed_hs_per_cpu_s"], 0),
                         fmt(s[f"{kt}_resumed_us_per_hs"], 0), fmt(s[f"{kt}_resumed_resumed_frac"], 3),
                         fmt(s[f"{kt}_resumed_x_less_than_traefik"], 2, "×"), fmt(s[f"{kt}_resumed_x_nginx"], 2, "×"),
                         fmt(s[f"{kt}_resumed_achieved"], 0)])
    L.append(table(["target", "certificate", "handshakes per CPU-second", "CPU µs per handshake", "resumed fraction",
                    "× less CPU than Traefik", "÷ nginx", "achieved/s"], rows))
    L.append("")
    L.append(f"## 4. Connection churn (open loop at {rates['fixed_rate']:,.0f} req/s, a new connection every "
             f"{rates['churn_every']} requests, resume on; ECDSA)")
    L.append("")
    rows = [[LABEL[t], fmt(S[t]["churn_p50_ms"], 2), fmt(S[t]["churn_p99_ms"], 2), fmt(S[t]["churn_us_per_req"]),
             fmt(S[t]["churn_full"], 0), fmt(S[t]["churn_resumed"], 0)] for t in targets]
    L.append(table(["target", "P50 ms", "P99 ms", "CPU µs/req", "full set-ups", "resumed set-ups"], rows))
    L.append("")
    L.append("## 5. Memory: idle TLS connections (`loadgen hold` over https://, ECDSA)")
    L.append("")
    rows = []
    for t in targets:
        mm = mem.get(t)
        if mm is None:
            continue
        if not mm["measured"]:
            rows.append([LABEL[t], "not measured", "", "", "", mm["reason"] or ""])
            continue
        for c, hs in zip(mm["counts"], mm.get("tls_handshakes") or [None] * len(mm["counts"])):
            k = c["kib_per_conn"]
            rows.append([LABEL[t], f"{c['connections']:,}", f"{c['rss_before_kib'] / 1024:.1f} → {c['rss_held_kib'] / 1024:.1f}",
                         f"{k:.2f}" if k is not None else "—", "valid" if c["valid"] else f"INVALID ({c['failed']} failed)",
                         f"{hs['full']} full + {hs['resumed']} resumed" if hs else ""])
    L.append(table(["target", "idle TLS connections", "RSS MiB before → held", "KiB per idle connection", "", "client handshakes"], rows))
    L.append("")
    L.append("Peak RSS (VmHWM) after each round's ECDSA runs: " + ", ".join(
        f"{LABEL[t]} {fmt(S[t]['rss_peak_mb'])} MiB" for t in targets) + ".")
    L.append("")
    L.append("## Validity")
    L.append("")
    rows = [[LABEL[t], str(S[t]["runs"]), str(S[t]["invalid_runs"]), "; ".join(S[t]["invalid_reasons"]) or "—",
             fmt(S[t]["send_lag_p99_ms"], 2), str(S[t]["errors"]), ", ".join(S[t]["negotiated"])]
            for t in targets]
    L.append(table(["target", "loadgen runs", "INVALID runs", "why INVALID", "generator send lag P99 ms (over its runs)",
                    "errors", "negotiated (all runs)"], rows))
    L.append("")
    L.append("INVALID is loadgen's verdict on itself (it could not keep its schedule: send lag P99 > 1 ms, or could not "
             "send the load): the CPU per request or handshake of such a run is still the target's CPU over what it "
             "served, but its latency figures include the generator's lateness.")
    L.append("")
    L.append("Every loadgen command is in `runs.csv` (one of each kind in `commands.md`); the targets' configs in `configs/{ecdsa,rsa}/`; the "
             "certificates' openssl commands in `certs/commands.txt`; every report in `tls.json`.")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(L) + "\n")


def write_csv(d, out):
    cols = ["round", "target", "key_type", "phase", "valid", "target_rate", "achieved_rate", "responses", "errors",
            "full_handshakes", "resumed_handshakes", "user_s", "sys_s", "wall_s", "cpu_us_per_req", "cpu_us_per_handshake",
            "handshakes_per_cpu_s", "p50_ms", "p99_ms", "negotiated", "command"]
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in d.get("rounds", []):
            for t, res in r["results"].items():
                for kt in ("ecdsa", "rsa"):
                    for ph, run in (res.get(kt) or {}).items():
                        if not isinstance(run, dict) or "counts" not in run:
                            continue
                        h = run.get("handshakes") or {}
                        c = run.get("cpu") or {}
                        lat = run["latency"]["corrected"]
                        w.writerow([r["round"], t, kt, ph, run["valid"], run["target_rate"], round(run["achieved_rate"], 1),
                                    run["requests_handled"], errors(run), h.get("full"), h.get("resumed"),
                                    c.get("user_s"), c.get("sys_s"), round(run["wall_s"], 3),
                                    _r(us_per_req(run)), _r(us_per_hs(run)), _r(hs_per_cpu_s(run)),
                                    lat["p50_us"] / 1000, lat["p99_us"] / 1000,
                                    "; ".join(f"{n['version']} {n['cipher_suite']} ×{n['handshakes']}"
                                              for n in (run.get("tls_negotiated") or [])),
                                    run.get("command", "")])


def _r(x):
    return round(x, 2) if x is not None else None


def spread(st):
    return st["max"] / st["min"] if st and st["min"] else None


def write_notes(d, targets, S, out):
    m = d["meta"]
    L = ["# Noise and limits of this run (written by scripts/summarize_tls.py; NOTES.md is the hand-written part)", ""]
    if m["mode"] == "smoke":
        L += ["**This is a smoke run** (`--smoke`: one short round, every phase): it proves the script works end "
              "to end; its figures are not a measurement.", ""]
    L += [f"- Load average at start `{m['machine']['loadavg_at_start']}`, at end `{m['machine'].get('loadavg_at_end', '?')}` "
          "(2 cores: anything above ~0 means something else shared the CPUs with the target or the loader).",
          "- CPU is read in clock ticks (10 ms) from /proc/PID/stat: a run with 0.3 s of target CPU is ±3 %.",
          "- Spread over rounds (max ÷ min) of the headline figures:"]
    for t in targets:
        s = S[t]
        parts = []
        for k, lab in (("fixed_us_per_req", "warm µs/req fixed"), ("ecdsa_full_us_per_hs", "full ECDSA µs/hs"),
                       ("rsa_full_us_per_hs", "full RSA µs/hs"), ("churn_p99_ms", "churn P99")):
            sp = spread(s.get(k))
            if sp is not None:
                parts.append(f"{lab} {sp:.2f}")
        L.append(f"  - {t}: " + (", ".join(parts) if s["rounds"] > 1 else "one round: no spread"))
    neg = {t: S[t]["negotiated"] for t in targets}
    L += ["- Negotiated TLS (all runs): " + "; ".join(f"{t}: {', '.join(v)}" for t, v in neg.items()) + ". "
          "The cipher suite is each server's choice among what loadgen's rustls client offers (AES-256-GCM first): "
          "Go (Traefik) picks AES-128-GCM and cannot be configured for TLS 1.3 suites, the proxy and the relay have no "
          "cipher option, so the suites are not pinned alike; with a 100-byte body the difference is small beside "
          "the syscalls. The key-exchange group is X25519 for all (the client's first key share; rustls' ring "
          "provider offers no ML-KEM hybrid); loadgen does not report the group.",
          "- Handshake CPU is per connection: accept, the handshake, one proxied request and the close (the request "
          "goes over the target's kept upstream connections; the relay opens one upstream connection per client, "
          "so for handshakes it is not a floor).",
          "- The resumed-handshake runs start with an empty client session cache (a new loadgen process), so their first "
          "set-ups are full: the `resumed fraction` column says how many; CPU per handshake is over all of them.",
          "- Peers run with their defaults for TLS apart from the certificate (nginx: tickets on and a 20 MB shared "
          "session cache; HAProxy: its default cache and tickets; Traefik: Go's defaults)."]
    with open(os.path.join(out, "noise.md"), "w") as f:
        f.write("\n".join(L) + "\n")


def write_commands(d, out):
    """commands.md: the exact commands of the run, one of each kind (every loadgen command is in runs.csv)."""
    m = d["meta"]
    L = ["# The exact commands of this run", "", f"Run: `{m['command_line']}`", "",
         "Certificates (openssl; the keys are not kept):", "", "```"]
    L += [c["command"] for c in m["certificates"].values()] + ["```", "", "Upstream (CPU 0, the whole run):", "",
                                                               "```", m.get("upstream_command", "?"), "```", ""]
    first = (d.get("rounds") or [{}])[0].get("results", {})
    for t, res in first.items():
        L += [f"## {t}", ""]
        for kt in ("ecdsa", "rsa"):
            r = res.get(kt)
            if not r:
                continue
            env = " ".join(f"{k}={v}" for k, v in (r.get("env") or {}).items())
            L += [f"Target ({kt}): `{(env + ' ') if env else ''}{r['command']}`", "", "```"]
            L += [f"# {ph}\n{run['command']}" for ph, run in r.items() if isinstance(run, dict) and run.get("command")]
            L += ["```", ""]
    mem = (d.get("memory") or {}).get("targets") or {}
    if mem:
        L += ["## memory (loadgen hold)", "", "```"]
        L += [f"# {t}\n{x['command']}" for t, x in mem.items() if x.get("command")] + ["```", ""]
    with open(os.path.join(out, "commands.md"), "w") as f:
        f.write("\n".join(L))


def main():
    if len(sys.argv) != 2:
        print("usage: summarize_tls.py DIR (holding tls.json)", file=sys.stderr)
        sys.exit(2)
    out = sys.argv[1]
    with open(os.path.join(out, "tls.json")) as f:
        d = json.load(f)
    if d.get("schema_version") != 1 or d.get("kind") != "compare-tls":
        print("summarize_tls: not a compare-tls record of schema_version 1", file=sys.stderr)
        sys.exit(2)
    targets, S, mem = compute(d)
    write_summary(d, targets, S, mem, out)
    write_csv(d, out)
    write_notes(d, targets, S, out)
    write_commands(d, out)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"schema_version": 1, "kind": "compare-tls-summary", "targets": S, "memory": mem}, f, indent=1)


if __name__ == "__main__":
    main()
