"""Shared plumbing for the reliability scripts (slowloris.py, soak.py, reload_storm.py): the
upstream and the proxy, the admin API, loadgen runs, the record. Child processes, /proc readings
and merged HdrHistograms come from scripts/lib/ (shared with compare.py; the histograms are
merged by `loadgen hist`). Python 3 standard library only."""

import datetime
import json
import os
import platform
import resource
import signal
import shlex
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from lib import bins, hist, procfs  # noqa: E402
from lib.bins import TARGET_DIR  # noqa: E402
from lib.procfs import cpu_s, fd_count, status_kb, threads  # noqa: E402,F401  (the scripts use C.<name>)
from lib.procs import Fail, Proc, install_signal_handlers, kill_all, log  # noqa: E402,F401

PROXY_BIN = bins.path("proxy")
LOADGEN_BIN = bins.path("loadgen")

PROXY_CPU = "1"   # docs/benchmarking.md: the proxy on CPU 1, generator + upstream (+ attacker) on CPU 0
LOAD_CPU = "0"


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft < need:
        raise Fail(f"fd limit: need {need}, hard limit is {hard} (raise it: ulimit -Hn)")
    return soft


# ---------------------------------------------------------------- the upstream and the proxy


def read_listening(proc, what, timeout=10.0, count=1):
    """Reads `listening ADDR` lines (and `admin listening ADDR`) from a child's stdout pipe."""
    addrs, admin = [], None
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.p.stdout.fileno(), False)
    buf = b""
    while time.monotonic() < deadline and (len(addrs) < count or admin is None and what == "proxy"):
        if not proc.alive():
            raise Fail(f"{what}: exited during start-up (code {proc.p.returncode}): {proc.log_tail()}")
        try:
            chunk = proc.p.stdout.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                proc.logf.write(line + b"\n")
                s = line.decode("utf-8", "replace").strip()
                if s.startswith("admin listening "):
                    admin = s.split()[-1]
                elif s.startswith("listening "):
                    addrs.append(s.split()[-1])
        else:
            time.sleep(0.02)
    if len(addrs) < count:
        raise Fail(f"{what}: no `listening ADDR` within {timeout:.0f}s: {proc.log_tail()}")
    # keep draining stdout so the child never blocks on a full pipe
    threading.Thread(target=_drain, args=(proc,), daemon=True).start()
    return addrs, admin


def _drain(proc):
    os.set_blocking(proc.p.stdout.fileno(), True)
    try:
        for line in proc.p.stdout:
            if not proc.logf.closed:
                proc.logf.write(line)
                proc.logf.flush()
    except (ValueError, OSError):
        pass


def start_upstream(workdir, name="upstream", body_bytes=100):
    p = Proc(name, ["taskset", "-c", LOAD_CPU, LOADGEN_BIN, "upstream", "--listen", "127.0.0.1:0",
                    "--body-bytes", str(body_bytes)], os.path.join(workdir, f"{name}.log"), stdout_pipe=True)
    addrs, _ = read_listening(p, name)
    return p, addrs[0]


def start_proxy(workdir, config_path):
    p = Proc("proxy", ["taskset", "-c", PROXY_CPU, PROXY_BIN, "--config", config_path, "--workers", "1"],
             os.path.join(workdir, "proxy.log"), stdout_pipe=True)
    addrs, admin = read_listening(p, "proxy")
    if admin is None:
        raise Fail("proxy: no `admin listening ADDR` line (the config must have [admin])")
    return p, addrs[0], admin


