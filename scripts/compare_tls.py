#!/usr/bin/env python3
"""The TLS comparison: this project's proxy (native engine) terminating TLS beside Traefik, nginx,
HAProxy and the TLS byte-relay floor (`loadgen relay --tls`), each with the same certificate and
cleartext to the same upstream. Called by scripts/compare-tls.sh; see scripts/README.md.

Same method as the cleartext comparison (compare.py, whose modules this reuses): the target on
CPU 1, loadgen and the upstream on CPU 0, interleaved rounds (target order rotated by one each
round), each target started fresh, CPU of the target's processes from /proc/PID/stat around every
loadgen run (no warmup inside a run, so every request and handshake is in the denominator),
ratios within a round, median [min–max] over rounds.

Per round and target, with the ECDSA P-256 certificate (one process):
  pre-warm, then warm keep-alive TLS (50 connections): closed-loop max; open loop at the fixed
  rate; full handshakes (--connect-rate FULL --resume off); resumed handshakes (--connect-rate
  RESUMED, resume on); churn (open loop at the fixed rate, --new-connection-every N, resume on);
then with the RSA-2048 certificate (a second, fresh process): full and resumed handshakes.
After the rounds: RSS with 1,000 and 10,000 idle TLS connections (`loadgen hold` over https://,
ECDSA, the memory variant of each config).

Writes OUT/tls.json (every run: loadgen's report less its per-second series and histograms, the
CPU readings, the exact loadgen command), OUT/configs/{ecdsa,rsa}/, OUT/certs/ (the commands,
not the keys), OUT/memory/ and a NOTES.md stub (hand-written part); then summarize_tls.py writes
summary.md, summary.json, runs.csv, commands.md and noise.md.
"""

import argparse
import atexit
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

from comparison.ctx import Ctx
from comparison.loadruns import loadgen_run
from comparison.memory_phase import hold_line, hold_record
from comparison.record import git_info, machine_info, tool_versions, utc_stamp
from comparison.spec import CONNECTIONS, DESC, MEMORY_CONNECTIONS, MEMORY_SETTLE, REQ_TIMEOUT
from comparison.targets import start_upstream
from comparison.tls import TLS_TARGETS, TlsTarget, make_certs
from lib import bins as binpaths
from lib import procfs
from lib.procs import Fail, install_signal_handlers, kill_all, log, run_cmd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SCHEMA_VERSION = 1  # of tls.json
MEMORY_TARGETS = ["native", "traefik", "nginx", "haproxy"]

# durations in seconds; rates in new connections (handshakes) per second
MODES = {
    "smoke": dict(rounds=1, calib_runs=1, calib_s=1.5, prewarm_s=0.3, closed_s=1.5, fixed_s=2.0,
                  hs_s=1.5, churn_s=2.0, full_rate=300, resumed_rate=600, churn_every=10,
                  memory_connections=MEMORY_CONNECTIONS),
    "full": dict(rounds=5, calib_runs=3, calib_s=2.0, prewarm_s=0.5, closed_s=3.0, fixed_s=4.0,
                 hs_s=3.0, churn_s=4.0, full_rate=400, resumed_rate=800, churn_every=10,
                 memory_connections=MEMORY_CONNECTIONS),
}
HS_MAX_CONNECTIONS = 64   # --connect-rate: connections being set up or answered at once


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="one short round (~2.5 min), to check the script")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (full: 5, smoke: 1)")
    ap.add_argument("--out", help="results folder (default results/compare-tls/<date>-<host>[-smoke])")
    ap.add_argument("--targets", default=",".join(TLS_TARGETS), help="subset of " + ",".join(TLS_TARGETS))
    ap.add_argument("--rate-base", type=float, help="skip calibration: Traefik's TLS keep-alive max req/s")
    ap.add_argument("--full-rate", type=float, help="full handshakes per second offered (--connect-rate)")
    ap.add_argument("--resumed-rate", type=float, help="resumed handshakes per second offered")
    ap.add_argument("--churn-every", type=int, help="churn phase: --new-connection-every N")
    ap.add_argument("--skip", default="", help="comma-separated: rsa,memory")
    ap.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in TLS_TARGETS:
            ap.error(f"unknown target {t!r} (known: {', '.join(TLS_TARGETS)})")
    return args, targets


