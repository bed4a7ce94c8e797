"""A running target, started fresh from its generated config and pinned on the target CPU (or
`direct`, the upstream itself), and the upstream every target forwards to."""

import os
import socket
import time

from lib import procfs, probe
from lib.procs import Fail, Proc, free_port

from .peers import write_configs
from .spec import DESC


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


def wait_ready(proc, addr, what, timeout, ready=http_get_ok, scheme="http"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise Fail(f"{what}: exited during start-up (code {proc.p.returncode}); log {proc.log_path}:\n"
                       f"{proc.log_tail()}")
        if ready(addr):
            return
        time.sleep(0.1)
    raise Fail(f"{what}: no 200 on {scheme}://{addr}/ within {timeout:.0f}s; log {proc.log_path}:\n"
               f"{proc.log_tail()}")


class Target:
    """A running target (or `direct`, which is the upstream itself).

    Hooks for variants (the TLS comparison, comparison/tls.py): `configure(port)` returns the
    (argv, env) to run instead of write_configs', `ready(addr)` the start-up check instead of
    http_get_ok; `client_args` are added to every loadgen command against the target."""

    scheme = "http"
    client_args = ()

    def __init__(self, name, ctx, valgrind=None, for_memory=False, configure=None, ready=http_get_ok):
        self.name = name
        self.ctx = ctx
        self.proc = None
        if name == "direct":
            self.addr = ctx.up_addr
            self.pids = []
            return
        port = free_port()
        self.addr = f"127.0.0.1:{port}"
        if configure is None:
            argv, env = write_configs(ctx.cfgdir, name, port, ctx.up_addr, ctx.bins,
                                      for_valgrind=valgrind is not None, for_memory=for_memory)
        else:
            argv, env = configure(port)
        if valgrind is not None:
            argv = valgrind + argv
        argv = ["taskset", "-c", DESC["proxy_cpu"]] + argv
        self.argv, self.env = argv, env
        logp = os.path.join(ctx.logdir, f"{name}-{ctx.seq()}.log")
        self.proc = Proc(name, argv, logp, env=env)
        wait_ready(self.proc, self.addr, name, timeout=90 if valgrind else 20, ready=ready, scheme=self.scheme)
        time.sleep(0.2 if valgrind is None else 1.0)  # let nginx fork its worker, Go settle
        self.pids = procfs.tree_pids(self.proc.pid)

    @property
    def url(self):
        return f"http://{self.addr}/"

    def cpu(self):
        """((utime, stime) ticks, schedstat ns) of the target's processes."""
        try:
            return procfs.cpu_ticks(self.pids), probe.schedstat_ns(self.pids)
        except Fail:
            self.check_alive()  # a target that died says so rather than its missing /proc files
            raise

    def check_alive(self):
        if self.proc is not None and not self.proc.alive():
            raise Fail(f"{self.name}: died during the run (code {self.proc.p.returncode}); "
                       f"log {self.proc.log_path}:\n{self.proc.log_tail()}")

    def stop(self):
        if self.proc is not None:
            self.proc.stop()


def start_upstream(ctx):
    """`loadgen upstream` on the loader CPU, for the whole run; (Proc, argv)."""
    port = free_port()
    addr = f"127.0.0.1:{port}"
    argv = ["taskset", "-c", DESC["loader_cpu"], ctx.bins["loadgen"], "upstream", "--listen", addr,
            "--body-bytes", str(DESC["body_bytes"]), "--threads", "1", "--cpus", DESC["loader_cpu"]]
    proc = Proc("upstream", argv, os.path.join(ctx.logdir, "upstream.log"))
    wait_ready(proc, addr, "upstream (loadgen upstream)", timeout=20)
    ctx.up_addr = addr
    return proc, argv
