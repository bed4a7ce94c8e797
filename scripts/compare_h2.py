#!/usr/bin/env python3
"""The HTTP/2 comparison (issue 17): this project's proxy beside Traefik, nginx, HAProxy and the
HTTP/2 relay floor (`loadgen relay --h2`; `--tls --upstream-http1` in the TLS cases), measured in
the same run. Called by scripts/compare-h2.sh; see scripts/README.md. Targets and configs:
comparison/h2.py.

Method (that of compare.py and compare_tls.py, whose modules this reuses): the target on CPU 1,
loadgen and the origins (`loadgen upstream`, 1 KiB body; the h2c case's with `--trailers`) on
CPU 0 (taskset); interleaved rounds (the target order rotated by one each round); each target
started fresh once per round and family; its CPU is utime+stime of its processes from /proc/PID/stat read around every loadgen
run (no warmup inside a run, so every request is in the denominator), divided by the responses;
ratios taken within a round, then median [min–max] over rounds.

Cases (each: a closed-loop run, every stream slot busy: CPU per request at max; then an
open-loop run at the fixed rate: CPU per request and corrected P99):
  tls-s1    TLS + HTTP/2 (ALPN h2), GET, 1 stream per connection on 8 connections, HTTP/1.1 origin
  tls-s10   the same, 10 streams per connection on 2 connections
  tls-s100  the same, 100 streams on 1 connection (--skip s100 leaves it out)
  h2c-grpc  h2c prior knowledge, POST of 64 bytes with content-type application/grpc, 10 streams
            on 2 connections, h2c to the origin (gRPC-style; the origin, `upstream --trailers`,
            ends every response with trailers grpc-status: 0, grpc-message: ok)
RSS (VmRSS and VmHWM of the target's processes) is read after each family's load, per round.

Fixed rate: half Traefik's closed-loop max on tls-s1 (calibrated at the start), or --rate.

Writes OUT/h2.json (every run: loadgen's report less its per-second series, the CPU readings, the
exact command), OUT/configs/{tls,h2c}/, OUT/certs/commands.txt, OUT/checks.txt (each target's
curl start-up check: HTTP version, status, body size; in the h2c case also nghttp's trailer
check), a NOTES.md stub; then `compare_h2.py --summarize OUT` writes summary.md, summary.json,
runs.csv and commands.md (it can be re-run on a committed h2.json).
"""

import argparse
import atexit
import csv
import datetime
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from comparison.stats import stat  # noqa: E402

SCHEMA_VERSION = 1  # of h2.json
BODY_BYTES = 1024   # the origin's response body
POST_BYTES = 64     # the gRPC-style request body
ORDER = ["relay", "native", "traefik", "nginx", "haproxy"]
LABEL = {"relay": "HTTP/2 relay floor (`loadgen relay --h2`)", "native": "this proxy (native)",
         "traefik": "Traefik", "nginx": "nginx", "haproxy": "HAProxy"}
# name -> family, streams per connection, connections, method
CASES = {
    "tls-s1": dict(family="tls", streams=1, connections=8, method="GET"),
    "tls-s10": dict(family="tls", streams=10, connections=2, method="GET"),
    "tls-s100": dict(family="tls", streams=100, connections=1, method="GET"),
    "h2c-grpc": dict(family="h2c", streams=10, connections=2, method="POST"),
}
CASE_TITLE = {
    "tls-s1": "TLS + HTTP/2, 1 stream per connection (8 connections), GET, HTTP/1.1 origin",
    "tls-s10": "TLS + HTTP/2, 10 streams per connection (2 connections), GET, HTTP/1.1 origin",
    "tls-s100": "TLS + HTTP/2, 100 streams on 1 connection, GET, HTTP/1.1 origin",
    "h2c-grpc": "h2c → h2c, gRPC-style: POST 64 bytes (content-type application/grpc), 10 streams × 2 connections",
}
MODES = {
    "quick": dict(rounds=1, calib_runs=1, calib_s=1.0, prewarm_s=0.3, closed_s=1.0, fixed_s=1.5),
    "full": dict(rounds=5, calib_runs=3, calib_s=2.0, prewarm_s=0.5, closed_s=3.0, fixed_s=4.0),
}
GOAL = {"traefik_x": 3.0, "nginx_div": 1.0, "haproxy_div": 1.0}
FLOOR_SPREAD_MAX = 0.25   # (max-min)/median of the floor's CPU per request above this: INCONCLUSIVE
MIN_ROUNDS = 3            # fewer rounds: INCONCLUSIVE (no spread to judge)
# what the origin check must see from a target in each family (the probe's words, comparison/h2.py)
ORIGIN_EXPECTED = {"tls": "http/1.1", "h2c": "h2c (HTTP/2 preface)"}


