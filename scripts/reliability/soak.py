#!/usr/bin/env python3
"""Soak: open-loop load for a long window while the config is reloaded every --reload-every s.
See scripts/reliability/README.md.

    scripts/reliability/soak.sh [--quick] [--duration S] [--rate R] [--out DIR] ...

One proxy process (`--workers 1`, CPU 1), two bundled upstreams (CPU 0), one `loadgen run` for the
whole window (CPU 0) alternating requests for `/` and `/extra/x`. Two valid configs alternate:
A routes everything to upstream 1; B adds a route `/extra/` to a second upstream group (upstream
2, so every switch B -> A also retires a server and its pooled connections) and changes a limit.
Every --invalid-every-th reload writes an invalid file instead (rotating: an undefined upstream
group, a TOML syntax error, a bad duration), which must be rejected with the old config kept.
Reloads alternate SIGHUP and `POST /reload`; each is verified (POST: 200 + the next generation, or
400; SIGHUP: proxy_config_reloads_total{result} and the generation on /metrics; both: the route
count on GET /config). VmRSS, fds and threads of the proxy are sampled every --sample-every s.

Criteria (exit 1 when one fails; exit 2 when the run itself could not be made):
  - zero request errors (connect/read/write/timeout/status; dropped; never sent) and every
    response a 200;
  - every valid reload applied, every invalid one rejected without a change of generation;
  - RSS: the largest sample of the last --edge s <= the largest of the first --edge s x (1 +
    --rss-tolerance) (default 10 %);
  - fds: the largest sample of the last --edge s <= the largest of the first --edge s +
    --fd-tolerance (default 8).
--edge is 60 s for the full run, a third of the window with --quick.
"""

import argparse
import json
import os
import signal
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rel_common as C  # noqa: E402


def header(which):
    return C.config_head(f"scripts/reliability/soak.py ({which})")


def config_a(up1, up2):
    return header("config A: one route") + f"""
[limits]
header_read_timeout = "10s"

[[routes]]
path_prefix = "/"
upstream = "web"

[upstreams.web]
servers = ["{up1}"]
"""


def config_b(up1, up2):
    return header("config B: a second route to a second upstream") + f"""
[limits]
header_read_timeout = "9s"

[[routes]]
path_prefix = "/extra/"
upstream = "extra"

[[routes]]
path_prefix = "/"
upstream = "web"

[upstreams.web]
servers = ["{up1}"]

[upstreams.extra]
servers = ["{up2}"]
idle_pool_size = 16
"""


def invalid(kind, up1, up2):
    if kind == "undefined-upstream":
        return config_b(up1, up2).replace('upstream = "extra"', 'upstream = "nowhere"')
    if kind == "toml-syntax":
        return config_a(up1, up2).replace('path_prefix = "/"', 'path_prefix = "/')
    if kind == "bad-duration":
        return config_a(up1, up2).replace('"10s"', '"ten seconds"')
    raise ValueError(kind)


INVALID_KINDS = ["undefined-upstream", "toml-syntax", "bad-duration"]


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def generation(admin):
    return int(C.metric(C.metrics(admin), "proxy_config_generation"))