def binaries():
    return {
        "proxy": os.environ["PROXY_BIN"],
        "loadgen": os.environ["LOADGEN_BIN"],
        "traefik": os.environ["TRAEFIK_BIN"],
        "nginx": os.environ.get("NGINX_BIN", shutil.which("nginx") or "/usr/sbin/nginx"),
        "haproxy": os.environ.get("HAPROXY_BIN", shutil.which("haproxy") or "/usr/sbin/haproxy"),
        "probe": binpaths.path("probe"),
    }


def out_dir(args, now, mode):
    host = socket.gethostname().split(".")[0]
    suffix = "-smoke" if mode == "smoke" else ""
    out = os.path.abspath(args.out) if args.out else os.path.join(
        ROOT, "results", "compare-tls", f"{now:%Y-%m-%d}-{host}{suffix}")
    if os.path.exists(os.path.join(out, "tls.json")):
        raise Fail(f"{out} already holds a run: pass --out DIR for a new one")
    os.makedirs(out, exist_ok=True)
    return out


KEEP = ("handshakes", "tls_negotiated")


def run(ctx, t, what, **kw):
    return loadgen_run(ctx, t, what, extra_keys=KEEP, keep_command=True, **kw)


def handshake_runs(ctx, t, rates):
    p = ctx.p
    hs = dict(duration=p["hs_s"], connections=HS_MAX_CONNECTIONS)
    return {
        "full": run(ctx, t, "full handshakes", extra_args=["--connect-rate", str(int(rates["full_rate"])),
                                                          "--resume", "off"], **hs),
        "resumed": run(ctx, t, "resumed handshakes", extra_args=["--connect-rate",
                                                                 str(int(rates["resumed_rate"]))], **hs),
    }


def one_target_round(ctx, name, certs, rates, skip):
    p = ctx.p
    res = {"target": name}
    t = TlsTarget(name, ctx, certs, "ecdsa")
    e = {"command": shlex.join(t.argv), "env": t.env, "pids": t.pids}
    try:
        run(ctx, t, "pre-warm", closed=True, duration=p["prewarm_s"])
        e["closed"] = run(ctx, t, "warm closed max", closed=True, duration=p["closed_s"])
        e["fixed"] = run(ctx, t, "warm fixed rate", rate=rates["fixed_rate"], duration=p["fixed_s"])
        e.update(handshake_runs(ctx, t, rates))
        e["churn"] = run(ctx, t, "churn", rate=rates["fixed_rate"], duration=p["churn_s"],
                         extra_args=["--new-connection-every", str(rates["churn_every"])])
        e["vm_hwm_kb"], e["vm_rss_kb"] = procfs.mem_kb(t.pids)
    finally:
        t.stop()
    res["ecdsa"] = e
    if "rsa" not in skip:
        t = TlsTarget(name, ctx, certs, "rsa")
        r = {"command": shlex.join(t.argv), "env": t.env, "pids": t.pids}
        try:
            r.update(handshake_runs(ctx, t, rates))
        finally:
            t.stop()
        res["rsa"] = r
    log("  " + round_line(name, res))
    return res


def cpu_per(run_, n_key="requests_handled"):
    c = run_.get("cpu")
    if not c:
        return None
    n = run_[n_key] if n_key == "requests_handled" else sum((run_.get("handshakes") or {}).get(k, 0)
                                                            for k in ("full", "resumed"))
    return (c["user_s"] + c["sys_s"]) / n * 1e6 if n else None


