"""Shared plumbing for the reliability scripts (slowloris.py, soak.py): child processes in their
own process groups (killed on any exit), the upstream and the proxy, /proc readings (fds, RSS),
the admin API, loadgen runs and merged HdrHistograms. Python 3 standard library only."""

import datetime
import json
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from summarize import Hist  # noqa: E402  (HdrHistogram V2 decoding and merging, shared with compare)

TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
PROXY_BIN = os.environ.get("PROXY_BIN", os.path.join(TARGET_DIR, "release", "proxy"))
LOADGEN_BIN = os.environ.get("LOADGEN_BIN", os.path.join(TARGET_DIR, "release", "loadgen"))

PROXY_CPU = "1"   # docs/benchmarking.md: the proxy on CPU 1, generator + upstream (+ attacker) on CPU 0
LOAD_CPU = "0"


class Fail(Exception):
    """A failure that stops the run (setup, a dead child): exit 2. Criteria failures exit 1."""


def log(msg):
    t = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
    print(f"[{t}] {msg}", file=sys.stderr, flush=True)


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft < need:
        raise Fail(f"fd limit: need {need}, hard limit is {hard} (raise it: ulimit -Hn)")
    return soft


# ---------------------------------------------------------------- processes


class Proc:
    """A child in its own process group; stop() kills the group. Children inherit the raised
    fd limit of this process."""

    live = []

    def __init__(self, name, argv, log_path, stdout_pipe=False):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.logf = open(log_path, "wb")
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE if stdout_pipe else self.logf,
                                  stderr=self.logf, start_new_session=True)
        self.pid = self.p.pid
        Proc.live.append(self)

    def alive(self):
        return self.p.poll() is None

    def log_tail(self, n=15):
        try:
            with open(self.log_path, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def stop(self, sig=signal.SIGTERM, grace=5.0):
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.logf.close()
        if self in Proc.live:
            Proc.live.remove(self)


def kill_all():
    for p in list(Proc.live):
        try:
            p.stop(grace=2.0)
        except Exception:
            pass


def install_signal_handlers():
    def on_signal(signum, _frame):
        kill_all()
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


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


# ---------------------------------------------------------------- /proc readings


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def status_kb(pid, key="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_s(pid):
    """utime + stime of the process (all threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return None
    fields = st[st.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


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
    h = Hist()
    for r in reps:
        h.add_b64(r["histograms"]["corrected"])
    v = h.quantile(q)
    return None if v is None else v / 1000.0  # µs


# ---------------------------------------------------------------- the record


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as f:
        load = f.read().strip()
    return {"host": socket.gethostname(), "cpu_model": cpu, "cpus": os.cpu_count(),
            "kernel": platform.release(), "loadavg_at_start": load,
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
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


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