def route_count(admin):
    st, body = C.http(admin, "GET", "/config")
    if st != 200:
        return None
    try:
        return len(json.loads(body)["config"]["routes"])
    except (ValueError, KeyError, TypeError):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="60 s instead of 10 min, results under target/")
    ap.add_argument("--duration", type=float, help="s of measured load (default 600; quick 60)")
    ap.add_argument("--warmup", type=float, default=10.0, help="s of unmeasured load first (default 10)")
    ap.add_argument("--rate", type=float, default=3000.0, help="req/s open loop (default 3000)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--reload-every", type=float, help="s between reloads (default 30; quick 10)")
    ap.add_argument("--invalid-every", type=int, default=5, help="every n-th reload is an invalid config")
    ap.add_argument("--sample-every", type=float, help="s between RSS/fd samples (default 10; quick 2)")
    ap.add_argument("--edge", type=float, help="s at each end compared (default 60; quick: duration/3)")
    ap.add_argument("--rss-tolerance", type=float, default=0.10, help="relative RSS growth allowed")
    ap.add_argument("--fd-tolerance", type=int, default=8, help="fds growth allowed")
    ap.add_argument("--out", help="results folder (default results/reliability/<date>-<host>; quick: target/reliability/)")
    ap.add_argument("--command-line", default="scripts/reliability/soak.py")
    a = ap.parse_args()
    q = a.quick
    dur = a.duration or (60.0 if q else 600.0)
    every = a.reload_every or (10.0 if q else 30.0)
    sample_every = a.sample_every or (2.0 if q else 10.0)
    edge = a.edge or (dur / 3 if q else 60.0)
    out = a.out or C.default_out("soak", q)
    work = os.path.join(out, "soak-work")
    os.makedirs(work, exist_ok=True)
    C.install_signal_handlers()
    C.raise_fd_limit(4096)

    rec = {"schema_version": 1, "kind": "soak", "command_line": a.command_line,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": C.machine(),
           "git": C.git_commit(),
           "params": {"duration_s": dur, "warmup_s": a.warmup, "rate": a.rate, "connections": a.connections,
                      "reload_every_s": every, "invalid_every": a.invalid_every, "sample_every_s": sample_every,
                      "edge_s": edge, "rss_tolerance": a.rss_tolerance, "fd_tolerance": a.fd_tolerance,
                      "pinning": "proxy on CPU 1 (--workers 1); loadgen and both upstreams on CPU 0"}}
    up1, up1_addr = C.start_upstream(work, "upstream1")
    up2, up2_addr = C.start_upstream(work, "upstream2")
    cfg = os.path.join(work, "proxy.toml")
    for name, text in (("A", config_a(up1_addr, up2_addr)), ("B", config_b(up1_addr, up2_addr))):
        p = os.path.join(work, f"config-{name}.toml")
        write_atomic(p, text)
        rc, msg = C.proxy_check(p)
        if rc != 0:
            raise C.Fail(f"config {name} does not pass `proxy check`: {msg}")
    for kind in INVALID_KINDS:
        p = os.path.join(work, f"config-invalid-{kind}.toml")
        write_atomic(p, invalid(kind, up1_addr, up2_addr))
        rc, msg = C.proxy_check(p)
        if rc == 0:
            raise C.Fail(f"invalid config {kind} passes `proxy check`")
        rec.setdefault("invalid_config_messages", {})[kind] = msg
    write_atomic(cfg, config_a(up1_addr, up2_addr))
    px, addr, admin = C.start_proxy(work, cfg)
    C.log(f"upstreams {up1_addr} {up2_addr}, proxy {addr} (pid {px.pid}), admin {admin}; "
          f"{dur:.0f}s at {a.rate:.0f} req/s (+{a.warmup:.0f}s warm-up), reload every {every:.0f}s")
    targets = os.path.join(work, "targets.txt")
    with open(targets, "w") as f:
        f.write("/\n/extra/x\n")

    t0 = time.monotonic()
    lg, lg_json = C.loadgen_start(work, "load", f"http://{addr}/", a.rate, dur, a.warmup, a.connections,
                                  extra=("--targets", targets))
    samples, reloads = [], []
    start_m = C.metrics(admin)

    def sample(tag=""):
        m = C.metrics(admin)
        samples.append({"t": round(time.monotonic() - t0 - a.warmup, 2), "rss_kb": C.status_kb(px.pid),
                        "fds": C.fd_count(px.pid), "threads": C.threads(px.pid),
                        "generation": int(C.metric(m, "proxy_config_generation")),
                        "client_connections": int(C.metric(m, "proxy_client_connections")),
                        "upstream_opened": int(C.metric(m, "proxy_upstream_connections_opened_total")),
                        "requests": int(C.metric_sum(m, "proxy_requests_total")), "tag": tag})

    current = "A"
    k = 0
    next_sample = t0 + a.warmup
    next_reload = t0 + a.warmup + every
    end = t0 + a.warmup + dur
    while time.monotonic() < end:
        now = time.monotonic()
        if not px.alive():
            raise C.Fail(f"proxy died (code {px.p.returncode}): {px.log_tail()}")
        if lg.p.poll() is not None:
            raise C.Fail(f"loadgen exited early (code {lg.p.returncode}): {lg.log_tail()}")
        if now >= next_sample:
            sample()
            next_sample += sample_every
        if now >= next_reload and next_reload < end - 1:
            k += 1
            next_reload += every
            reloads.append(do_reload(k, a, admin, px, cfg, current, up1_addr, up2_addr, t0))
            r = reloads[-1]
            if r["expect"] == "ok" and r["ok"]:
                current = r["config"]
            C.log(f"reload {k} ({r['method']}, {r['config']}): expected {r['expect']}, "
                  f"{'as expected' if r['ok'] else 'UNEXPECTED'}; generation {r['gen_before']} -> {r['gen_after']}")
        time.sleep(min(0.05, max(0.0, min(next_sample, next_reload, end) - time.monotonic())))
    sample("end")
    rep = C.loadgen_wait(lg, lg_json, 60)
    end_m = C.metrics(admin)
    rec["fds_after_load"] = C.fd_count(px.pid)
    rec["rss_kb_after_load"] = C.status_kb(px.pid)
    rec["vmhwm_kb"] = C.status_kb(px.pid, "VmHWM")
    px.stop()
    up1.stop()
    up2.stop()

    rec["load"] = C.trim(rep)
    rec["load_errors_per_second"] = [s["errors"] for s in rep.get("time_series", [])]
    rec["samples"] = samples
    rec["reloads"] = reloads
    rec["proxy_errors_total"] = {key: v - start_m.get(key, 0.0) for key, v in end_m.items()
                                 if key.startswith("proxy_errors_total") and v - start_m.get(key, 0.0) > 0}
    rec["proxy_requests_by_class"] = {key: v - start_m.get(key, 0.0) for key, v in end_m.items()
                                      if key.startswith("proxy_requests_total") and v - start_m.get(key, 0.0) > 0}

    checks = []

    def check(name, ok, detail):
        checks.append({"check": name, "pass": bool(ok), "detail": detail})

    errs = C.report_errors(rep)
    non200 = {s: n for s, n in rep["status_codes"].items() if s != "200"}
    check("errors", errs == 0 and not non200 and rep["counts"]["responses"] > 0,
          f"{rep['counts']['responses']} responses, {errs} errors/dropped/unsent, non-200: {non200 or 'none'}")
    bad = [r["k"] for r in reloads if not r["ok"]]
    n_valid = sum(1 for r in reloads if r["expect"] == "ok")
    check("reloads", not bad and reloads, f"{len(reloads)} reloads ({n_valid} valid applied, "
          f"{len(reloads) - n_valid} invalid rejected)" + (f"; unexpected: {bad}" if bad else ""))
    first = [s for s in samples if 0 <= s["t"] <= edge]
    last = [s for s in samples if s["t"] >= dur - edge]
    rss_f, rss_l = max(s["rss_kb"] for s in first), max(s["rss_kb"] for s in last)
    fd_f, fd_l = max(s["fds"] for s in first), max(s["fds"] for s in last)
    check("rss", rss_l <= rss_f * (1 + a.rss_tolerance),
          f"max RSS first {edge:.0f} s {rss_f} KiB, last {edge:.0f} s {rss_l} KiB "
          f"({(rss_l - rss_f) / rss_f * 100:+.1f} %, tolerance +{a.rss_tolerance * 100:.0f} %)")
    check("fds", fd_l <= fd_f + a.fd_tolerance,
          f"max fds first {edge:.0f} s {fd_f}, last {edge:.0f} s {fd_l} ({fd_l - fd_f:+d}, tolerance +{a.fd_tolerance})")
    rec["summary"] = {"checks": checks, "pass": all(c["pass"] for c in checks),
                      "rss_kb_first": rss_f, "rss_kb_last": rss_l, "fds_first": fd_f, "fds_last": fd_l}
    rec["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump(rec, f, indent=1)
    md = render(rec)
    with open(os.path.join(out, "soak.md"), "w") as f:
        f.write(md)
    print(md)
    C.log(f"wrote {out}/soak.json and soak.md: {'PASS' if rec['summary']['pass'] else 'FAIL'}")
    return 0 if rec["summary"]["pass"] else 1


def do_reload(k, a, admin, px, cfg, current, up1, up2, t0):
    """Reload number k: SIGHUP on even k, POST /reload on odd; every invalid_every-th is invalid."""
    method = "SIGHUP" if k % 2 == 0 else "POST /reload"
    if k % a.invalid_every == 0:
        kind = INVALID_KINDS[(k // a.invalid_every - 1) % len(INVALID_KINDS)]
        text, which, expect = invalid(kind, up1, up2), "invalid:" + kind, "error"
    else:
        which = "B" if current == "A" else "A"
        text = config_b(up1, up2) if which == "B" else config_a(up1, up2)
        expect = "ok"
    m0 = C.metrics(admin)
    gen0 = int(C.metric(m0, "proxy_config_generation"))
    ok0 = C.metric(m0, "proxy_config_reloads_total", result="ok")
    err0 = C.metric(m0, "proxy_config_reloads_total", result="error")
    write_atomic(cfg, text)
    t = time.monotonic()
    r = {"k": k, "t": round(t - t0 - a.warmup, 2), "method": method, "config": which, "expect": expect}
    if method == "SIGHUP":
        px.send_signal(signal.SIGHUP)
        r["http_status"] = None
    else:
        st, body = C.http(admin, "POST", "/reload")
        r["http_status"] = st
        r["http_body"] = body.decode("utf-8", "replace").strip()[:300]
    # the outcome, as the metrics show it (SIGHUP is asynchronous: wait for the counter)
    deadline = time.monotonic() + 5
    while True:
        m = C.metrics(admin)
        dok = C.metric(m, "proxy_config_reloads_total", result="ok") - ok0
        derr = C.metric(m, "proxy_config_reloads_total", result="error") - err0
        if dok + derr >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    r["took_s"] = round(time.monotonic() - t, 3)
    r["gen_before"] = gen0
    r["gen_after"] = int(C.metric(m, "proxy_config_generation"))
    r["counted"] = {"ok": int(dok), "error": int(derr)}
    r["routes_after"] = route_count(admin)
    want_routes = {"A": 1, "B": 2}
    if expect == "ok":
        r["ok"] = (dok == 1 and derr == 0 and r["gen_after"] == gen0 + 1
                   and r["routes_after"] == want_routes[which]
                   and (method == "SIGHUP" or r["http_status"] == 200))
    else:
        r["ok"] = (derr == 1 and dok == 0 and r["gen_after"] == gen0
                   and r["routes_after"] == want_routes[current]
                   and (method == "SIGHUP" or r["http_status"] == 400))
        # leave a valid file behind: the next SIGHUP must not depend on this one
        write_atomic(cfg, config_b(up1, up2) if current == "B" else config_a(up1, up2))
    return r


def render(rec):
    p, S, lg = rec["params"], rec["summary"], rec["load"]
    lat = lg["latency"]["corrected"]
    L = [f"# Soak: {p['duration_s']:.0f} s of open-loop load with reloads every {p['reload_every_s']:.0f} s "
         f"({rec['started']})", "",
         f"`{rec['command_line']}` at commit `{rec['git']['commit'][:10]}` on {rec['machine']['host']} "
         f"({rec['machine']['cpus']} CPUs; load average at start {rec['machine']['loadavg_at_start'].split()[0]}). "
         f"Load: {p['rate']:.0f} req/s open loop on {p['connections']} connections, `/` and `/extra/x` in turn, "
         f"after {p['warmup_s']:.0f} s of warm-up. {p['pinning']}.", "",
         "| load | value |", "|---|---|",
         f"| responses | {lg['counts']['responses']:,} ({lg['achieved_rate']:.0f} resp/s) |",
         f"| errors / dropped / never sent | {sum(lg['errors'].values())} / {lg['counts']['dropped']} / "
         f"{lg['counts']['unsent']} |",
         f"| status codes | {', '.join(f'{k}: {v:,}' for k, v in lg['status_codes'].items())} |",
         f"| latency P50 / P99 / P99.9 / max | {C.ms(lat['p50_us'])} / {C.ms(lat['p99_us'])} / "
         f"{C.ms(lat['p99_9_us'])} / {C.ms(lat['max_us'])} |",
         f"| generator valid | {lg['valid']} {'; '.join(lg.get('invalid_reasons') or [])} |", ""]
    rl = rec["reloads"]
    L += [f"Reloads: {len(rl)} ({sum(1 for r in rl if r['method'] == 'SIGHUP')} SIGHUP, "
          f"{sum(1 for r in rl if r['method'] != 'SIGHUP')} POST /reload; "
          f"{sum(1 for r in rl if r['expect'] == 'error')} of them invalid configs), "
          f"{sum(1 for r in rl if r['ok'])} as expected; generation "
          f"{rl[0]['gen_before'] if rl else '—'} → {rl[-1]['gen_after'] if rl else '—'}.", "",
          "| t (s) | VmRSS | fds | threads | generation | client conns | upstream conns opened (total) |",
          "|---|---|---|---|---|---|---|"]
    for s in rec["samples"]:
        L.append(f"| {s['t']:.0f} | {s['rss_kb'] / 1024:.1f} MiB | {s['fds']} | {s['threads']} | {s['generation']} | "
                 f"{s['client_connections']} | {s['upstream_opened']} |")
    L += ["", "| criterion | result | detail |", "|---|---|---|"]
    for c in S["checks"]:
        L.append(f"| {c['check']} | {'PASS' if c['pass'] else '**FAIL**'} | {c['detail']} |")
    L += ["", f"Overall: **{'PASS' if S['pass'] else 'FAIL'}**. Peak RSS (VmHWM) {rec['vmhwm_kb'] / 1024:.1f} MiB; "
          f"after the load: {rec['rss_kb_after_load'] / 1024:.1f} MiB, {rec['fds_after_load']} fds.", ""]
    return "\n".join(L)


if __name__ == "__main__":
    C.run_main(main, "soak")