# ---------------------------------------------------------------- measuring

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", "--smoke", dest="quick", action="store_true",
                    help="one short round (~1.5 min): checks the script, measures nothing worth quoting")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (full: 5, quick: 1)")
    ap.add_argument("--out", help="results folder (default results/compare-h2/<date>-<host>, "
                                  "quick: results/compare-h2/smoke-<date>-<host>)")
    ap.add_argument("--targets", default=",".join(ORDER), help="subset of " + ",".join(ORDER))
    ap.add_argument("--rate", type=float, help="the fixed rate (req/s); skips the calibration")
    ap.add_argument("--skip", default="", help="comma-separated: s100, h2c (the gRPC-style case)")
    ap.add_argument("--summarize", metavar="DIR", help="only (re)write the summary of the run in DIR")
    ap.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in ORDER:
            ap.error(f"unknown target {t!r} (known: {', '.join(ORDER)})")
    return args, targets


def measure(args, targets):
    from comparison.ctx import Ctx
    from comparison.h2 import H2Target, trailers_check
    from comparison.loadruns import loadgen_run
    from comparison.record import git_info, machine_info, tool_versions, utc_stamp
    from comparison.spec import DESC, REQ_TIMEOUT
    from comparison.targets import wait_ready
    from comparison.tls import make_certs
    from lib import procfs
    from lib.procs import Fail, Proc, free_port, install_signal_handlers, kill_all, log

    bins = {"proxy": os.environ["PROXY_BIN"], "loadgen": os.environ["LOADGEN_BIN"],
            "traefik": os.environ["TRAEFIK_BIN"],
            "nginx": os.environ.get("NGINX_BIN", shutil.which("nginx") or "/usr/sbin/nginx"),
            "haproxy": os.environ.get("HAPROXY_BIN", shutil.which("haproxy") or "/usr/sbin/haproxy")}
    mode = "quick" if args.quick else "full"
    p = dict(MODES[mode])
    if args.rounds:
        p["rounds"] = args.rounds
    skip = set(x for x in args.skip.split(",") if x)
    cases = [c for c in CASES if not (c == "tls-s100" and "s100" in skip)
             and not (CASES[c]["family"] == "h2c" and "h2c" in skip)]
    families = [f for f in ("tls", "h2c") if any(CASES[c]["family"] == f for c in cases)]
    now = datetime.datetime.now(datetime.timezone.utc)
    host = socket.gethostname().split(".")[0]
    out = os.path.abspath(args.out) if args.out else os.path.join(
        ROOT, "results", "compare-h2", (f"smoke-{now:%Y-%m-%d}-{host}" if mode == "quick" else f"{now:%Y-%m-%d}-{host}"))
    if os.path.exists(os.path.join(out, "h2.json")):
        raise Fail(f"{out} already holds a run: pass --out DIR for a new one")
    os.makedirs(out, exist_ok=True)
    ctx = Ctx(out, mode, p, args, bins)
    atexit.register(kill_all)
    install_signal_handlers((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    t_start = time.monotonic()

    certs = make_certs(os.path.join(ctx.work, "certs"))
    os.makedirs(os.path.join(out, "certs"), exist_ok=True)
    with open(os.path.join(out, "certs", "commands.txt"), "w") as f:
        f.write("# the certificate of this run (ECDSA P-256; the RSA pair is made but unused; keys not kept)\n")
        f.write(certs["ecdsa"]["command"] + "\n")
    ca = certs["ecdsa"]["cert"]

    # the origins, on the loader CPU, 1 KiB body, HTTP/1.1 and h2c on one port: the TLS cases'
    # (HTTP/1.1 is what every target speaks to it), and the h2c case's with --trailers (every
    # response ends with grpc-status: 0, grpc-message: ok: trailers each target must relay)
    origins, up_cmds, ups = {}, {}, []
    for fam in families:
        port = free_port()
        origins[fam] = f"127.0.0.1:{port}"
        argv = ["taskset", "-c", DESC["loader_cpu"], bins["loadgen"], "upstream", "--listen", origins[fam],
                "--body-bytes", str(BODY_BYTES), "--threads", "1", "--cpus", DESC["loader_cpu"]]
        if fam == "h2c":
            argv.append("--trailers")
        up = Proc(f"upstream-{fam}", argv, os.path.join(ctx.logdir, f"upstream-{fam}.log"))
        wait_ready(up, origins[fam], f"upstream (loadgen upstream) of the {fam} cases", timeout=20,
                   ready=lambda a: __import__("comparison.h2", fromlist=["port_open"]).port_open(a))
        up_cmds[fam] = shlex.join(argv)
        ups.append(up)
    ctx.up_addr = origins[families[0]]

    versions = tool_versions(bins)
    record = {
        "schema_version": SCHEMA_VERSION, "kind": "compare-h2",
        "meta": {"command_line": args.command_line or shlex.join(sys.argv), "start_time": utc_stamp(now),
                 "mode": mode, "params": p, "targets": targets, "cases": {c: CASES[c] for c in cases},
                 "skip": sorted(skip), "body_bytes": BODY_BYTES, "post_bytes": POST_BYTES,
                 "request_timeout": REQ_TIMEOUT, "description": DESC, "upstream_command": up_cmds[families[0]],
                 "upstream_commands": up_cmds, "origin_trailers": {f: f == "h2c" for f in families},
                 "floor": {"tls": "loadgen relay --h2 --tls --upstream-http1", "h2c": "loadgen relay --h2"},
                 "certificate": certs["ecdsa"]["command"],
                 "pinning": {"target": f"CPU {DESC['proxy_cpu']} (taskset)",
                             "loadgen_and_upstream": f"CPU {DESC['loader_cpu']} (taskset + --cpus)"},
                 "machine": machine_info(), "git": git_info(), "versions": versions, "binaries": dict(bins)},
    }

    def write_json():
        tmp = os.path.join(out, "h2.json.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f, separators=(",", ":"))
        os.replace(tmp, os.path.join(out, "h2.json"))

    def case_args(c):
        cs = CASES[c]
        a = ["--http2", "--streams", str(cs["streams"])]
        if cs["method"] == "POST":
            a += ["--method", "POST", "--body-bytes", str(POST_BYTES), "-H", "content-type: application/grpc"]
        return a

    def run(t, c, what, **kw):
        return loadgen_run(ctx, t, f"{c} {what}", connections=CASES[c]["connections"],
                           extra_args=case_args(c), keep_command=True,
                           extra_keys=("handshakes", "tls_negotiated"), **kw)

    checks = []
    record["trailers_relayed"] = {}

    def start(name, family):
        ctx.up_addr = origins[family]
        t = H2Target(name, ctx, certs, family)
        method = "POST" if family == "h2c" else "GET"
        line = t.check(ca, BODY_BYTES, method)
        checks.append(f"{name} {family}: {line}")
        if family == "h2c":
            relayed, tline = trailers_check(t.url, POST_BYTES)
            checks.append(f"{name} {family} trailers: {tline}")
            record["trailers_relayed"].setdefault(name, []).append(relayed)
            if relayed is False:
                log(f"trailers: {name} did not relay the origin's trailers: {tline}")
        return t

    # what each target speaks to its origin (a probe in the origin's place, one request)
    from comparison.h2 import origin_protocol
    record["origin_protocol"] = {}
    for name in targets:
        for fam in families:
            seen = origin_protocol(name, fam, ctx, certs)
            record["origin_protocol"][f"{name} {fam}"] = seen
            log(f"origin check: {name} ({fam}) sends its origin {', '.join(seen) or 'nothing'}")
            if name == "relay" and seen != [ORIGIN_EXPECTED[fam]]:
                raise Fail(f"the floor ({fam}) sent its origin {seen or 'nothing'}, not {ORIGIN_EXPECTED[fam]}: "
                           "is the loadgen binary older than --upstream-http1?")

    # calibration: Traefik's closed-loop max on tls-s1
    if args.rate:
        rate = args.rate
        record["calibration"] = {"source": "--rate", "fixed_rate": rate}
    else:
        if "traefik" not in targets or "tls-s1" not in cases:
            raise Fail("the fixed rate is half Traefik's closed-loop max on tls-s1: keep traefik and tls-s1, or pass --rate")
        log("calibrate: Traefik's closed-loop max on tls-s1 sets the fixed rate (half of it)")
        t = start("traefik", "tls")
        try:
            run(t, "tls-s1", "calibration warm-up", closed=True, duration=p["prewarm_s"])
            cr = [run(t, "tls-s1", "calibration", closed=True, duration=p["calib_s"]) for _ in range(p["calib_runs"])]
        finally:
            t.stop()
        rates = [r["achieved_rate"] for r in cr]
        base = sorted(rates)[len(rates) // 2]
        rate = round(base * 0.5, -1)
        record["calibration"] = {"source": "traefik closed-loop on tls-s1, median, halved", "runs_rps": rates,
                                 "rate_base": base, "fixed_rate": rate, "commands": [r["command"] for r in cr]}
        log(f"calibrate: Traefik {', '.join(f'{x:.0f}' for x in rates)} req/s -> fixed rate {rate:.0f}")
    record["fixed_rate"] = rate

    log(f"compare-h2: {mode} mode, {p['rounds']} round(s), targets {', '.join(targets)}, cases {', '.join(cases)}; "
        f"fixed rate {rate:.0f} req/s; out {out}")
    rounds = []
    for i in range(p["rounds"]):
        order = targets[i % len(targets):] + targets[:i % len(targets)]
        log(f"round {i + 1}/{p['rounds']}: {' '.join(order)}")
        rr = {"round": i + 1, "order": order, "started": time.time(), "loadavg": procfs.loadavg_text(), "results": {}}
        for name in order:
            res = {}
            for fam in families:
                for up in ups:
                    if not up.alive():
                        raise Fail(f"upstream died: {up.log_tail()}")
                t = start(name, fam)
                res[f"start_{fam}"] = {"command": shlex.join(t.argv), "env": t.env, "pids": t.pids}
                try:
                    fc = [c for c in cases if CASES[c]["family"] == fam]
                    run(t, fc[0], "pre-warm", closed=True, duration=p["prewarm_s"])
                    for c in fc:
                        e = {"closed": run(t, c, "closed max", closed=True, duration=p["closed_s"]),
                             "fixed": run(t, c, "fixed rate", rate=rate, duration=p["fixed_s"])}
                        res[c] = e
                        log(f"  {name:8s} {c:9s} max {e['closed']['achieved_rate']:7.0f}/s "
                            f"{e['closed'].get('cpu', {}).get('us_per_req', 0):6.1f} us/req  fixed "
                            f"{e['fixed'].get('cpu', {}).get('us_per_req', 0):6.1f} us/req p99 "
                            f"{e['fixed']['latency']['corrected']['p99_us'] / 1000:6.2f} ms  errors "
                            f"{sum((e['closed'].get('errors') or {}).values()) + sum((e['fixed'].get('errors') or {}).values())}")
                    hwm, rss = procfs.mem_kb(t.pids)
                    res[f"mem_{fam}"] = {"vm_hwm_kb": hwm, "vm_rss_kb": rss}
                finally:
                    t.stop()
            rr["results"][name] = res
        rounds.append(rr)
        record["rounds"] = rounds
        write_json()
    for up in ups:
        up.stop()
    with open(os.path.join(out, "checks.txt"), "w") as f:
        f.write("# each target's start-up check (curl over HTTP/2: HTTP version, status, body bytes; "
                "h2c: nghttp, the trailers that came back)\n")
        f.write("\n".join(checks) + "\n")
    record["meta"]["end_time"] = utc_stamp()
    record["meta"]["elapsed_s"] = time.monotonic() - t_start
    record["meta"]["machine"]["loadavg_at_end"] = procfs.loadavg_text()
    write_json()
    notes = os.path.join(out, "NOTES.md")
    if not os.path.exists(notes):
        with open(notes, "w") as f:
            f.write(f"# NOTES ({mode} run)\n\nHand-written: what else ran on the machine, what to trust.\n")
    log(f"done in {record['meta']['elapsed_s']:.0f}s; summarizing")
    return out


# ---------------------------------------------------------------- summarizing

def cpu_us(r):
    c = r.get("cpu")
    n = r.get("requests_handled")
    return (c["user_s"] + c["sys_s"]) / n * 1e6 if c and n else None


def errs(r):
    return sum((r.get("errors") or {}).values())


def div(a, b):
    return a / b if a is not None and b else None


def fmt(st, d=1, suffix=""):
    if st is None:
        return "—"
    f = lambda x: f"{x:,.{d}f}{suffix}"  # noqa: E731
    if st["n"] == 1 or st["min"] == st["max"]:
        return f(st["median"])
    return f"{f(st['median'])} [{f(st['min'])}–{f(st['max'])}]"


def compute(d):
    targets = [t for t in ORDER if t in d["meta"]["targets"]]
    cases = list(d["meta"]["cases"])
    rounds = d.get("rounds", [])
    S = {}
    for c in cases:
        S[c] = {}
        for t in targets:
            per = [r["results"][t][c] for r in rounds if t in r["results"] and c in r["results"][t]]
            s = {"rounds": len(per)}
            for ph in ("closed", "fixed"):
                s[f"{ph}_rps"] = stat([x[ph]["achieved_rate"] for x in per])
                s[f"{ph}_us"] = stat([cpu_us(x[ph]) for x in per])
                s[f"{ph}_us_user"] = stat([x[ph]["cpu"]["us_per_req_user"] for x in per if x[ph].get("cpu")])
                s[f"{ph}_us_sys"] = stat([x[ph]["cpu"]["us_per_req_sys"] for x in per if x[ph].get("cpu")])
                s[f"{ph}_util"] = stat([x[ph].get("cpu", {}).get("util") for x in per])
                s[f"{ph}_p99_ms"] = stat([x[ph]["latency"]["corrected"]["p99_us"] / 1000 for x in per])
                s[f"{ph}_p50_ms"] = stat([x[ph]["latency"]["corrected"]["p50_us"] / 1000 for x in per])
                s[f"{ph}_errors"] = sum(errs(x[ph]) for x in per)
                s[f"{ph}_invalid"] = sum(1 for x in per if not x[ph].get("valid", True))
                for ref, key in (("relay", "floor_x"), ("nginx", "nginx_div"), ("haproxy", "haproxy_div")):
                    s[f"{ph}_{key}"] = stat([div(cpu_us(r["results"][t][c][ph]), cpu_us(r["results"][ref][c][ph]))
                                             for r in rounds if t in r["results"] and ref in r["results"]])
                s[f"{ph}_traefik_x"] = stat([div(cpu_us(r["results"]["traefik"][c][ph]), cpu_us(r["results"][t][c][ph]))
                                             for r in rounds if t in r["results"] and "traefik" in r["results"]])
            S[c][t] = s
    M = {}
    for t in targets:
        for fam in ("tls", "h2c"):
            per = [r["results"][t].get(f"mem_{fam}") for r in rounds if t in r["results"]]
            per = [x for x in per if x]
            if per:
                M.setdefault(t, {})[fam] = {"rss_mib": stat([x["vm_rss_kb"] / 1024 for x in per]),
                                            "hwm_mib": stat([x["vm_hwm_kb"] / 1024 for x in per])}
    return targets, cases, S, M


def verdict(S, c, nrounds, ph):
    """PASS / FAIL / INCONCLUSIVE for the goal (native: ≥ 3× less CPU per request than Traefik,
    ≤ nginx, ≤ HAProxy) at phase ph, with the reason."""
    s = S[c].get("native")
    if s is None or not all(k in S[c] for k in ("traefik", "nginx", "haproxy")):
        return "NOT JUDGED", "native, traefik, nginx and haproxy must all be measured"
    if nrounds < MIN_ROUNDS:
        return "INCONCLUSIVE", f"{nrounds} round(s): fewer than {MIN_ROUNDS}, no spread to judge"
    fl = S[c].get("relay", {}).get(f"{ph}_us")
    if fl is None:
        return "INCONCLUSIVE", "the floor was not measured in this run"
    spread = (fl["max"] - fl["min"]) / fl["median"]
    if spread > FLOOR_SPREAD_MAX:
        return "INCONCLUSIVE", f"the floor's CPU per request moved {spread:.0%} over rounds (limit {FLOOR_SPREAD_MAX:.0%})"
    tx, nd, hd = s[f"{ph}_traefik_x"]["median"], s[f"{ph}_nginx_div"]["median"], s[f"{ph}_haproxy_div"]["median"]
    miss = []
    if tx < GOAL["traefik_x"]:
        miss.append(f"{tx:.2f}× less than Traefik (goal ≥ 3)")
    if nd > GOAL["nginx_div"]:
        miss.append(f"{nd:.2f}× nginx (goal ≤ 1)")
    if hd > GOAL["haproxy_div"]:
        miss.append(f"{hd:.2f}× HAProxy (goal ≤ 1)")
    why = f"{tx:.2f}× less than Traefik, {nd:.2f}× nginx, {hd:.2f}× HAProxy (medians of within-round ratios); floor spread {spread:.0%}"
    return ("FAIL", "; ".join(miss)) if miss else ("PASS", why)


def table(head, rows):
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def summarize(out):
    with open(os.path.join(out, "h2.json")) as f:
        d = json.load(f)
    targets, cases, S, M = compute(d)
    m = d["meta"]
    # runs from before `relay --upstream-http1` and `upstream --trailers` render as they were
    new_floor = "floor" in m
    nr = len(d.get("rounds", []))
    rate = d.get("fixed_rate")
    cal = d.get("calibration", {})
    L = [f"# HTTP/2 comparison: {m['start_time']} on {m['machine']['host']}", ""]
    if m["mode"] == "quick":
        L += ["**SMOKE RUN (`--quick`): one short round on a machine that may be busy. It checks that the script "
              "works; its figures are not the comparison and must not be quoted as such.**", ""]
    L += [f"`{m['command_line']}` — {m['mode']} mode, {nr} round(s), {m.get('elapsed_s', 0):.0f} s; load average at "
          f"start `{m['machine']['loadavg_at_start']}`, at end `{m['machine'].get('loadavg_at_end', '?')}`. Commit "
          f"`{m['git']['commit'][:12]}`. Target on CPU {m['description']['proxy_cpu']}, loadgen and the origin{'s' if new_floor else ''} on CPU "
          f"{m['description']['loader_cpu']} (taskset); one worker each; "
          + (f"origins `loadgen upstream` with a {m['body_bytes']}-byte body (HTTP/1.1 and h2c on one port), the h2c "
             "case's with `--trailers` (every response ends with `grpc-status: 0`, `grpc-message: ok`); "
             if new_floor else
             f"origin `loadgen upstream` with a {m['body_bytes']}-byte body (HTTP/1.1 and h2c on one port); ")
          + "TLS: the same ECDSA P-256 certificate for "
          f"every target. Method: [scripts/README.md](../../../scripts/README.md#scriptscompare-h2sh-the-http2-comparison); "
          f"raw data: [h2.json](h2.json) (every run, its command and CPU readings), [runs.csv](runs.csv), "
          f"[commands.md](commands.md), [checks.txt](checks.txt), [configs/](configs/); notes: [NOTES.md](NOTES.md).", "",
          f"Fixed rate: {rate:,.0f} req/s, open loop ({cal.get('source', '?')}"
          + (f"; Traefik's max {', '.join(f'{x:,.0f}' for x in cal['runs_rps'])} req/s" if cal.get("runs_rps") else "")
          + "). Values: median [min–max] over rounds; ratios taken within a round, then the median. "
          "CPU µs/request = (utime+stime of the target's processes over the loadgen run, /proc/PID/stat) ÷ responses. "
          "P99: corrected latency (from the intended send time). "
          "× floor: ÷ the relay's CPU per request; × less than Traefik: Traefik's ÷ the target's; ÷ nginx, "
          "÷ HAProxy: the target's ÷ theirs (≤ 1 = at or below).", "",
          *(["The floor is an `h2` crate server, `loadgen relay --h2`. In the TLS cases (`--tls --upstream-http1`) it "
             "sends each stream as **one HTTP/1.1 request on a keep-alive connection from a pool per client "
             "connection** (a new connection when all are busy), the same origin leg as every other target's; in "
             "the h2c case it sends each stream over one h2c connection to the origin per client connection, "
             "trailers included. No routing, no header rules: the same work, done with the least code.", ""]
            if new_floor else
            ["The floor is `loadgen relay --h2` (`--tls` in the TLS cases): an `h2` crate server that sends each "
             "stream over **one h2c connection to the origin per client connection**. It cannot relay to an HTTP/1.1 "
             "origin, so in the TLS cases its origin leg is h2c while every other target's is HTTP/1.1: there it is a "
             "floor for the client side (TLS + HTTP/2 framing), not the same work.", ""]),
          f"Goal (issue 17): this proxy ≥ {GOAL['traefik_x']:.0f}× less CPU per request than Traefik, at or below nginx and "
          f"HAProxy. Verdict rule: INCONCLUSIVE with fewer than {MIN_ROUNDS} rounds or when the floor's CPU per request "
          f"moved more than {FLOOR_SPREAD_MAX:.0%} ((max−min)/median) over the rounds; else PASS or FAIL on the medians "
          "of the within-round ratios.", ""]
    for i, c in enumerate(cases, 1):
        L += [f"## {i}. {c}: {CASE_TITLE[c]}", ""]
        for ph, title in (("fixed", f"open loop at {rate:,.0f} req/s"), ("closed", "closed loop (every stream slot busy)")):
            v, why = verdict(S, c, nr, ph)
            L += [f"**{title}** — verdict: **{v}** ({why})", ""]
            rows = []
            for t in targets:
                s = S[c][t]
                util = s[f"{ph}_util"]
                rows.append([LABEL[t], fmt(s[f"{ph}_rps"], 0),
                             fmt(util and {k: (v * 100 if k != "n" else v) for k, v in util.items()}, 0, " %"),
                             fmt(s[f"{ph}_us"]), f"{fmt(s[f'{ph}_us_user'])} + {fmt(s[f'{ph}_us_sys'])}",
                             fmt(s[f"{ph}_floor_x"], 2, "×"), fmt(s[f"{ph}_traefik_x"], 2, "×"),
                             fmt(s[f"{ph}_nginx_div"], 2, "×"), fmt(s[f"{ph}_haproxy_div"], 2, "×")]
                            + ([fmt(s[f"{ph}_p50_ms"], 2), fmt(s[f"{ph}_p99_ms"], 2)] if ph == "fixed" else [])
                            + [str(s[f"{ph}_errors"]) + (f" ({s[f'{ph}_invalid']} run(s) INVALID)" if s[f"{ph}_invalid"] else "")])
            L += table(["target", "achieved req/s", "target busy", "CPU µs/req", "user + kernel", "× floor",
                        "× less than Traefik", "÷ nginx", "÷ HAProxy"]
                       + (["P50 ms", "P99 ms"] if ph == "fixed" else []) + ["errors"], rows) + [""]
            if ph == "closed":
                L += ["(Closed loop: each of the connections × streams slots sends its next request when its response "
                      "is in. A target well under 100 % busy was not pushed to its max — the load generator on the "
                      "other CPU was the limit — so read its CPU per request as at that rate, not at saturation.)", ""]
    alpn = {}
    for r in d.get("rounds", []):
        for t, res in r["results"].items():
            for c in cases:
                if CASES[c]["family"] != "tls":
                    continue
                for ph in ("closed", "fixed"):
                    for n in (res.get(c, {}).get(ph, {}).get("tls_negotiated") or []):
                        a = (n.get("alpn"), n.get("version"), n.get("cipher_suite"))
                        alpn[(t,) + a] = alpn.get((t,) + a, 0) + (n.get("handshakes") or 0)
    if alpn:
        L += ["Negotiated in the TLS cases (loadgen's report of every run: target, ALPN, version, cipher, handshakes; "
              "each run opens its connections afresh, before its clock, but inside the target's CPU reading): "
              + "; ".join(f"{k[0]} `{k[1]}` {k[2]} {k[3]} ×{v:,}" for k, v in sorted(alpn.items(), key=str))
              + ("" if all(k[1] == "h2" for k in alpn) else " — **not h2 everywhere: check the configs**") + ".", ""]
    op = d.get("origin_protocol")
    if op:
        L += ["What each target sent its origin (checked before the rounds: the target started once with a probe "
              "listener as its origin, one request, the probe records the first bytes of each connection): "
              + "; ".join(f"{k}: {', '.join(v) or 'nothing'}" for k, v in op.items()) + "."
              + ("" if not new_floor or all(v == [ORIGIN_EXPECTED[k.rsplit(' ', 1)[1]]] for k, v in op.items())
                 else " — **not what every case intends (TLS: HTTP/1.1, h2c: h2c): check the configs**"), ""]
    L += ["## RSS after the load", "",
          "VmRSS (and VmHWM, the peak) of the target's processes read right after its last run of the family, "
          "before it is stopped (nginx: master + worker). MiB.", ""]
    rows = []
    for t in targets:
        mm = M.get(t, {})
        rows.append([LABEL[t]] + [f"{fmt(mm[f]['rss_mib'])} (peak {fmt(mm[f]['hwm_mib'])})" if f in mm else "—"
                                  for f in ("tls", "h2c")])
    L += table(["target", "after the TLS cases", "after the h2c case"], rows) + [""]
    if new_floor:
        tr = d.get("trailers_relayed") or {}
        if "h2c-grpc" in cases:
            def said(name):
                v = tr.get(name) or []
                if v and all(x is True for x in v):
                    return "relayed"
                if any(x is False for x in v):
                    return f"**not relayed** ({sum(x is False for x in v)} of {len(v)} start-up checks)"
                return "not checked (nghttp missing)" if v else "not checked"
            rows = [[LABEL[t], said(t)] for t in targets]
            L += ["## Trailers in the h2c case", "",
                  "The h2c case's origin ends every response with trailers (`grpc-status: 0`, `grpc-message: ok`, a "
                  "HEADERS frame after the DATA). At each start of a target in the h2c family one gRPC-style POST with "
                  "`nghttp -v` checks that they reached the client ([checks.txt](checks.txt)):", ""]
            L += table(["target", "trailers"], rows) + [""]
            if any(said(t) != "relayed" for t in targets):
                L += ["A target that did not relay them did less work per request than the others in that case: "
                      "its figures there are not the same work.", ""]
        L += ["## Not measured here", "",
              "- Trailers in the TLS cases: their HTTP/1.1 origin answers with a `content-length` body and no trailers.",
              "- Request trailers (the client sends none).", ""]
    else:
        L += ["## Not measured here", "",
              "- Trailers: `loadgen upstream` answers HTTP/2 with HEADERS + DATA and no trailers, so the gRPC-style case "
              "does not carry `grpc-status` back; its cost of relaying trailers is not in these figures.",
              "- The floor's origin leg in the TLS cases (h2c, not HTTP/1.1): see above.", ""]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(L))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"cases": S, "memory": M, "fixed_rate": rate,
                   "verdicts": {c: {ph: verdict(S, c, nr, ph) for ph in ("fixed", "closed")} for c in cases}},
                  f, indent=1)
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "target", "case", "phase", "achieved_rps", "responses", "cpu_user_s", "cpu_sys_s",
                    "cpu_us_per_req", "sched_us_per_req", "p50_ms", "p99_ms", "errors", "valid", "command"])
        for r in d.get("rounds", []):
            for t, res in r["results"].items():
                for c in cases:
                    for ph in ("closed", "fixed"):
                        x = res.get(c, {}).get(ph)
                        if not x:
                            continue
                        cp = x.get("cpu") or {}
                        w.writerow([r["round"], t, c, ph, f"{x['achieved_rate']:.1f}", x["requests_handled"],
                                    cp.get("user_s"), cp.get("sys_s"), f"{cpu_us(x) or 0:.2f}", f"{cp.get('sched_us_per_req') or 0:.2f}",
                                    f"{x['latency']['corrected']['p50_us'] / 1000:.3f}",
                                    f"{x['latency']['corrected']['p99_us'] / 1000:.3f}", errs(x), x.get("valid"),
                                    x.get("command")])
    if m.get("upstream_commands"):
        C = ["# Commands of this run", ""] + [f"Origin of the {fam} cases: `{cmd}`" for fam, cmd in m["upstream_commands"].items()]
        C += ["", f"Certificate: `{m['certificate']}`", ""]
    else:
        C = ["# Commands of this run", "", f"Origin: `{m['upstream_command']}`", "", f"Certificate: `{m['certificate']}`", ""]
    if d.get("rounds"):
        r0 = d["rounds"][0]["results"]
        for t in targets:
            for fam in ("tls", "h2c"):
                st = r0.get(t, {}).get(f"start_{fam}")
                if st:
                    env = " ".join(f"{k}={v}" for k, v in (st.get("env") or {}).items())
                    C.append(f"- {t} ({fam}): `{(env + ' ') if env else ''}{st['command']}`")
        C += ["", "loadgen, one of each kind (round 1):", ""]
        t0 = next(iter(r0))
        for c in cases:
            for ph in ("closed", "fixed"):
                x = r0[t0].get(c, {}).get(ph)
                if x:
                    C.append(f"- {c} {ph} ({t0}): `{x['command']}`")
    with open(os.path.join(out, "commands.md"), "w") as f:
        f.write("\n".join(C) + "\n")


def main():
    args, targets = parse_args()
    if args.summarize:
        summarize(args.summarize)
        print(os.path.join(args.summarize, "summary.md"))
        return
    from lib.procs import Fail, kill_all
    try:
        out = measure(args, targets)
    except Fail as e:
        kill_all()
        print(f"compare-h2: error: {e}", file=sys.stderr)
        sys.exit(1)
    summarize(out)
    print(os.path.join(out, "summary.md"))


if __name__ == "__main__":
    main()
