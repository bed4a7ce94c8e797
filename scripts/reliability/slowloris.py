#!/usr/bin/env python3
"""Slow clients against the proxy: a crowd of slowloris connections (slow_client.py) while an
open-loop load runs beside it. See scripts/reliability/README.md.

    scripts/reliability/slowloris.sh [--quick] [--rounds N] [--rate R] [--slow N] [--out DIR] ...

Per round, in one proxy process: a baseline window of open-loop load (loadgen run, fixed rate),
then the same window with the crowd attacking (the crowd stays at --slow connections during the
whole window: every connection the proxy cuts is replaced), then the wait for the crowd's last
connections to be cut. The proxy's fds, RSS and threads are sampled every 0.2 s throughout.

Criteria (exit 1 when one fails; exit 3 when none fails but one is INCONCLUSIVE; exit 2 when the
run itself could not be made):
  - P99 (corrected, the HdrHistograms of the rounds whose baseline and attack windows are both
    valid, merged) under attack <= --p99-factor x baseline P99; a window loadgen marked INVALID
    is never evidence: with valid windows in only half the rounds or fewer, INCONCLUSIVE;
  - zero errors in every load window (connect/read/write/timeout/status, dropped, never sent);
  - every slow connection cut within [T - 50 ms, T + --slack] of its first byte (T: the proxy's
    limits.header_read_timeout); none still open after T + slack + 5 s;
  - after each attack, the proxy's fd count back to its idle count before the attack (plus any
    upstream connections opened meanwhile, which may legitimately sit in the pool) within
    --fd-settle seconds.
"""

import argparse
import gzip
import json
import os
import statistics
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rel_common as C  # noqa: E402


def proxy_config(up, timeout_s, max_conn):
    return C.config_head("scripts/reliability/slowloris.py") + f"""
[limits]
header_read_timeout = "{int(round(timeout_s * 1000))}ms"
max_connections = {max_conn}

[[routes]]
path_prefix = "/"
upstream = "backend"

[upstreams.backend]
servers = ["{up}"]
"""


