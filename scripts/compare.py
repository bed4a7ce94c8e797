#!/usr/bin/env python3
"""Side-by-side comparison of this project's proxy with Traefik, nginx and HAProxy.

Called by `scripts/compare.sh` (which builds the binaries and installs the peers first); see
scripts/README.md for what is measured and what each number means. Python standard library only.

Phases (each bounded in time; every process started here is killed on exit):
  1. calibrate: Traefik's closed-loop max sets the rate grid (fixed rate = 50 % of it).
  2. rounds: for each round, each target in rotated order is started fresh, pinned on CPU 1,
     and gets: a short pre-warm, a closed-loop max run, the fixed-rate open-loop run, and an
     open-loop ladder over the grid; CPU (user/kernel) is read from /proc around every run.
  3. syscalls per request (strace -c -f, separate short run at a low fixed rate).
  4. user-space instructions per request (callgrind, zeroed after a warm-up, fixed request count).
  5. max sustainable rate under the P99 SLO (`loadgen ladder --search`), once per target.
Writes OUT/compare.json (schema_version 1), OUT/configs/, OUT/strace/, OUT/callgrind/, then
calls summarize.py for summary.md, README.md and the SVG plots.
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

SCHEMA_VERSION = 1
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The one description every target's config is written from.
DESC = {
    "body_bytes": 100,           # upstream response body
    "workers": 1,                # GOMAXPROCS=1 / worker_processes 1 / nbthread 1 / --workers 1
    "upstream_keepalive": 256,   # idle keep-alive connections to the upstream
    "access_log": False,
    "proxy_cpu": "1",            # the target under test
    "loader_cpu": "0",           # loadgen and the upstream
}

ALL_TARGETS = ["direct", "relay", "native", "hyper", "traefik", "nginx", "haproxy"]
PROXIED = [t for t in ALL_TARGETS if t != "direct"]
VALGRIND_TARGETS = ["relay", "native", "hyper", "nginx", "haproxy"]  # Go does not run under valgrind

MODES = {
    # durations in seconds
    "quick": dict(rounds=1, calib_runs=1, calib_s=1.5, prewarm_s=0.3, closed_s=1.5, fixed_s=2.0,
                  step_s=0.7, ladder=[0.1, 0.5, 0.9, 2.0, 4.0],
                  strace_rate=2000, strace_s=1.5, cg_rate=500, cg_s=2.0,
                  search_step_s=0.7, search_warmup_s=0.2, search_precision=0.2, budget_s=300),
    "full": dict(rounds=5, calib_runs=3, calib_s=2.0, prewarm_s=0.5, closed_s=3.0, fixed_s=4.0,
                 step_s=1.0, ladder=[0.1, 0.3, 0.5, 0.7, 0.9, 1.25, 1.75, 2.5, 3.5, 5.0],
                 strace_rate=2000, strace_s=4.0, cg_rate=500, cg_s=6.0,
                 search_step_s=1.0, search_warmup_s=0.3, search_precision=0.1, budget_s=1200),
}

CONNECTIONS = 50          # loadgen connections for every timed run (like wrk -c50; docs/benchmarking.md)
CG_CONNECTIONS = 8        # callgrind and strace runs: moderate rate, few connections
REQ_TIMEOUT = "2s"        # per-request timeout: bounds the drain of an overloaded open-loop run
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Fail(Exception):
    """A failure that names what failed; exits non-zero."""


def log(msg):
    t = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
    print(f"[{t}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


class Proc:
    """A child in its own process group, killed (group-wide) on stop or on exit."""

    live = []

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.logf = open(log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.env = env or {}
        self.p = subprocess.Popen(argv, stdout=self.logf, stderr=subprocess.STDOUT, env=full_env,
                                  cwd=cwd, start_new_session=True)
        self.pid = self.p.pid
        Proc.live.append(self)

    def alive(self):
        return self.p.poll() is None

    def log_tail(self, n=15):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, grace=5.0):
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(timeout=5)
        # the group may hold children that outlived the leader (nginx workers)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.logf.close()
        if self in Proc.live:
            Proc.live.remove(self)


def kill_all():
    for p in list(RUNNING):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in list(Proc.live):
        try:
            p.stop(grace=2.0)
        except Exception:
            pass


def on_signal(signum, _frame):
    kill_all()
    sys.exit(128 + signum)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get_ok(addr, timeout=1.0):
    """One GET / with Connection: close; True when a 200 with the expected body came back."""
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    head, _, body = data.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 200") and len(body) == DESC["body_bytes"]


def wait_ready(proc, addr, what, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise Fail(f"{what}: exited during start-up (code {proc.p.returncode}); log {proc.log_path}:\n"
                       f"{proc.log_tail()}")
        if http_get_ok(addr):
            return
        time.sleep(0.1)
    raise Fail(f"{what}: no 200 on http://{addr}/ within {timeout:.0f}s; log {proc.log_path}:\n"
               f"{proc.log_tail()}")


def tree_pids(root):
    """root and its descendants (nginx: master + worker)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return sorted(out)


