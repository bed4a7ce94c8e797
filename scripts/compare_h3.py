#!/usr/bin/env python3
"""The HTTP/3 comparison: this project's proxy (`http3 = true` on a TLS listener) beside Traefik
3.7 and Caddy 2.6 (both quic-go), the HTTP/3 relay floor (`loadgen relay --h3 --upstream-http1`,
quinn + h3 alone) and the direct path (`loadgen upstream --tls --http3`), all over HTTP/3 (QUIC)
on 127.0.0.1. Called by scripts/compare-h3.sh; see scripts/README.md. Targets and configs:
comparison/h3.py.

Method (that of compare_h2.py, whose modules this reuses): the target on CPU 1, loadgen and the
origin (`loadgen upstream --http1-only`, 100-byte body, keep-alive) on CPU 0 (taskset);
interleaved rounds (the target order rotated by one each round); each target started fresh once
per round; its CPU is utime+stime of its processes from /proc/PID/stat read around every loadgen
run (no warmup inside a run, so every request is in the denominator), divided by the responses;
ratios to the floor taken within a round, then median [min–max] over rounds. Same certificate
(ECDSA P-256, made once per run), TLS 1.3 TLS_AES_128_GCM_SHA256, X25519 (checked on the wire
with tshark before the rounds, with what each target sends its origin).

Per round and target: a pre-warm (open loop at the low rate, 0.5 s), then open loop at the low
rate and at the high rate (`loadgen run --http3 --streams S --connections C --rate R`, 4 s each),
then VmRSS/VmHWM of its processes. With --lock PATH each round (and the checks) takes PATH's
exclusive flock itself, so a long run leaves the machine to others between rounds.

Writes OUT/h3.json (every run: loadgen's report less its per-second series, the CPU readings,
the exact command), OUT/configs/, OUT/certs/commands.txt, OUT/checks.txt (the wire and origin
checks), a NOTES.md stub; then `compare_h3.py --summarize OUT` writes summary.md, summary.json,
runs.csv and commands.md (it can be re-run on a committed h3.json).
"""

import argparse
import atexit
import csv
import datetime
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from comparison.stats import stat  # noqa: E402

SCHEMA_VERSION = 1  # of h3.json
BODY_BYTES = 100    # the origin's response body
ORDER = ["direct", "relay", "native", "traefik", "caddy"]
LABEL = {"direct": "direct (`loadgen upstream --tls --http3`)", "relay": "HTTP/3 relay floor (`loadgen relay --h3`)",
         "native": "this proxy", "traefik": "Traefik", "caddy": "Caddy"}
PHASES = ["low", "high"]
MODES = {
    "quick": dict(rounds=1, prewarm_s=0.3, run_s=1.5),
    "full": dict(rounds=5, prewarm_s=0.5, run_s=6.0),
}
# The rates (req/s, open loop). low: a light load where every target idles between requests;
# high: the highest rate every target held in every round of the exploration on 2026-12-01 (see
# results/compare-h3/2026-12-01-vm/README.md), with margin.
DEFAULT_RATES = (1000, 3000)
STREAMS = 10        # --streams: request slots per QUIC connection
CONNECTIONS = 4     # QUIC connections per run
HELD = 0.99         # a run whose achieved rate is below HELD × offered did not hold the rate


# ---------------------------------------------------------------- measuring

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", "--smoke", dest="quick", action="store_true",
                    help="one short round: checks the script, measures nothing worth quoting")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (full: 5, quick: 1)")
    ap.add_argument("--out", help="results folder (default results/compare-h3/<date>-<host>, "
                                  "quick: results/compare-h3/smoke-<date>-<host>)")
    ap.add_argument("--targets", default=",".join(ORDER), help="subset of " + ",".join(ORDER))
    ap.add_argument("--rates", default=",".join(str(r) for r in DEFAULT_RATES), help="LOW,HIGH req/s (open loop)")
    ap.add_argument("--streams", type=int, default=STREAMS, help="request slots per QUIC connection")
    ap.add_argument("--connections", type=int, default=CONNECTIONS, help="QUIC connections per run")
    ap.add_argument("--lock", help="take this file's exclusive flock around each round and the checks "
                                   "(do not also run the script under flock on the same file)")
    ap.add_argument("--no-checks", action="store_true", help="skip the wire and origin checks (exploration only)")
    ap.add_argument("--summarize", metavar="DIR", help="only (re)write the summary of the run in DIR")
    ap.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in ORDER:
            ap.error(f"unknown target {t!r} (known: {', '.join(ORDER)})")
    try:
        args.rate_low, args.rate_high = (float(x) for x in args.rates.split(","))
    except ValueError:
        ap.error("--rates takes LOW,HIGH (req/s)")
    return args, targets