class Sampler(threading.Thread):
    """fds, RSS and threads of the proxy every `every` s, labelled with the current phase."""

    def __init__(self, pid, every=0.2):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.t0 = time.monotonic()
        self.phase = "start"
        self.samples = []
        self.stop_ev = threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            self.samples.append({"t": round(time.monotonic() - self.t0, 2), "phase": self.phase,
                                 "fds": C.fd_count(self.pid), "rss_kb": C.status_kb(self.pid),
                                 "threads": C.threads(self.pid)})
            self.stop_ev.wait(self.every)

    def of(self, phase):
        return [s for s in self.samples if s["phase"] == phase and s["fds"] is not None]


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def idle_fds(pid, settle=1.0):
    """The proxy's fd count once no client is connected: the smallest of a few readings."""
    time.sleep(settle)
    vals = []
    for _ in range(5):
        vals.append(C.fd_count(pid))
        time.sleep(0.1)
    return min(v for v in vals if v is not None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one short round with a smaller crowd (~30 s)")
    ap.add_argument("--rounds", type=int, help="baseline/attack pairs (default 3; quick 1)")
    ap.add_argument("--rate", type=float, default=3000.0, help="open-loop load, req/s (default 3000)")
    ap.add_argument("--connections", type=int, default=50, help="loadgen connections (default 50)")
    ap.add_argument("--window", type=float, help="s of measured load per phase (default 15; quick 6)")
    ap.add_argument("--slow", type=int, help="slowloris connections (default 1000; quick 300)")
    ap.add_argument("--trickle", type=float, default=1.0, help="s between a slow client's bytes")
    ap.add_argument("--silent", type=int, default=0,
                    help="of the crowd, this many connect and send nothing (default 0; see README.md)")
    ap.add_argument("--header-timeout", type=float, help="the proxy's header_read_timeout, s (default 5; quick 2)")
    ap.add_argument("--attacker-nice", type=int, default=19,
                    help="nice value of the slow clients (default 19: they share CPU 0 with loadgen and the upstream)")
    ap.add_argument("--slack", type=float, default=1.0, help="s after the timeout a cut may come")
    ap.add_argument("--p99-factor", type=float, default=2.0)
    ap.add_argument("--fd-settle", type=float, default=5.0, help="s for fds to return after an attack")
    ap.add_argument("--max-connections", type=int, default=5000, help="the proxy's limits.max_connections")
    ap.add_argument("--out", help="results folder (default results/reliability/<date>-<host>; quick: target/reliability/)")
    ap.add_argument("--command-line", default="scripts/reliability/slowloris.py")
    a = ap.parse_args()
    q = a.quick
    rounds = a.rounds or (1 if q else 3)
    window = a.window or (6.0 if q else 15.0)
    slow = a.slow or (300 if q else 1000)
    T = a.header_timeout or (2.0 if q else 5.0)
    out = a.out or C.default_out("slowloris", q)
    work = os.path.join(out, "slowloris-work")
    os.makedirs(work, exist_ok=True)
    C.install_signal_handlers()
    fd_limit = C.raise_fd_limit(slow + a.connections + 1024)
    if slow + a.connections + 64 > a.max_connections:
        raise C.Fail(f"--max-connections {a.max_connections} is below the crowd + load ({slow} + {a.connections})")

    rec = {"schema_version": 1, "kind": "slowloris", "command_line": a.command_line,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": C.machine(),
           "git": C.git_commit(),
           "params": {"rounds": rounds, "rate": a.rate, "connections": a.connections, "window_s": window,
                      "warmup_s": 1.0, "slow": slow, "trickle_s": a.trickle, "header_read_timeout_s": T,
                      "slack_s": a.slack, "silent": a.silent, "p99_factor": a.p99_factor, "fd_settle_s": a.fd_settle,
                      "max_connections": a.max_connections, "fd_limit": fd_limit,
                      "pinning": "proxy on CPU 1 (--workers 1); loadgen, upstream and the slow clients on CPU 0"}}
    up, up_addr = C.start_upstream(work)
    cfg = os.path.join(work, "proxy.toml")
    with open(cfg, "w") as f:
        f.write(proxy_config(up_addr, T, a.max_connections))
    px, addr, admin = C.start_proxy(work, cfg)
    url = f"http://{addr}/"
    C.log(f"upstream {up_addr}, proxy {addr} (pid {px.pid}), admin {admin}; T = {T}s, crowd {slow}, "
          f"load {a.rate:.0f} req/s on {a.connections} connections, {rounds} round(s) x {window}s")
    samp = Sampler(px.pid)
    samp.start()
    rec["fds_at_start"] = C.fd_count(px.pid)
    rec["rss_kb_at_start"] = C.status_kb(px.pid)

    samp.phase = "warmup"
    C.loadgen_run(work, "warmup", url, a.rate, 3, 0, a.connections)

    rounds_out = []
    base_reps, atk_reps = [], []
    for r in range(1, rounds + 1):
        ro = {"round": r}
        samp.phase = f"baseline{r}"
        C.log(f"round {r}: baseline ({window}s at {a.rate:.0f} req/s)")
        c0, w0 = C.cpu_s(px.pid), time.monotonic()
        rep = C.loadgen_run(work, f"r{r}-baseline", url, a.rate, window, 1, a.connections)
        ro["proxy_cpu_busy_baseline"] = round((C.cpu_s(px.pid) - c0) / (time.monotonic() - w0), 3)
        base_reps.append(rep)
        ro["baseline"] = C.trim(rep)
        samp.phase = f"idle{r}"
        fd0 = idle_fds(px.pid)
        m0 = C.metrics(admin)
        ro["fds_idle_before"] = fd0
        ro["rss_kb_before"] = C.status_kb(px.pid)

        samp.phase = f"attack{r}"
        C.log(f"round {r}: attack ({slow} slow connections, then {window}s of load beside them); idle fds {fd0}")
        sc_json = os.path.join(work, f"r{r}-slow.json")
        ramp = 500.0
        attack_s = slow / ramp + 1 + window + 1.0  # the crowd stays full until the load window ends
        sc = C.Proc(f"slow{r}", ["nice", "-n", str(a.attacker_nice), "taskset", "-c", C.LOAD_CPU, sys.executable,
                                 os.path.join(C.HERE, "slow_client.py"), "--target", addr,
                                 "--connections", str(slow), "--duration", f"{attack_s:.1f}",
                                 "--trickle", str(a.trickle), "--ramp", str(ramp), "--silent", str(a.silent),
                                 "--give-up", f"{T + a.slack + 5:.1f}", "--json", sc_json],
                    os.path.join(work, f"r{r}-slow.log"), stdout_pipe=True)
        line = sc.p.stdout.readline().decode().strip()
        if not line.startswith("open "):
            raise C.Fail(f"slow client: did not open its crowd ({line!r}): {sc.log_tail()}")
        ro["crowd_open_at_load_start"] = int(line.split()[1])
        t_load = time.monotonic() - samp.t0
        c0, w0 = C.cpu_s(px.pid), time.monotonic()
        rep = C.loadgen_run(work, f"r{r}-attack", url, a.rate, window, 1, a.connections)
        ro["proxy_cpu_busy_attack"] = round((C.cpu_s(px.pid) - c0) / (time.monotonic() - w0), 3)
        atk_reps.append(rep)
        ro["attack"] = C.trim(rep)
        samp.phase = f"tail{r}"  # load over; the crowd's last connections wait for their cut
        try:
            sc.p.wait(timeout=T + a.slack + 5 + attack_s)
        except Exception:
            raise C.Fail(f"slow client {r}: did not finish")
        t_crowd_done = time.monotonic() - samp.t0
        sc.stop()
        with open(sc_json) as f:
            crowd = json.load(f)
        with open(sc_json, "rb") as f, gzip.open(sc_json + ".gz", "wb") as g:
            g.write(f.read())  # one record per connection: kept, compressed
        os.unlink(sc_json)
        sc_json += ".gz"
        samp.phase = f"after{r}"
        m1 = C.metrics(admin)
        allowance = int(C.metric(m1, "proxy_upstream_connections_opened_total")
                        - C.metric(m0, "proxy_upstream_connections_opened_total"))
        t_back, fd_after = None, None
        deadline = time.monotonic() + a.fd_settle
        while True:
            fd_after = C.fd_count(px.pid)
            if fd_after is not None and fd_after <= fd0 + allowance:
                t_back = round(time.monotonic() - samp.t0 - t_crowd_done, 2)
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.5)
        ro["fds_after"] = C.fd_count(px.pid)
        ro["fds_after_allowance"] = allowance
        ro["fds_back_after_s"] = t_back
        ro["rss_kb_after"] = C.status_kb(px.pid)
        during = samp.of(f"attack{r}")
        ro["fds_peak_during"] = max((s["fds"] for s in during), default=None)
        ro["rss_kb_peak_during"] = max((s["rss_kb"] for s in during if s["rss_kb"]), default=None)
        ro["proxy_408s"] = int(C.metric(m1, "proxy_errors_total", kind="request_timeout")
                               - C.metric(m0, "proxy_errors_total", kind="request_timeout"))
        ro["proxy_connections_accepted"] = int(C.metric(m1, "proxy_client_connections_total")
                                               - C.metric(m0, "proxy_client_connections_total"))
        ro["proxy_client_connections_after"] = int(C.metric(m1, "proxy_client_connections"))
        recs = crowd["records"]
        cut = [x for x in recs if x["end"] != "not_cut"]
        cut408 = [x for x in cut if x["status_line"].startswith("HTTP/1.1 408")]
        times = [x["cut_after_s"] for x in cut if x["cut_after_s"] is not None]
        early = [t for t in times if t < T - 0.05]
        late = [t for t in times if t > T + a.slack]
        ro["crowd"] = {
            "connections": len(recs), "peak_open": crowd["peak_open"], "connect_errors": crowd["connect_errors"],
            "cut": len(cut), "cut_with_408": len(cut408), "cut_other": sorted({x["end"] + " " + x["status_line"]
                                                                                for x in cut if x not in cut408}),
            "not_cut": len(recs) - len(cut), "early": len(early), "late": len(late),
            "cut_after_s": {"min": min(times, default=None), "p50": pct(times, 0.5), "p99": pct(times, 0.99),
                            "max": max(times, default=None)},
            "silent": silent_stats(recs, T, a.slack),
            "bytes_sent_median": statistics.median([x["bytes_sent"] for x in recs]) if recs else None,
            "load_started_at_s": round(t_load, 2), "crowd_done_at_s": round(t_crowd_done, 2),
        }
        ro["crowd_records_file"] = os.path.relpath(sc_json, out)
        rounds_out.append(ro)
        C.log(f"round {r}: P99 baseline {C.ms(rep_p99(ro['baseline']))}, attack {C.ms(rep_p99(ro['attack']))}; "
              f"crowd {len(recs)} connections, {len(cut408)} cut with 408 after "
              f"{ro['crowd']['cut_after_s']['min']}..{ro['crowd']['cut_after_s']['max']} s, "
              f"{ro['crowd']['not_cut']} not cut; fds idle {fd0}, peak {ro['fds_peak_during']}, "
              f"after {fd_after} (back in {t_back} s)")
        if not px.alive():
            raise C.Fail(f"proxy died (code {px.p.returncode}): {px.log_tail()}")

    samp.stop_ev.set()
    samp.join()
    rec["rounds"] = rounds_out
    rec["fds_at_end"] = C.fd_count(px.pid)
    rec["rss_kb_at_end"] = C.status_kb(px.pid)
    rec["samples"] = samp.samples
    px.stop()
    up.stop()

    # ---- verdict
    p99 = p99_verdict(rounds_out, base_reps, atk_reps, a.p99_factor)
    p99_b, p99_a = p99["baseline_us"], p99["attack_us"]
    valid_b = [rep for ro, rep in zip(rounds_out, base_reps) if round_valid(ro)]
    valid_a = [rep for ro, rep in zip(rounds_out, atk_reps) if round_valid(ro)]
    p50_b = C.merged_p(valid_b, 0.5) if valid_b else None
    p50_a = C.merged_p(valid_a, 0.5) if valid_a else None
    errs = {f"r{ro['round']}-{k}": C.report_errors(ro[k]) for ro in rounds_out for k in ("baseline", "attack")}
    checks = [{"check": "p99", "status": p99["status"], "pass": p99["status"] == "PASS", "detail": p99["detail"]}]

    def check(name, ok, detail):
        checks.append({"check": name, "status": "PASS" if ok else "FAIL", "pass": bool(ok), "detail": detail})

    check("errors", sum(errs.values()) == 0, f"{sum(errs.values())} errors/dropped/unsent over all load windows")
    nc = sum(ro["crowd"]["not_cut"] for ro in rounds_out)
    el = sum(ro["crowd"]["early"] + ro["crowd"]["late"] for ro in rounds_out)
    total = sum(ro["crowd"]["connections"] for ro in rounds_out)
    check("cut", nc == 0 and el == 0 and total > 0,
          f"{total} slow connections; {nc} not cut; {el} cut outside [{T - 0.05:.2f}, {T + a.slack:.2f}] s")
    fd_bad = [ro["round"] for ro in rounds_out if ro["fds_back_after_s"] is None]
    check("fds", not fd_bad, "fds back to the idle count within "
          f"{a.fd_settle:g} s after every attack" if not fd_bad else f"not back in round(s) {fd_bad}")
    verdict = overall([c["status"] for c in checks])
    rec["summary"] = {"p99_baseline_us": p99_b, "p99_attack_us": p99_a, "p50_baseline_us": p50_b,
                      "p50_attack_us": p50_a, "p99_rounds_used": p99["rounds_used"], "errors": errs,
                      "checks": checks, "verdict": verdict, "pass": verdict == "PASS"}
    rec["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(os.path.join(out, "slowloris.json"), "w") as f:
        json.dump(rec, f, indent=1)
    md = render(rec)
    with open(os.path.join(out, "slowloris.md"), "w") as f:
        f.write(md)
    print(md)
    C.log(f"wrote {out}/slowloris.json and slowloris.md: {verdict}")
    return {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[verdict]


def round_valid(ro):
    """A round's load windows are evidence only when loadgen kept its schedule in both."""
    return bool(ro["baseline"].get("valid")) and bool(ro["attack"].get("valid"))


def p99_verdict(rounds_out, base_reps, atk_reps, factor):
    """The P99 criterion from the rounds whose baseline and attack windows are both valid.

    A window loadgen marked INVALID (the generator fell behind its schedule) is never evidence,
    for or against: with fewer than a majority of valid rounds the criterion is INCONCLUSIVE.
    """
    used = [i for i, ro in enumerate(rounds_out) if round_valid(ro)]
    res = {"rounds_used": [rounds_out[i]["round"] for i in used], "baseline_us": None, "attack_us": None}
    n = len(rounds_out)
    if n == 0 or len(used) * 2 <= n:
        res["status"] = "INCONCLUSIVE"
        res["detail"] = (f"only {len(used)} of {n} rounds had both windows valid (loadgen fell behind its schedule): "
                         "an invalid window is no evidence; run on a quieter machine or with more rounds")
        return res
    b = C.merged_p([base_reps[i] for i in used], 0.99)
    at = C.merged_p([atk_reps[i] for i in used], 0.99)
    res["baseline_us"], res["attack_us"] = b, at
    if b is None or at is None or b <= 0:
        res["status"] = "INCONCLUSIVE"
        res["detail"] = "no latency data in the valid rounds"
        return res
    res["status"] = "PASS" if at <= factor * b else "FAIL"
    res["detail"] = (f"attack P99 {C.ms(at)} vs {factor:g} x baseline {C.ms(b)} (ratio {at / b:.2f}), "
                     f"from the {len(used)} of {n} rounds with both windows valid")
    return res


def overall(statuses):
    """FAIL if any criterion failed, else INCONCLUSIVE if any was, else PASS."""
    if "FAIL" in statuses:
        return "FAIL"
    if "INCONCLUSIVE" in statuses:
        return "INCONCLUSIVE"
    return "PASS"


def silent_stats(recs, T, slack):
    s = [x for x in recs if x["silent"]]
    if not s:
        return None
    cut = [x["cut_after_s"] for x in s if x["end"] != "not_cut"]
    return {"connections": len(s), "cut_in_time": sum(1 for t in cut if T - 0.05 <= t <= T + slack),
            "not_cut": len(s) - len(cut), "cut_after_max_s": max(cut, default=None)}


def rep_p99(rep):
    return rep["latency"]["corrected"]["p99_us"]


def render(rec):
    p = rec["params"]
    S = rec["summary"]
    L = [f"# Slowloris beside open-loop load ({rec['started']})", "",
         f"`{rec['command_line']}` at commit `{rec['git']['commit'][:10]}` on {rec['machine']['host']} "
         f"({rec['machine']['cpus']} CPUs, {rec['machine']['cpu_model']}; load average at start "
         f"{rec['machine']['loadavg_at_start'].split()[0]}).", "",
         f"Load: {p['rate']:.0f} req/s open loop on {p['connections']} connections, {p['window_s']:g} s per window "
         f"(+{p['warmup_s']:g} s warm-up). Crowd: {p['slow']} connections each trickling one header byte every "
         f"{p['trickle_s']:g} s, replaced as soon as cut. Proxy: `--workers 1`, header_read_timeout "
         f"{p['header_read_timeout_s']:g} s, max_connections {p['max_connections']}. {p['pinning']}.", "",
         "| round | P99 baseline | P99 under attack | P50 baseline / attack | send lag P99 (attack) | errors | "
         "valid (base/attack) | proxy CPU busy (base/attack) |",
         "|---|---|---|---|---|---|---|---|"]
    for ro in rec["rounds"]:
        b, at = ro["baseline"], ro["attack"]
        L.append(f"| {ro['round']} | {C.ms(rep_p99(b))} | {C.ms(rep_p99(at))} | "
                 f"{C.ms(b['latency']['corrected']['p50_us'])} / {C.ms(at['latency']['corrected']['p50_us'])} | "
                 f"{C.ms(at['latency']['send_lag']['p99_us'])} | {C.report_errors(b)} / {C.report_errors(at)} | "
                 f"{b['valid']} / {at['valid']} | {ro['proxy_cpu_busy_baseline'] * 100:.0f} % / "
                 f"{ro['proxy_cpu_busy_attack'] * 100:.0f} % |")
    L.append(f"| **merged** | **{C.ms(S['p99_baseline_us'])}** | **{C.ms(S['p99_attack_us'])}** | "
             f"{C.ms(S['p50_baseline_us'])} / {C.ms(S['p50_attack_us'])} | | | | |")
    L += ["", "| round | slow connections (peak open) | cut with 408 | not cut | cut after (min / p50 / p99 / max) | "
          "proxy 408s | fds idle → peak → after (back in) | RSS before → peak → after |", "|---|---|---|---|---|---|---|---|"]
    for ro in rec["rounds"]:
        c = ro["crowd"]
        ca = c["cut_after_s"]
        f3 = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        L.append(f"| {ro['round']} | {c['connections']} ({c['peak_open']}) | {c['cut_with_408']} | {c['not_cut']} | "
                 f"{f3(ca['min'])} / {f3(ca['p50'])} / {f3(ca['p99'])} / {f3(ca['max'])} s | {ro['proxy_408s']} | "
                 f"{ro['fds_idle_before']} → {ro['fds_peak_during']} → {ro['fds_after']} ({ro['fds_back_after_s']} s) | "
                 f"{kb(ro['rss_kb_before'])} → {kb(ro['rss_kb_peak_during'])} → {kb(ro['rss_kb_after'])} |")
    for ro in rec["rounds"]:
        si = ro["crowd"].get("silent")
        if si:
            L.append(f"\nRound {ro['round']}: of the crowd, {si['connections']} connections sent no byte: "
                     f"{si['cut_in_time']} cut within the header timeout + slack, {si['not_cut']} still open "
                     f"when the client gave up (T + slack + 5 s); latest cut {si['cut_after_max_s']} s.")
    L += ["", "| criterion | result | detail |", "|---|---|---|"]
    for c in S["checks"]:
        st = c.get("status", "PASS" if c["pass"] else "FAIL")
        L.append(f"| {c['check']} | {st if st == 'PASS' else '**' + st + '**'} | {c['detail']} |")
    L += ["", f"Overall: **{S.get('verdict', 'PASS' if S['pass'] else 'FAIL')}**. fds at start {rec['fds_at_start']}, at end "
          f"{rec['fds_at_end']}; RSS at start {kb(rec['rss_kb_at_start'])}, at end {kb(rec['rss_kb_at_end'])}.", ""]
    return "\n".join(L)


def kb(v):
    return "—" if v is None else f"{v / 1024:.1f} MiB"


if __name__ == "__main__":
    C.run_main(main, "slowloris")