def cpu_ticks(pids):
    """(utime, stime) in clock ticks summed over pids (all threads of each)."""
    u = s = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        u += int(fields[11])
        s += int(fields[12])
    return u, s


def sched_ns(pids):
    """Time on CPU in ns (schedstat) summed over every live thread of pids: finer than ticks."""
    t = 0
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                    t += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return t


def mem_kb(pids):
    """(VmHWM, VmRSS) in KiB summed over pids."""
    hwm = rss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
        except OSError:
            continue
    return hwm, rss


RUNNING = set()  # short-lived children (loadgen runs, callgrind_control): killed on exit too


def run_cmd(argv, timeout, what):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    RUNNING.add(p)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise Fail(f"{what}: timed out after {timeout:.0f}s: {shlex.join(argv)}")
    finally:
        RUNNING.discard(p)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def version_of(argv):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
        return r.stdout.decode("utf-8", "replace").strip().splitlines()[0]
    except Exception as e:  # a missing tool is recorded, not fatal, for optional tools
        return f"unavailable ({e})"


# ---------------------------------------------------------------- configs


def write_configs(cfgdir, name, port, up_addr, for_valgrind=False):
    """Write `name`'s config for listen port `port` and upstream `up_addr`; return its argv+env."""
    d = os.path.join(cfgdir, name + ("-valgrind" if for_valgrind else ""))
    os.makedirs(d, exist_ok=True)
    listen = f"127.0.0.1:{port}"
    ka = DESC["upstream_keepalive"]
    if name in ("native", "hyper"):
        path = os.path.join(d, "proxy.toml")
        with open(path, "w") as f:
            f.write(f"""# written by scripts/compare.py from its one description
[server]
workers = {DESC['workers']}
{proxy_extra_keys(d)}
[[listeners]]
address = "{listen}"

[[routes]]
path_prefix = "/"
upstream = "x"

[upstreams.x]
servers = ["{up_addr}"]
idle_pool_size = {ka}
""")
        return [PROXY_BIN, "--config", path, "--workers", str(DESC["workers"]), "--engine", name], {}
    if name == "relay":
        return [LOADGEN_BIN, "relay", "--listen", listen, "--upstream", up_addr, "--threads", "1",
                "--cpus", DESC["proxy_cpu"]], {}
    if name == "traefik":
        dyn = os.path.join(d, "dynamic.yml")
        with open(dyn, "w") as f:
            f.write(f"""# written by scripts/compare.py from its one description
http:
  routers:
    r:
      rule: "PathPrefix(`/`)"
      entryPoints: [web]
      service: s
  services:
    s:
      loadBalancer:
        servers:
          - url: "http://{up_addr}"
""")
        static = os.path.join(d, "traefik.yml")
        with open(static, "w") as f:
            f.write(f"""# written by scripts/compare.py from its one description
global:
  checkNewVersion: false
  sendAnonymousUsage: false
log:
  level: ERROR
serversTransport:
  maxIdleConnsPerHost: {ka}
entryPoints:
  web:
    address: "{listen}"
providers:
  file:
    filename: "{dyn}"
    watch: false
""")
        return [TRAEFIK_BIN, f"--configFile={static}"], {"GOMAXPROCS": str(DESC["workers"])}
    if name == "nginx":
        os.makedirs(os.path.join(d, "logs"), exist_ok=True)
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        path = os.path.join(d, "nginx.conf")
        master = "master_process off;\n" if for_valgrind else ""
        with open(path, "w") as f:
            f.write(f"""# written by scripts/compare.py from its one description
{master}worker_processes {DESC['workers']};
error_log {d}/logs/error.log error;
pid {d}/nginx.pid;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    keepalive_requests 10000000;
    upstream up {{
        server {up_addr};
        keepalive {ka};
        keepalive_requests 10000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
        return [NGINX_BIN, "-p", d, "-c", path, "-g", "daemon off;"], {}
    if name == "haproxy":
        path = os.path.join(d, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(f"""# written by scripts/compare.py from its one description
global
    nbthread {DESC['workers']}
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind {listen}
    default_backend be

backend be
    http-reuse always
    server s1 {up_addr} pool-max-conn {ka}
""")
        return [HAPROXY_BIN, "-db", "-f", path], {}
    raise ValueError(name)


_PROXY_EXTRA = None


def proxy_extra_keys(d):
    """Keys that make the proxy match the peers' setup (no config-file watcher, access log off),
    kept only if this proxy build knows them (older builds reject unknown keys)."""
    global _PROXY_EXTRA
    if _PROXY_EXTRA is None:
        extra = 'watch_config = false\n\n[log]\naccess_log = "off"\n'
        probe = os.path.join(d, "probe.toml")
        with open(probe, "w") as f:
            f.write(f'[server]\n{extra}\n[[listeners]]\naddress = "127.0.0.1:0"\n\n[[routes]]\n'
                    f'path_prefix = "/"\nupstream = "x"\n\n[upstreams.x]\nservers = ["127.0.0.1:9"]\n')
        r = subprocess.run([PROXY_BIN, "check", "--config", probe], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        os.unlink(probe)
        _PROXY_EXTRA = extra if r.returncode == 0 else ""
    return _PROXY_EXTRA


class Target:
    """A running target (or `direct`, which is the upstream itself)."""

    def __init__(self, name, ctx, valgrind=None):
        self.name = name
        self.ctx = ctx
        self.proc = None
        if name == "direct":
            self.addr = ctx.up_addr
            self.pids = []
            return
        port = free_port()
        self.addr = f"127.0.0.1:{port}"
        argv, env = write_configs(ctx.cfgdir, name, port, ctx.up_addr, for_valgrind=valgrind is not None)
        if valgrind is not None:
            argv = valgrind + argv
        argv = ["taskset", "-c", DESC["proxy_cpu"]] + argv
        self.argv, self.env = argv, env
        logp = os.path.join(ctx.logdir, f"{name}-{ctx.seq()}.log")
        self.proc = Proc(name, argv, logp, env=env)
        wait_ready(self.proc, self.addr, name, timeout=90 if valgrind else 20)
        time.sleep(0.2 if valgrind is None else 1.0)  # let nginx fork its worker, Go settle
        self.pids = tree_pids(self.proc.pid)

    @property
    def url(self):
        return f"http://{self.addr}/"

    def cpu(self):
        return cpu_ticks(self.pids), sched_ns(self.pids)

    def check_alive(self):
        if self.proc is not None and not self.proc.alive():
            raise Fail(f"{self.name}: died during the run (code {self.proc.p.returncode}); "
                       f"log {self.proc.log_path}:\n{self.proc.log_tail()}")

    def stop(self):
        if self.proc is not None:
            self.proc.stop()


# ---------------------------------------------------------------- loadgen


def trim_report(rep):
    """Keep what the summary and a later reader need; drop the bulky per-second series."""
    keep = {k: rep.get(k) for k in ("valid", "invalid_reasons", "target_rate", "sent_rate",
                                    "achieved_rate", "counts", "status_codes", "errors",
                                    "error_causes", "latency")}
    keep["histogram_corrected"] = rep.get("histograms", {}).get("corrected")
    return keep


def loadgen_run(ctx, target, what, *, closed=False, rate=None, duration, warmup=0.0,
                connections=CONNECTIONS):
    """Run loadgen against target, reading the target's CPU from /proc before and after."""
    jpath = os.path.join(ctx.tmpdir, f"lg-{ctx.seq()}.json")
    argv = ["taskset", "-c", DESC["loader_cpu"], LOADGEN_BIN, "run", "--url", target.url,
            "--duration", f"{duration}s", "--warmup", f"{warmup}s", "--connections", str(connections),
            "--cpus", DESC["loader_cpu"], "--timeout", REQ_TIMEOUT, "--json", jpath, "--quiet",
            "--allow-invalid"]
    if closed:
        argv.append("--closed")
    else:
        argv += ["--rate", str(int(round(rate)))]
    c0 = target.cpu()
    t0 = time.monotonic()
    r = run_cmd(argv, timeout=duration + warmup + 30, what=f"loadgen against {target.name} ({what})")
    t1 = time.monotonic()
    c1 = target.cpu()
    if r.returncode != 0 or not os.path.exists(jpath):
        target.check_alive()
        raise Fail(f"loadgen against {target.name} ({what}) failed with code {r.returncode}: "
                   f"{r.stderr.decode('utf-8', 'replace').strip()[-800:]}")
    with open(jpath) as f:
        rep = json.load(f)
    os.unlink(jpath)
    target.check_alive()
    out = trim_report(rep)
    # requests the target handled: every response (warmup 0, so the window is the whole run),
    # plus errored requests (they cost the target CPU too)
    nreq = rep["counts"]["responses"]
    out["requests_handled"] = nreq
    out["wall_s"] = t1 - t0
    if target.pids:
        du, ds = (c1[0][0] - c0[0][0]) / CLK_TCK, (c1[0][1] - c0[0][1]) / CLK_TCK
        dn = (c1[1] - c0[1]) / 1e9
        out["cpu"] = {"user_s": du, "sys_s": ds, "ticks_per_s": CLK_TCK,
                      "util": (du + ds) / max(t1 - t0, 1e-9),
                      "us_per_req_user": du / max(nreq, 1) * 1e6,
                      "us_per_req_sys": ds / max(nreq, 1) * 1e6,
                      "us_per_req": (du + ds) / max(nreq, 1) * 1e6,
                      "sched_s": dn, "sched_us_per_req": dn / max(nreq, 1) * 1e6}
    return out


def overloaded(step):
    lat = step["latency"]["corrected"]
    errs = sum((step.get("errors") or {}).values())
    return (step["achieved_rate"] < 0.9 * step["target_rate"] or lat["p99_us"] > 500_000
            or errs > 0.01 * max(step["counts"]["scheduled"], 1))


# ---------------------------------------------------------------- phases


class Ctx:
    def __init__(self, out, mode, params):
        self.out = out
        self.mode = mode
        self.p = params
        self.cfgdir = os.path.join(out, "configs")
        self.work = os.path.join(ROOT, "target", "compare-work", os.path.basename(out.rstrip("/")))
        self.logdir = os.path.join(self.work, "logs")
        self.tmpdir = os.path.join(self.work, "tmp")
        for d in (self.cfgdir, self.logdir, self.tmpdir):
            os.makedirs(d, exist_ok=True)
        self._seq = 0
        self.up_addr = None

    def seq(self):
        self._seq += 1
        return self._seq


def start_upstream(ctx):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    argv = ["taskset", "-c", DESC["loader_cpu"], LOADGEN_BIN, "upstream", "--listen", addr,
            "--body-bytes", str(DESC["body_bytes"]), "--threads", "1", "--cpus", DESC["loader_cpu"]]
    proc = Proc("upstream", argv, os.path.join(ctx.logdir, "upstream.log"))
    wait_ready(proc, addr, "upstream (loadgen upstream)", timeout=20)
    ctx.up_addr = addr
    return proc, argv


def calibrate(ctx, record):
    p = ctx.p
    if ctx.args.rate_base:
        record["calibration"] = {"rate_base": ctx.args.rate_base, "source": "--rate-base"}
        return ctx.args.rate_base
    log("calibrate: Traefik closed-loop max sets the rate grid")
    t = Target("traefik", ctx)
    try:
        loadgen_run(ctx, t, "calibration warm-up", closed=True, duration=1.0)
        runs = [loadgen_run(ctx, t, "calibration", closed=True, duration=p["calib_s"])
                for _ in range(p["calib_runs"])]
    finally:
        t.stop()
    rates = [r["achieved_rate"] for r in runs]
    base = sorted(rates)[len(rates) // 2]
    record["calibration"] = {"source": "traefik closed-loop, median", "runs_rps": rates,
                             "rate_base": base}
    log(f"calibrate: Traefik max {', '.join(f'{x:.0f}' for x in rates)} req/s -> base {base:.0f}")
    return base


def one_target_round(ctx, name, grid, fixed_rate):
    p = ctx.p
    t = Target(name, ctx)
    res = {"target": name, "pids": t.pids, "command": shlex.join(getattr(t, "argv", []) or []),
           "env": getattr(t, "env", {})}
    try:
        loadgen_run(ctx, t, "pre-warm", closed=True, duration=p["prewarm_s"])
        res["closed"] = loadgen_run(ctx, t, "closed max", closed=True, duration=p["closed_s"])
        res["fixed"] = loadgen_run(ctx, t, "fixed rate", rate=fixed_rate, duration=p["fixed_s"])
        steps = []
        stop_reason = None
        for frac, rate in grid:
            if stop_reason:
                steps.append({"frac": frac, "rate": rate, "skipped": stop_reason})
                continue
            if frac == 0.5:
                s = dict(res["fixed"])  # the fixed-rate run is the 50 % step
                s["same_as_fixed"] = True
            else:
                s = loadgen_run(ctx, t, f"ladder {rate:.0f}/s", rate=rate, duration=p["step_s"])
            s["frac"], s["rate"] = frac, rate
            steps.append(s)
            if overloaded(s):
                stop_reason = f"overloaded at {rate:.0f} req/s"
        res["ladder"] = steps
        if t.pids:
            res["vm_hwm_kb"], res["vm_rss_kb"] = mem_kb(t.pids)
        res["pids"] = t.pids
    finally:
        t.stop()
    c = res["closed"]
    msg = f"  {name:8s} max {c['achieved_rate']:8.0f} req/s"
    if "cpu" in c:
        msg += (f"  cpu/req max {c['cpu']['us_per_req']:6.1f} us  fixed {res['fixed']['cpu']['us_per_req']:6.1f} us"
                f"  rss {res['vm_hwm_kb'] / 1024:.1f} MB")
    msg += f"  p99@fixed {res['fixed']['latency']['corrected']['p99_us'] / 1000:.2f} ms"
    log(msg)
    return res


def strace_phase(ctx, record, targets):
    p = ctx.p
    out = {}
    sdir = os.path.join(ctx.out, "strace")
    os.makedirs(sdir, exist_ok=True)
    for name in targets:
        if name == "direct":
            continue
        log(f"strace: {name}")
        t = Target(name, ctx)
        try:
            loadgen_run(ctx, t, "pre-warm", closed=True, duration=p["prewarm_s"])
            opath = os.path.join(sdir, f"{name}.txt")
            argv = ["strace", "-c", "-f", "-o", opath]
            for pid in t.pids:
                argv += ["-p", str(pid)]
            st = Proc("strace", argv, os.path.join(ctx.logdir, f"strace-{name}.log"))
            time.sleep(1.0)  # attach to every thread
            if not st.alive():
                raise Fail(f"strace on {name}: exited early: {st.log_tail()}")
            run = loadgen_run(ctx, t, "strace", rate=p["strace_rate"], duration=p["strace_s"],
                              connections=CG_CONNECTIONS)
            st.stop(sig=signal.SIGINT, grace=10.0)
            calls = parse_strace(opath)
        finally:
            t.stop()
        n = run["requests_handled"]
        total = calls.pop("total", sum(calls.values()))
        out[name] = {"requests": n, "rate": p["strace_rate"], "connections": CG_CONNECTIONS,
                     "total_calls": total,
                     "per_request": total / max(n, 1),
                     "by_syscall_per_request": {k: v / max(n, 1) for k, v in
                                                sorted(calls.items(), key=lambda kv: -kv[1])},
                     "file": f"strace/{name}.txt", "valid": run["valid"]}
        log(f"  {name:8s} {total / max(n, 1):5.2f} syscalls/request ({n} requests)")
    record["syscalls"] = out


def parse_strace(path):
    calls = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 5 or not parts[-1].replace("_", "").replace("64", "").isalnum():
                continue
            if parts[0].startswith("%") or parts[0].startswith("-"):
                continue
            name = parts[-1]
            # columns: %time seconds usecs/call calls [errors] syscall
            try:
                calls[name] = int(parts[3])
            except ValueError:
                continue
    return calls


def callgrind_phase(ctx, record, targets):
    p = ctx.p
    out = {}
    cdir = os.path.join(ctx.out, "callgrind")
    os.makedirs(cdir, exist_ok=True)
    for name in targets:
        if name == "direct":
            continue
        if name not in VALGRIND_TARGETS:
            out[name] = {"measured": False,
                         "reason": "Go binaries do not run under valgrind (callgrind crashes on Go's runtime)"}
            continue
        log(f"callgrind: {name}")
        cgout = os.path.join(ctx.tmpdir, f"callgrind.{name}.out")
        for f in os.listdir(ctx.tmpdir):
            if f.startswith(f"callgrind.{name}.out"):
                os.unlink(os.path.join(ctx.tmpdir, f))
        vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cgout}", "--vgdb=yes"]
        t = Target(name, ctx, valgrind=vg)
        try:
            vg_pid = t.proc.pid  # taskset execs valgrind: same pid
            loadgen_run(ctx, t, "callgrind warm-up", rate=p["cg_rate"], duration=1.0,
                        connections=CG_CONNECTIONS)
            r = run_cmd(["callgrind_control", "-z", str(vg_pid)], 60, f"callgrind_control -z on {name}")
            if r.returncode != 0:
                raise Fail(f"callgrind on {name}: zeroing failed: {r.stdout.decode()} {r.stderr.decode()}")
            run = loadgen_run(ctx, t, "callgrind", rate=p["cg_rate"], duration=p["cg_s"],
                              connections=CG_CONNECTIONS)
            r = run_cmd(["callgrind_control", "-d", str(vg_pid)], 60, f"callgrind_control -d on {name}")
            if r.returncode != 0:
                raise Fail(f"callgrind on {name}: dump failed: {r.stdout.decode()} {r.stderr.decode()}")
            time.sleep(0.5)
        finally:
            t.stop()
        dumps = sorted(f for f in os.listdir(ctx.tmpdir) if f.startswith(f"callgrind.{name}.out."))
        if not dumps:
            raise Fail(f"callgrind on {name}: no dump file written")
        dump = os.path.join(ctx.tmpdir, dumps[0])
        ir = callgrind_total(dump)
        n = run["requests_handled"]
        top = callgrind_self_by_fn(dump)
        with open(os.path.join(cdir, f"{name}.txt"), "w") as f:
            f.write(f"# {name}: callgrind, {n} requests at {p['cg_rate']}/s on {CG_CONNECTIONS} connections after a\n"
                    f"# 1 s warm-up; counters zeroed before (callgrind_control -z), dumped after (-d).\n"
                    f"# Ir total {ir:,} = {ir / max(n, 1):,.0f} per request. Self cost by function (inlined code\n"
                    f"# counts in its caller), top 40:\n")
            f.write(f"# {'Ir':>14} {'Ir/request':>10} {'share':>6}  function\n")
            for fn, c in top[:40]:
                f.write(f"{c:>16,} {c / max(n, 1):>10,.0f} {c / max(ir, 1) * 100:>5.1f}%  {fn}\n")
        out[name] = {"measured": True, "requests": n, "rate": p["cg_rate"], "ir_total": ir,
                     "ir_per_request": ir / max(n, 1), "valid": run["valid"],
                     "errors": run["errors"], "file": f"callgrind/{name}.txt",
                     "top_self": [{"fn": fn, "ir_per_request": c / max(n, 1)} for fn, c in top[:15]]}
        log(f"  {name:8s} {ir / max(n, 1):8.0f} instructions/request ({n} requests)")
    record["callgrind"] = out


def callgrind_total(path):
    with open(path) as f:
        for line in f:
            m = re.match(r"^(summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(2))
    raise Fail(f"callgrind: no totals in {path}")


def callgrind_self_by_fn(path):
    """Self cost (Ir) per function from a callgrind dump, largest first.

    callgrind_annotate puts the whole cost on the frames that were live when the counters were
    zeroed (clone, start_thread, ...), so the dump is read here: a cost line counts for the
    current fn=, except the line after calls=, which is the cost of that call (inclusive).
    """
    names, selfc = {}, {}
    cur, after_calls = None, False

    def name_of(spec):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", spec)
        if not m:
            return spec.strip()
        if m.group(2):
            names[m.group(1)] = m.group(2).strip()
        return names.get(m.group(1), spec)

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if after_calls:
                    after_calls = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and cur is not None:
                    selfc[cur] = selfc.get(cur, 0) + int(parts[1])
            elif line.startswith("fn="):
                cur = name_of(line[3:])
            elif line.startswith("cfn="):
                name_of(line[4:])
            elif line.startswith("calls="):
                after_calls = True
    return sorted(selfc.items(), key=lambda kv: -kv[1])


def search_phase(ctx, record, targets, grid_hint):
    p = ctx.p
    out = {}
    for name in targets:
        t = Target(name, ctx)
        try:
            loadgen_run(ctx, t, "pre-warm", closed=True, duration=p["prewarm_s"])
            start = max(500, int(grid_hint.get(name) or 500))
            jpath = os.path.join(ctx.tmpdir, f"ladder-{name}.json")
            argv = ["taskset", "-c", DESC["loader_cpu"], LOADGEN_BIN, "ladder", "--url", t.url,
                    "--search", "--start-rate", str(start), "--slo-p99", f"{ctx.args.slo_ms}ms",
                    "--precision", str(p["search_precision"]), "--duration", f"{p['search_step_s']}s",
                    "--warmup", f"{p['search_warmup_s']}s", "--connections", str(CONNECTIONS),
                    "--cpus", DESC["loader_cpu"], "--timeout", REQ_TIMEOUT, "--json", jpath]
            r = run_cmd(argv, timeout=240, what=f"loadgen ladder on {name}")
            t.check_alive()
        finally:
            t.stop()
        if not os.path.exists(jpath):
            raise Fail(f"loadgen ladder on {name} wrote no report (code {r.returncode}): "
                       f"{r.stderr.decode('utf-8', 'replace')[-500:]}")
        with open(jpath) as f:
            rep = json.load(f)
        out[name] = {"start_rate": start, "exit_code": r.returncode, "report": rep}
        log(f"  {name:8s} max sustainable under P99 {ctx.args.slo_ms} ms: "
            f"{rep.get('max_sustainable_rate')} req/s")
    record["slo_search"] = out


# ---------------------------------------------------------------- main


def machine_info():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as f:
        load = f.read().strip()
    return {"host": socket.gethostname(), "cpu_model": cpu, "cpus": os.cpu_count(),
            "kernel": platform.release(), "kernel_full": " ".join(platform.uname()),
            "loadavg_at_start": load}


def git_info():
    def g(*a):
        r = subprocess.run(["git", "-C", ROOT] + list(a), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return r.stdout.decode().strip()
    return {"commit": g("rev-parse", "HEAD"),
            "dirty_paths_proxy_loadgen": g("status", "--porcelain", "--", "proxy", "loadgen").splitlines()}


def tool_versions():
    return {
        "proxy": version_of([PROXY_BIN, "--version"]),
        "loadgen": version_of([LOADGEN_BIN, "--version"]),
        "traefik": version_of([TRAEFIK_BIN, "version"]),
        "nginx": version_of([NGINX_BIN, "-v"]),
        "haproxy": version_of([HAPROXY_BIN, "-v"]),
        "valgrind": version_of(["valgrind", "--version"]),
        "strace": version_of(["strace", "-V"]),
        "python": sys.version.split()[0],
        "rustc": version_of(["rustc", "--version"]),
    }


def main():
    global PROXY_BIN, LOADGEN_BIN, TRAEFIK_BIN, NGINX_BIN, HAPROXY_BIN
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one short round (< 5 min), for checking")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (full: 5, quick: 1)")
    ap.add_argument("--out", help="results folder (full: results/compare/<date>-<host>; quick: target/compare/...)")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS),
                    help="comma-separated subset of " + ",".join(ALL_TARGETS))
    ap.add_argument("--slo-ms", type=float, default=5.0, help="P99 SLO for the max sustainable rate")
    ap.add_argument("--rate-base", type=float, help="skip calibration: use this as Traefik's max req/s")
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: strace,callgrind,search")
    ap.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    PROXY_BIN = os.environ["PROXY_BIN"]
    LOADGEN_BIN = os.environ["LOADGEN_BIN"]
    TRAEFIK_BIN = os.environ["TRAEFIK_BIN"]
    NGINX_BIN = os.environ.get("NGINX_BIN", shutil.which("nginx") or "/usr/sbin/nginx")
    HAPROXY_BIN = os.environ.get("HAPROXY_BIN", shutil.which("haproxy") or "/usr/sbin/haproxy")

    mode = "quick" if args.quick else "full"
    params = dict(MODES[mode])
    if args.rounds:
        params["rounds"] = args.rounds
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in ALL_TARGETS:
            ap.error(f"unknown target {t!r} (known: {', '.join(ALL_TARGETS)})")
    skip = set(x for x in args.skip.split(",") if x)

    now = datetime.datetime.now(datetime.timezone.utc)
    host = socket.gethostname().split(".")[0]
    if args.out:
        out = os.path.abspath(args.out)
    elif args.quick:
        out = os.path.join(ROOT, "target", "compare", f"{now:%Y-%m-%d}-{host}-quick")
    else:
        out = os.path.join(ROOT, "results", "compare", f"{now:%Y-%m-%d}-{host}")
    if os.path.exists(os.path.join(out, "compare.json")) and not args.quick:
        raise Fail(f"{out} already holds a run: pass --out DIR for a new one")
    os.makedirs(out, exist_ok=True)

    ctx = Ctx(out, mode, params)
    ctx.args = args
    atexit.register(kill_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    t_start = time.monotonic()
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": "compare",
        "meta": {
            "command_line": args.command_line or shlex.join(sys.argv),
            "start_time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "mode": mode, "params": params, "targets": targets, "description": DESC,
            "connections": CONNECTIONS, "callgrind_connections": CG_CONNECTIONS,
            "request_timeout": REQ_TIMEOUT, "slo_p99_ms": args.slo_ms,
            "loadgen_command": (f"taskset -c {DESC['loader_cpu']} LOADGEN run --url URL --duration D "
                                f"--warmup 0s --connections N --cpus {DESC['loader_cpu']} --timeout "
                                f"{REQ_TIMEOUT} --json F --quiet --allow-invalid (--closed | --rate R)"),
            "pinning": {"target": f"CPU {DESC['proxy_cpu']} (taskset)",
                        "loadgen_and_upstream": f"CPU {DESC['loader_cpu']} (taskset + --cpus)"},
            "machine": machine_info(), "git": git_info(), "versions": tool_versions(),
            "binaries_note": os.environ.get("BINARIES_NOTE", ""),
            "binaries": {"proxy": PROXY_BIN, "loadgen": LOADGEN_BIN, "traefik": TRAEFIK_BIN,
                         "nginx": NGINX_BIN, "haproxy": HAPROXY_BIN},
        },
    }
    log(f"compare: {mode} mode, {params['rounds']} round(s), targets {', '.join(targets)}; out {out}")

    up, up_argv = start_upstream(ctx)
    record["meta"]["upstream_command"] = shlex.join(up_argv)
    if "traefik" in targets or args.rate_base:
        base = calibrate(ctx, record)
    else:
        raise Fail("traefik is not in --targets: pass --rate-base N (the grid is relative to Traefik's max)")
    grid = [(f, base * f) for f in params["ladder"]]
    fixed_rate = base * 0.5
    record["grid"] = {"rate_base": base, "fixed_rate": fixed_rate,
                      "steps": [{"frac": f, "rate": r} for f, r in grid]}

    rounds = []
    for i in range(params["rounds"]):
        order = targets[i % len(targets):] + targets[:i % len(targets)]
        log(f"round {i + 1}/{params['rounds']}: {' '.join(order)}")
        rr = {"round": i + 1, "order": order, "started": time.time(), "results": {}}
        for name in order:
            if not up.alive():
                raise Fail(f"upstream died: {up.log_tail()}")
            rr["results"][name] = one_target_round(ctx, name, grid, fixed_rate)
        rounds.append(rr)
        record["rounds"] = rounds
        write_json(out, record)  # keep what is done if a later phase fails
    record["rounds"] = rounds

    if "strace" not in skip:
        strace_phase(ctx, record, targets)
        write_json(out, record)
    if "callgrind" not in skip:
        callgrind_phase(ctx, record, targets)
        write_json(out, record)
    if "search" not in skip:
        elapsed = time.monotonic() - t_start
        est = 25 * len(targets) * params["search_step_s"] * 1.2
        if elapsed + est > params["budget_s"] * 0.97:
            record["slo_search"] = {"skipped": f"time budget: {elapsed:.0f}s used, ~{est:.0f}s needed"}
            log("search: skipped (time budget)")
        else:
            # start each search at the highest grid step that passed the SLO in round 1
            hint = {}
            for name, res in rounds[0]["results"].items():
                ok = [s["rate"] for s in res["ladder"] if "skipped" not in s and s["valid"]
                      and s["latency"]["corrected"]["p99_us"] <= args.slo_ms * 1000
                      and sum(s["errors"].values()) == 0]
                hint[name] = ok[-1] if ok else 500
            log(f"search: loadgen ladder --search, P99 SLO {args.slo_ms} ms")
            search_phase(ctx, record, targets, hint)
        write_json(out, record)

    up.stop()
    record["meta"]["end_time"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    record["meta"]["elapsed_s"] = time.monotonic() - t_start
    with open("/proc/loadavg") as f:
        record["meta"]["machine"]["loadavg_at_end"] = f.read().strip()
    write_json(out, record)
    log(f"done in {record['meta']['elapsed_s']:.0f}s; summarizing")
    r = subprocess.run([sys.executable, os.path.join(HERE, "summarize.py"), out])
    if r.returncode != 0:
        raise Fail("summarize.py failed")
    print(os.path.join(out, "summary.md"))


def write_json(out, record):
    tmp = os.path.join(out, "compare.json.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, separators=(",", ":"))
    os.replace(tmp, os.path.join(out, "compare.json"))


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        kill_all()
        print(f"compare: error: {e}", file=sys.stderr)
        sys.exit(1)