class Held:
    """The exclusive flock of `path` while in the block (nothing when path is None)."""

    def __init__(self, path, what):
        self.path, self.what, self.f = path, what, None

    def __enter__(self):
        if self.path:
            from lib.procs import log
            self.f = open(self.path, "a")
            t0 = time.monotonic()
            fcntl.flock(self.f, fcntl.LOCK_EX)
            log(f"lock {self.path} taken for {self.what} (waited {time.monotonic() - t0:.0f} s)")
        return self

    def __exit__(self, *exc):
        if self.f:
            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()


def measure(args, targets):
    from comparison.ctx import Ctx
    from comparison.h2 import OriginProbe, port_open
    from comparison.h3 import H3Target, group_check
    from comparison.loadruns import loadgen_run
    from comparison.record import git_info, machine_info, utc_stamp
    from comparison.spec import DESC, REQ_TIMEOUT
    from comparison.targets import wait_ready
    from comparison.tls import make_certs
    from lib import procfs
    from lib.procs import Fail, Proc, free_port, install_signal_handlers, kill_all, log, run_cmd, version_of

    bins = {"proxy": os.environ["PROXY_BIN"], "loadgen": os.environ["LOADGEN_BIN"],
            "traefik": os.environ["TRAEFIK_BIN"],
            "caddy": os.environ.get("CADDY_BIN", shutil.which("caddy") or "/usr/bin/caddy")}
    mode = "quick" if args.quick else "full"
    p = dict(MODES[mode])
    if args.rounds:
        p["rounds"] = args.rounds
    rates = {"low": args.rate_low, "high": args.rate_high}
    now = datetime.datetime.now(datetime.timezone.utc)
    host = socket.gethostname().split(".")[0]
    out = os.path.abspath(args.out) if args.out else os.path.join(
        ROOT, "results", "compare-h3", (f"smoke-{now:%Y-%m-%d}-{host}" if mode == "quick" else f"{now:%Y-%m-%d}-{host}"))
    if os.path.exists(os.path.join(out, "h3.json")):
        raise Fail(f"{out} already holds a run: pass --out DIR for a new one")
    os.makedirs(out, exist_ok=True)
    ctx = Ctx(out, mode, p, args, bins)
    atexit.register(kill_all)
    install_signal_handlers((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    t_start = time.monotonic()

    cert = make_certs(os.path.join(ctx.work, "certs"))["ecdsa"]
    os.makedirs(os.path.join(out, "certs"), exist_ok=True)
    with open(os.path.join(out, "certs", "commands.txt"), "w") as f:
        f.write("# the certificate of this run (ECDSA P-256; the RSA pair is made but unused; keys not kept)\n")
        f.write(cert["command"] + "\n")

    # the origin, on the loader CPU: HTTP/1.1 only (what every target but `direct` speaks to it)
    port = free_port()
    ctx.up_addr = f"127.0.0.1:{port}"
    up_argv = ["taskset", "-c", DESC["loader_cpu"], bins["loadgen"], "upstream", "--listen", ctx.up_addr,
               "--body-bytes", str(BODY_BYTES), "--http1-only", "--threads", "1", "--cpus", DESC["loader_cpu"]]
    up = Proc("upstream", up_argv, os.path.join(ctx.logdir, "upstream.log"))
    wait_ready(up, ctx.up_addr, "upstream (loadgen upstream)", timeout=20, ready=port_open)
    origin = ctx.up_addr

    versions = {"proxy": version_of([bins["proxy"], "--version"]),
                "loadgen": version_of([bins["loadgen"], "--version"]),
                "traefik": version_of([bins["traefik"], "version"]),
                "caddy": version_of([bins["caddy"], "version"]),
                "tshark": version_of(["tshark", "--version"]) if shutil.which("tshark") else "not installed",
                "python": sys.version.split()[0]}
    record = {
        "schema_version": SCHEMA_VERSION, "kind": "compare-h3",
        "meta": {"command_line": args.command_line or shlex.join(sys.argv), "start_time": utc_stamp(now),
                 "mode": mode, "params": p, "targets": targets, "rates": rates, "streams": args.streams,
                 "connections": args.connections, "body_bytes": BODY_BYTES, "request_timeout": REQ_TIMEOUT,
                 "description": DESC, "upstream_command": shlex.join(up_argv),
                 "floor": "loadgen relay --h3 --upstream-http1", "certificate": cert["command"],
                 "lock": args.lock,
                 "pinning": {"target": f"CPU {DESC['proxy_cpu']} (taskset)",
                             "loadgen_and_upstream": f"CPU {DESC['loader_cpu']} (taskset + --cpus)"},
                 "machine": machine_info(), "git": git_info(), "versions": versions, "binaries": dict(bins)},
    }

    def write_json():
        tmp = os.path.join(out, "h3.json.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f, separators=(",", ":"))
        os.replace(tmp, os.path.join(out, "h3.json"))

    def start(name, cfg_sub=None):
        return H3Target(name, ctx, cert, args.streams, BODY_BYTES, cfg_sub=cfg_sub)

    def run(t, what, rate, duration):
        r = loadgen_run(ctx, t, what, rate=rate, duration=duration, connections=args.connections,
                        keep_command=True, extra_keys=("handshakes", "tls_negotiated", "meta"))
        meta = r.pop("meta") or {}
        r["protocol"] = meta.get("protocol")
        r["streams"] = meta.get("streams")
        return r

    def lg_argv(t, rate, duration, json_path):
        return (["taskset", "-c", DESC["loader_cpu"], bins["loadgen"], "run", "--url", t.url, "--duration",
                 f"{duration}s", "--warmup", "0s", "--connections", "1", "--cpus", DESC["loader_cpu"], "--rate",
                 str(rate), "--json", json_path, "--quiet", "--allow-invalid"] + list(t.client_args))

    # checks, once per target before the rounds: the key-exchange group and suite on the wire, and
    # what the target sends its origin (a probe listener in the origin's place)
    checks = ["# before the rounds: one short run per target under a tshark capture (QUIC Initial packets "
              "decrypted: ClientHello groups and key shares, ServerHello group and suite); then the target "
              "started with a probe as its origin (what it sends first)"]
    record["wire"], record["origin_protocol"] = {}, {}
    with Held(args.lock, "the checks"):
        for name in ([] if args.no_checks else targets):
            t = start(name, cfg_sub="checks")
            try:
                parsed, line = group_check(t, lg_argv(t, 50, 0.4, os.path.join(ctx.tmpdir, f"g-{name}.json")),
                                           os.path.join(ctx.tmpdir, f"{name}.pcap"))
            finally:
                t.stop()
            record["wire"][name] = parsed
            checks.append(line)
            log("wire: " + line)
            if name == "direct":
                continue
            probe = OriginProbe()
            ctx.up_addr = probe.addr
            try:
                t = start(name, cfg_sub="origin-check")
                try:
                    run_cmd(lg_argv(t, 5, 0.4, os.path.join(ctx.tmpdir, f"o-{name}.json")), timeout=30,
                            what=f"the origin check of {name}")
                    deadline = time.monotonic() + 3
                    while not probe.seen and time.monotonic() < deadline:
                        time.sleep(0.05)
                finally:
                    t.stop()
            finally:
                ctx.up_addr = origin
                probe.close()
            seen = sorted(set(probe.seen))
            record["origin_protocol"][name] = seen
            checks.append(f"{name}: sends its origin {', '.join(seen) or 'nothing'}")
            log(f"origin: {name} sends {', '.join(seen) or 'nothing'}")
    with open(os.path.join(out, "checks.txt"), "w") as f:
        f.write("\n".join(checks) + "\n")
    write_json()

    log(f"compare-h3: {mode} mode, {p['rounds']} round(s), targets {', '.join(targets)}; rates "
        f"{rates['low']:.0f} and {rates['high']:.0f} req/s, {args.connections} connections x {args.streams} streams; out {out}")
    rounds = []
    for i in range(p["rounds"]):
        order = targets[i % len(targets):] + targets[:i % len(targets)]
        with Held(args.lock, f"round {i + 1}"):
            log(f"round {i + 1}/{p['rounds']}: {' '.join(order)}")
            rr = {"round": i + 1, "order": order, "started": time.time(), "loadavg": procfs.loadavg_text(), "results": {}}
            for name in order:
                if not up.alive():
                    raise Fail(f"upstream died: {up.log_tail()}")
                t = start(name)
                res = {"start": {"command": shlex.join(t.argv), "env": t.env, "pids": t.pids}}
                try:
                    res["prewarm"] = run(t, "pre-warm", rates["low"], p["prewarm_s"])
                    for ph in PHASES:
                        res[ph] = run(t, f"{ph} rate", rates[ph], p["run_s"])
                    hwm, rss = procfs.mem_kb(t.pids)
                    res["mem"] = {"vm_hwm_kb": hwm, "vm_rss_kb": rss}
                finally:
                    t.stop()
                log(f"  {name:8s} " + "  ".join(
                    f"{ph} {res[ph]['achieved_rate']:6.0f}/s {cpu_us(res[ph]) or 0:6.1f} us/req p99 "
                    f"{res[ph]['latency']['corrected']['p99_us'] / 1000:6.2f} ms err {errs(res[ph])} {res[ph]['protocol']}"
                    for ph in PHASES) + f"  rss {rss / 1024:.1f} MiB")
                rr["results"][name] = res
            rr["loadavg_end"] = procfs.loadavg_text()
            rounds.append(rr)
            record["rounds"] = rounds
            write_json()
    up.stop()
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


def not_h3(r):
    """Why a run does not count as HTTP/3 (None when it does): loadgen's protocol and the ALPN of
    every negotiation it reports."""
    if r.get("protocol") != "h3":
        return f"protocol {r.get('protocol')!r}"
    bad = [n for n in (r.get("tls_negotiated") or []) if n.get("alpn") != "h3" or n.get("version") != "TLSv1.3"]
    if bad or not r.get("tls_negotiated"):
        return "negotiated " + (", ".join(f"{n.get('alpn')} {n.get('version')}" for n in bad) or "nothing")
    return None


def compute(d):
    """(targets, S, M): S[phase][target] the figures over rounds, M[target] the memory."""
    targets = [t for t in ORDER if t in d["meta"]["targets"]]
    rounds = d.get("rounds", [])
    rates = d["meta"]["rates"]
    S = {}
    for ph in PHASES:
        S[ph] = {}
        for t in targets:
            per = [r["results"][t][ph] for r in rounds if t in r["results"]]
            s = {"rounds": len(per)}
            s["rps"] = stat([x["achieved_rate"] for x in per])
            s["held"] = sum(1 for x in per if x["achieved_rate"] >= HELD * rates[ph])
            s["us"] = stat([cpu_us(x) for x in per])
            s["us_user"] = stat([x["cpu"]["us_per_req_user"] for x in per if x.get("cpu")])
            s["us_sys"] = stat([x["cpu"]["us_per_req_sys"] for x in per if x.get("cpu")])
            s["util"] = stat([(x.get("cpu") or {}).get("util") for x in per])
            s["p50_ms"] = stat([x["latency"]["corrected"]["p50_us"] / 1000 for x in per])
            s["p99_ms"] = stat([x["latency"]["corrected"]["p99_us"] / 1000 for x in per])
            kinds = {}
            for x in per:
                for k, v in (x.get("errors") or {}).items():
                    if v:
                        kinds[k] = kinds.get(k, 0) + v
            s["errors"] = kinds
            s["non_200"] = sum(v for x in per for k, v in (x.get("status_codes") or {}).items() if k != "200")
            s["invalid"] = sum(1 for x in per if not x.get("valid", True))
            s["not_h3"] = [f"round {r['round']}: {why}" for r in rounds if t in r["results"]
                           for why in [not_h3(r["results"][t][ph])] if why]
            s["floor_x"] = stat([div(cpu_us(r["results"][t][ph]), cpu_us(r["results"]["relay"][ph]))
                                 for r in rounds if t in r["results"] and "relay" in r["results"]])
            s["p99_minus_direct_ms"] = stat([
                (r["results"][t][ph]["latency"]["corrected"]["p99_us"]
                 - r["results"]["direct"][ph]["latency"]["corrected"]["p99_us"]) / 1000
                for r in rounds if t in r["results"] and "direct" in r["results"]])
            S[ph][t] = s
    M = {}
    for t in targets:
        per = [r["results"][t].get("mem") for r in rounds if t in r["results"]]
        per = [x for x in per if x]
        if per:
            M[t] = {"rss_mib": stat([x["vm_rss_kb"] / 1024 for x in per]),
                    "hwm_mib": stat([x["vm_hwm_kb"] / 1024 for x in per])}
    return targets, S, M


def table(head, rows):
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def error_text(s):
    parts = [f"{k} {v:,}" for k, v in sorted(s["errors"].items())]
    if s["non_200"]:
        parts.append(f"non-200 {s['non_200']:,}")
    return ", ".join(parts) if parts else "0"


def wire_text(w):
    if not w:
        return "not checked"
    return (f"offered {', '.join(w['offered']) or '?'} (key share {', '.join(w['key_shares']) or '?'}); "
            f"chose **{', '.join(w['chosen']) or '?'}**, {', '.join(w['suite']) or '?'}")


def summarize(out):
    with open(os.path.join(out, "h3.json")) as f:
        d = json.load(f)
    targets, S, M = compute(d)
    m = d["meta"]
    nr = len(d.get("rounds", []))
    rates = m["rates"]
    L = [f"# HTTP/3 comparison: {m['start_time']} on {m['machine']['host']}", ""]
    if m["mode"] == "quick":
        L += ["**SMOKE RUN (`--quick`): one short round on a machine that may be busy. It checks that the script "
              "works; its figures are not the comparison and must not be quoted as such.**", ""]
    L += [f"`{m['command_line']}` — {m['mode']} mode, {nr} round(s), {m.get('elapsed_s', 0):.0f} s; load average at "
          f"start `{m['machine']['loadavg_at_start']}`, at end `{m['machine'].get('loadavg_at_end', '?')}`. Commit "
          f"`{m['git']['commit'][:12]}`. Every target serves HTTP/3 (QUIC) on 127.0.0.1 on CPU {m['description']['proxy_cpu']}; "
          f"loadgen and the origin (`loadgen upstream --http1-only`, {m['body_bytes']}-byte body, keep-alive) on CPU "
          f"{m['description']['loader_cpu']} (taskset); one worker each (`--workers 1`, `GOMAXPROCS=1`, `--threads 1`); "
          "the same ECDSA P-256 certificate for every target. Load: `loadgen run --http3 "
          f"--streams {m['streams']} --connections {m['connections']}`, open loop, at {rates['low']:,.0f} and "
          f"{rates['high']:,.0f} req/s, {m['params']['run_s']:g} s each after a {m['params']['prewarm_s']:g} s pre-warm, "
          "the target started fresh each round. "
          "Method: [scripts/README.md](../../../scripts/README.md#scriptscompare-h3sh-the-http3-comparison); "
          "raw data: [h3.json](h3.json) (every run, its command and CPU readings), [runs.csv](runs.csv), "
          "[commands.md](commands.md), [checks.txt](checks.txt), [configs/](configs/); notes: [NOTES.md](NOTES.md).", "",
          "Values: median [min–max] over rounds; ratios taken within a round, then the median. CPU µs/request = "
          "(utime+stime of the target's processes over the loadgen run, /proc/PID/stat) ÷ responses. × floor: ÷ the "
          "relay's CPU per request in the same round. P50/P99: corrected latency (from the intended send time); "
          "P99 − direct: the target's P99 minus the direct path's in the same round. held: rounds whose achieved "
          f"rate was ≥ {HELD:.0%} of the offered rate.", ""]
    # headline
    L += ["## CPU per request relative to the floor", ""]
    rows = []
    for t in targets:
        rows.append([LABEL[t]] + [f"{fmt(S[ph][t]['us'])} µs = {fmt(S[ph][t]['floor_x'], 2, '×')}" for ph in PHASES])
    L += table(["target", f"at {rates['low']:,.0f} req/s", f"at {rates['high']:,.0f} req/s"], rows) + [""]
    for ph in PHASES:
        L += [f"## Open loop at {rates[ph]:,.0f} req/s", ""]
        rows = []
        for t in targets:
            s = S[ph][t]
            util = s["util"]
            rows.append([LABEL[t], fmt(s["rps"], 0), f"{s['held']}/{s['rounds']}",
                         fmt(util and {k: (v * 100 if k != "n" else v) for k, v in util.items()}, 0, " %"),
                         fmt(s["us"]), f"{fmt(s['us_user'])} + {fmt(s['us_sys'])}", fmt(s["floor_x"], 2, "×"),
                         fmt(s["p50_ms"], 2), fmt(s["p99_ms"], 2),
                         fmt(s["p99_minus_direct_ms"], 2) if t != "direct" else "—",
                         error_text(s) + (f" ({s['invalid']} run(s) INVALID)" if s["invalid"] else "")])
        L += table(["target", "achieved req/s", "held", "target busy", "CPU µs/req", "user + kernel", "× floor",
                    "P50 ms", "P99 ms", "P99 − direct ms", "errors"], rows) + [""]
    L += ["## RSS after the load", "",
          "VmRSS (and VmHWM, the peak) of the target's processes right after its high-rate run, before it is "
          "stopped. MiB.", ""]
    L += table(["target", "VmRSS", "VmHWM"], [[LABEL[t], fmt(M[t]["rss_mib"]), fmt(M[t]["hwm_mib"])]
                                           for t in targets if t in M]) + [""]
    # validity
    L += ["## Was it HTTP/3, and the same TLS, everywhere?", ""]
    bad = {t: S[ph][t]["not_h3"] for ph in PHASES for t in targets if S[ph][t]["not_h3"]}
    neg = {}
    for r in d.get("rounds", []):
        for t, res in r["results"].items():
            for ph in PHASES:
                for n in res[ph].get("tls_negotiated") or []:
                    k = (t, n.get("alpn"), n.get("version"), n.get("cipher_suite"))
                    neg[k] = neg.get(k, 0) + (n.get("handshakes") or 0)
    L += ["loadgen's report of every measured run (protocol, ALPN, TLS version, cipher, handshakes over all rounds): "
          + "; ".join(f"{k[0]} `{k[1]}` {k[2]} {k[3]} ×{v:,}" for k, v in sorted(neg.items(), key=str)) + ". "
          + ("Every run was `h3`." if not bad else "**Not HTTP/3: " + "; ".join(f"{t}: {', '.join(v)}" for t, v in bad.items())
             + "**"), ""]
    wire = d.get("wire") or {}
    if wire:
        L += ["Key exchange on the wire (before the rounds: one short run per target captured with tshark, its QUIC "
              "Initial packets decrypted; [checks.txt](checks.txt)):", ""]
        L += table(["target", "ClientHello → ServerHello"], [[LABEL[t], wire_text(wire.get(t))] for t in targets]) + [""]
        chosen = {t: tuple((wire.get(t) or {}).get("chosen") or ()) for t in targets}
        if len(set(chosen.values())) > 1:
            L += ["**The targets did not all pick the same group: the handshake costs differ.**", ""]
    op = d.get("origin_protocol") or {}
    if op:
        L += ["What each target sent its origin (the target started with a probe listener as its origin, a few "
              "requests): " + "; ".join(f"{k}: {', '.join(v) or 'nothing'}" for k, v in op.items()) + "."
              + ("" if all(v == ["http/1.1"] for v in op.values()) else " — **not HTTP/1.1 everywhere**"), ""]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(L))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"schema_version": SCHEMA_VERSION, "rates": rates, "phases": S, "memory": M,
                   "wire": wire, "origin_protocol": op}, f, indent=1)
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "target", "phase", "offered_rps", "achieved_rps", "responses", "cpu_user_s", "cpu_sys_s",
                    "cpu_us_per_req", "sched_us_per_req", "p50_ms", "p99_ms", "errors", "protocol", "valid", "command"])
        for r in d.get("rounds", []):
            for t, res in r["results"].items():
                for ph in PHASES:
                    x = res[ph]
                    cp = x.get("cpu") or {}
                    w.writerow([r["round"], t, ph, f"{rates[ph]:.0f}", f"{x['achieved_rate']:.1f}", x["requests_handled"],
                                cp.get("user_s"), cp.get("sys_s"), f"{cpu_us(x) or 0:.2f}",
                                f"{cp.get('sched_us_per_req') or 0:.2f}",
                                f"{x['latency']['corrected']['p50_us'] / 1000:.3f}",
                                f"{x['latency']['corrected']['p99_us'] / 1000:.3f}",
                                ";".join(f"{k}={v}" for k, v in sorted((x.get("errors") or {}).items()) if v) or "0",
                                x.get("protocol"), x.get("valid"), x.get("command")])
    C = ["# Commands of this run", "", f"Origin: `{m['upstream_command']}`", "", f"Certificate: `{m['certificate']}`", ""]
    if d.get("rounds"):
        r0 = d["rounds"][0]["results"]
        for t in targets:
            st = r0.get(t, {}).get("start")
            if st:
                env = " ".join(f"{k}={v}" for k, v in (st.get("env") or {}).items())
                C.append(f"- {t}: `{(env + ' ') if env else ''}{st['command']}`")
        C += ["", "loadgen (round 1, first target):", ""]
        t0 = d["rounds"][0]["order"][0]
        for ph in PHASES:
            C.append(f"- {ph} ({t0}): `{r0[t0][ph]['command']}`")
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
        print(f"compare-h3: error: {e}", file=sys.stderr)
        sys.exit(1)
    summarize(out)
    print(os.path.join(out, "summary.md"))


if __name__ == "__main__":
    main()