def round_line(name, res):
    e = res["ecdsa"]
    parts = [f"{name:8s} warm max {e['closed']['achieved_rate']:7.0f}/s {cpu_per(e['closed']) or 0:6.1f} us/req",
             f"fixed {cpu_per(e['fixed']) or 0:6.1f} us/req",
             f"full {cpu_per(e['full'], 'hs') or 0:6.0f} us/hs", f"resumed {cpu_per(e['resumed'], 'hs') or 0:5.0f} us/hs",
             f"churn p99 {e['churn']['latency']['corrected']['p99_us'] / 1000:.2f} ms"]
    if "rsa" in res:
        parts.append(f"rsa full {cpu_per(res['rsa']['full'], 'hs') or 0:6.0f} us/hs")
    return "  ".join(parts)


def calibrate(ctx, record, certs):
    p = ctx.p
    if ctx.args.rate_base:
        record["calibration"] = {"rate_base": ctx.args.rate_base, "source": "--rate-base"}
        return ctx.args.rate_base
    log("calibrate: Traefik's closed-loop max on warm TLS connections sets the fixed rate")
    t = TlsTarget("traefik", ctx, certs, "ecdsa")
    try:
        run(ctx, t, "calibration warm-up", closed=True, duration=1.0)
        runs = [run(ctx, t, "calibration", closed=True, duration=p["calib_s"]) for _ in range(p["calib_runs"])]
    finally:
        t.stop()
    rates = [r["achieved_rate"] for r in runs]
    base = sorted(rates)[len(rates) // 2]
    record["calibration"] = {"source": "traefik closed-loop over TLS (ECDSA, keep-alive), median",
                             "runs_rps": rates, "rate_base": base, "commands": [r["command"] for r in runs],
                             "traefik_util": [r.get("cpu", {}).get("util") for r in runs]}
    log(f"calibrate: Traefik TLS max {', '.join(f'{x:.0f}' for x in rates)} req/s -> base {base:.0f}")
    return base


def memory_phase(ctx, record, targets, certs):
    mdir = os.path.join(ctx.out, "memory")
    os.makedirs(mdir, exist_ok=True)
    counts = ",".join(str(n) for n in ctx.p["memory_connections"])
    out = {}
    for name in targets:
        if name not in MEMORY_TARGETS:
            out[name] = {"measured": False, "reason": "the relay is a CPU floor (one upstream connection "
                         "and two copy buffers per client by design), not a memory one"}
            continue
        log(f"memory: {name} (idle TLS connections)")
        jpath = os.path.join(mdir, f"{name}.json")
        t = TlsTarget(name, ctx, certs, "ecdsa", for_memory=True)
        try:
            argv = (["taskset", "-c", DESC["loader_cpu"], ctx.bins["loadgen"], "hold", "--url", t.url]
                    + list(t.client_args) + ["--pid", str(t.proc.pid), "--connections", counts,
                                             "--settle", MEMORY_SETTLE, "--allow-failures", "--json", jpath])
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
        rec["config"] = f"configs/ecdsa/{name}-memory/"
        rec["command"] = shlex.join(argv)
        rec["tls_handshakes"] = [c.get("tls_handshakes") for c in rep["counts"]]
        out[name] = rec
        log("  " + hold_line(name, rec))
    record["memory"] = {"connections": ctx.p["memory_connections"], "settle": MEMORY_SETTLE,
                        "key_type": "ecdsa", "targets": out}


def write_json(out, record):
    tmp = os.path.join(out, "tls.json.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, separators=(",", ":"))
    os.replace(tmp, os.path.join(out, "tls.json"))


def main():
    args, targets = parse_args()
    bins = binaries()
    mode = "smoke" if args.smoke else "full"
    params = dict(MODES[mode])
    if args.rounds:
        params["rounds"] = args.rounds
    skip = set(x for x in args.skip.split(",") if x)
    now = datetime.datetime.now(datetime.timezone.utc)
    out = out_dir(args, now, mode)
    ctx = Ctx(out, mode, params, args, bins)
    atexit.register(kill_all)
    install_signal_handlers((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    t_start = time.monotonic()

    certs = make_certs(os.path.join(ctx.work, "certs"))
    os.makedirs(os.path.join(out, "certs"), exist_ok=True)
    with open(os.path.join(out, "certs", "commands.txt"), "w") as f:
        f.write("# the certificates of this run (the keys are not kept)\n")
        for kt, c in certs.items():
            f.write(c["command"] + "\n")
    versions = tool_versions(bins)
    versions["openssl"] = subprocess.run(["openssl", "version"], stdout=subprocess.PIPE).stdout.decode().strip()
    record = {
        "schema_version": SCHEMA_VERSION, "kind": "compare-tls",
        "meta": {"command_line": args.command_line or shlex.join(sys.argv), "start_time": utc_stamp(now),
                 "mode": mode, "params": params, "targets": targets, "skip": sorted(skip),
                 "description": DESC, "connections": CONNECTIONS, "hs_max_connections": HS_MAX_CONNECTIONS,
                 "request_timeout": REQ_TIMEOUT,
                 "certificates": {kt: {"command": c["command"]} for kt, c in certs.items()},
                 "pinning": {"target": f"CPU {DESC['proxy_cpu']} (taskset)",
                             "loadgen_and_upstream": f"CPU {DESC['loader_cpu']} (taskset + --cpus)"},
                 "machine": machine_info(), "git": git_info(), "versions": versions, "binaries": dict(bins)},
    }
    log(f"compare-tls: {mode} mode, {params['rounds']} round(s), targets {', '.join(targets)}; out {out}")
    up, up_argv = start_upstream(ctx)
    record["meta"]["upstream_command"] = shlex.join(up_argv)
    if "traefik" not in targets and not args.rate_base:
        raise Fail("traefik is not in --targets: pass --rate-base N (the fixed rate is half Traefik's max)")
    base = calibrate(ctx, record, certs)
    rates = {"rate_base": base, "fixed_rate": base * 0.5,
             "full_rate": args.full_rate or params["full_rate"],
             "resumed_rate": args.resumed_rate or params["resumed_rate"],
             "churn_every": args.churn_every or params["churn_every"]}
    record["rates"] = rates

    rounds = []
    for i in range(params["rounds"]):
        order = targets[i % len(targets):] + targets[:i % len(targets)]
        log(f"round {i + 1}/{params['rounds']}: {' '.join(order)}")
        rr = {"round": i + 1, "order": order, "started": time.time(), "results": {}}
        for name in order:
            if not up.alive():
                raise Fail(f"upstream died: {up.log_tail()}")
            rr["results"][name] = one_target_round(ctx, name, certs, rates, skip)
        rounds.append(rr)
        record["rounds"] = rounds
        write_json(out, record)
    if "memory" not in skip:
        memory_phase(ctx, record, targets, certs)
        write_json(out, record)
    up.stop()
    record["meta"]["end_time"] = utc_stamp()
    record["meta"]["elapsed_s"] = time.monotonic() - t_start
    record["meta"]["machine"]["loadavg_at_end"] = procfs.loadavg_text()
    write_json(out, record)
    log(f"done in {record['meta']['elapsed_s']:.0f}s; summarizing")
    notes = os.path.join(out, "NOTES.md")
    if not os.path.exists(notes):
        with open(notes, "w") as f:
            f.write(f"# NOTES ({mode} run)\n\nHand-written: what else ran on the machine, what to trust. "
                    "The measured noise (load average, spread over rounds) is in [noise.md](noise.md).\n")
    r = subprocess.run([sys.executable, os.path.join(HERE, "summarize_tls.py"), out])
    if r.returncode != 0:
        raise Fail("summarize_tls.py failed")
    print(os.path.join(out, "summary.md"))


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        kill_all()
        print(f"compare-tls: error: {e}", file=sys.stderr)
        sys.exit(1)