def proxy_check(config_path):
    r = subprocess.run([PROXY_BIN, "check", "--config", config_path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    return r.returncode, r.stdout.decode("utf-8", "replace").strip()


# ---------------------------------------------------------------- admin API


def http(addr, method, path, body=b"", timeout=5.0):
    """One request with Connection: close. (status, body bytes); raises OSError."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, rest


def metrics(admin):
    """Prometheus text -> {'name{labels}': value}."""
    status, body = http(admin, "GET", "/metrics")
    out = {}
    if status != 200:
        return out
    for line in body.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        k, _, v = line.rpartition(" ")
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


def metric(m, name, **labels):
    if not labels:
        return m.get(name, 0.0)
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return m.get(f"{name}{{{want}}}", 0.0)


def metric_sum(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


# ---------------------------------------------------------------- loadgen


def loadgen_argv(url, rate, duration_s, warmup_s, connections, json_path, extra=()):
    return ["taskset", "-c", LOAD_CPU, LOADGEN_BIN, "run", "--url", url, "--rate", str(rate),
            "--duration", f"{duration_s}s", "--warmup", f"{warmup_s}s", "--connections", str(connections),
            "--cpus", LOAD_CPU, "--timeout", "2s", "--quiet", "--json", json_path, *extra]


def loadgen_start(workdir, name, url, rate, duration_s, warmup_s, connections, extra=()):
    js = os.path.join(workdir, f"{name}.json")
    argv = loadgen_argv(url, rate, duration_s, warmup_s, connections, js, extra)
    p = Proc(name, argv, os.path.join(workdir, f"{name}.log"))
    return p, js


def loadgen_wait(p, js, timeout):
    try:
        p.p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.stop(signal.SIGKILL)
        raise Fail(f"{p.name}: loadgen did not finish within {timeout:.0f}s: {shlex.join(p.argv)}")
    p.stop()
    try:
        with open(js) as f:
            rep = json.load(f)
    except (OSError, ValueError) as e:
        raise Fail(f"{p.name}: no JSON report ({e}); exit {p.p.returncode}; log {p.log_path}:\n{p.log_tail()}")
    return rep


def loadgen_run(workdir, name, url, rate, duration_s, warmup_s, connections, extra=()):
    p, js = loadgen_start(workdir, name, url, rate, duration_s, warmup_s, connections, extra)
    return loadgen_wait(p, js, duration_s + warmup_s + 30)


def report_errors(rep):
    e = rep["errors"]
    c = rep["counts"]
    return sum(e.values()) + c.get("dropped", 0) + c.get("unsent", 0)


def trim(rep):
    """The report less its per-second series and histograms (kept separately when needed)."""
    return {k: v for k, v in rep.items() if k not in ("time_series", "histograms")}


def merged_p(reps, q):
    """The q quantile of the reports' corrected-latency histograms merged, in µs (None if empty)."""
    v = hist.quantile([r["histograms"]["corrected"] for r in reps], q)
    return None if v is None else v / 1000.0  # µs


# ---------------------------------------------------------------- the record


def machine():
    return {"host": socket.gethostname(), "cpu_model": procfs.cpu_model(), "cpus": os.cpu_count(),
            "kernel": platform.release(), "loadavg_at_start": procfs.loadavg_text(),
            "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


def git_commit():
    r = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    d = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "proxy", "loadgen"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return {"commit": r.stdout.decode().strip(), "dirty_proxy_loadgen": d.stdout.decode().strip().splitlines()}


def default_out(kind, quick):
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    if quick:
        return os.path.join(TARGET_DIR, "reliability", f"{kind}-quick")
    return os.path.join(ROOT, "results", "reliability", f"{day}-{socket.gethostname()}")


def loadavg():
    return procfs.loadavg_text().split()[:3]


def ms(us):
    return "—" if us is None else f"{us / 1000.0:.2f} ms"


def run_main(main, name):
    """Runs a script's main(): exit with its code; 2 (with a message, not a traceback) when the
    run could not be made; every child process is killed on the way out."""
    rc = 2
    try:
        rc = main()
    except Fail as e:
        log(f"{name}: error: {e}")
    except (OSError, ValueError, KeyError) as e:  # e.g. the admin API stopped answering
        log(f"{name}: error: {type(e).__name__}: {e}")
    finally:
        kill_all()
    sys.exit(rc)


def config_head(written_by):
    """The start every reliability script's proxy config shares: no file watcher, an admin API on
    a free port, no access log, one listener on a free port."""
    return f"""# written by {written_by}
[server]
watch_config = false

[admin]
address = "127.0.0.1:0"

[log]
access_log = "off"

[[listeners]]
address = "127.0.0.1:0"
"""
