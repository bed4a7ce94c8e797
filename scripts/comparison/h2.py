"""The HTTP/2 comparison's targets (scripts/compare-h2.sh): each one's config is the cleartext
comparison's (peers.write_configs: one worker, keep-alive to the upstream, access logs off),
with the TLS comparison's termination (tls.write_tls_configs: the same certificate for every
target) where the family is TLS, and only what HTTP/2 needs added:

family "tls" (TLS + HTTP/2 from the client, HTTP/1.1 to the origin):
- native: `[listeners.tls]` (ALPN h2 is on by default: `tls.http2`), upstream HTTP/1.1;
- relay: `loadgen relay --h2 --tls --upstream-http1` — the floor: each stream becomes one
  HTTP/1.1 request on a keep-alive connection from a pool per client connection, the same
  origin leg as every other target's;
- traefik: router `tls: {}` (Go's server offers h2 by ALPN), `http://` server (HTTP/1.1);
- nginx: `listen ... ssl http2;` (1.22 syntax), `proxy_pass` HTTP/1.1 keep-alive as before;
- haproxy: `bind ... ssl crt ... alpn h2,http/1.1`, HTTP/1.1 server with `http-reuse always`.

family "h2c" (gRPC-style: h2c prior knowledge from the client, h2c to the origin, which answers
with trailers, `loadgen upstream --trailers`; `trailers_check` says whether each target relayed
them):
- native: listener `h2c = true`, upstream group `protocol = "h2c"`;
- relay: `loadgen relay --h2` (h2c in, one h2c connection to the origin per client connection);
- traefik: entryPoint as is (Traefik serves h2c on cleartext entryPoints), server `h2c://`;
- nginx: `listen ... http2;`, `grpc_pass grpc://up;` (keep-alive upstream block as before);
- haproxy: `bind ... proto h2`, `server ... proto h2`.
"""

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from lib.procs import Fail

from .peers import write_configs
from .spec import DESC
from .targets import Target
from .tls import SERVER_NAME, _patch, write_tls_configs

H2_TARGETS = ["relay", "native", "traefik", "nginx", "haproxy"]
FAMILIES = ["tls", "h2c"]
MARK = "# HTTP/2 added by scripts/comparison/h2.py\n"


def write_h2_configs(cfgdir, family, name, port, up_addr, bins, cert):
    """`name`'s config for `family` under cfgdir/<family>/; returns argv, env."""
    d0 = os.path.join(cfgdir, family)
    os.makedirs(d0, exist_ok=True)
    listen = f"127.0.0.1:{port}"
    d = os.path.join(d0, name)
    if family == "tls":
        argv, env = write_tls_configs(d0, name, port, up_addr, bins, cert)
        if name == "relay":
            return argv + ["--h2", "--upstream-http1"], env
        if name == "native":
            # tls.http2 defaults to true; said explicitly so the config reads as what it measures
            _patch(os.path.join(d, "proxy.toml"), "[listeners.tls]\n", f"[listeners.tls]\n{MARK}http2 = true\n")
        elif name == "nginx":
            _patch(os.path.join(d, "nginx.conf"), f"listen {listen} ssl;\n", f"listen {listen} ssl http2;  {MARK}")
        elif name == "haproxy":
            _patch(os.path.join(d, "haproxy.cfg"), "alpn http/1.1\n", f"alpn h2,http/1.1\n    {MARK}")
        return argv, env
    if family != "h2c":
        raise ValueError(family)
    argv, env = write_configs(d0, name, port, up_addr, bins)
    ka = DESC["upstream_keepalive"]
    if name == "relay":
        return argv + ["--h2"], env
    if name == "native":
        p = os.path.join(d, "proxy.toml")
        _patch(p, f'address = "{listen}"\n', f'address = "{listen}"\n{MARK}h2c = true\n')
        _patch(p, f"idle_pool_size = {ka}\n", f"idle_pool_size = {ka}\nprotocol = \"h2c\"\n")
    elif name == "traefik":
        _patch(os.path.join(d, "dynamic.yml"), f'url: "http://{up_addr}"', f'url: "h2c://{up_addr}"')
    elif name == "nginx":
        p = os.path.join(d, "nginx.conf")
        _patch(p, f"        listen {listen};\n", f"        listen {listen} http2;  {MARK}")
        _patch(p, "            proxy_pass http://up;\n            proxy_http_version 1.1;\n"
                  "            proxy_set_header Connection \"\";\n",
               "            grpc_pass grpc://up;\n")
    elif name == "haproxy":
        p = os.path.join(d, "haproxy.cfg")
        _patch(p, f"    bind {listen}\n", f"    {MARK}    bind {listen} proto h2\n")
        _patch(p, f"pool-max-conn {ka}\n", f"pool-max-conn {ka} proto h2\n")
    return argv, env


def port_open(addr, timeout=0.5):
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def curl_check(url, family, ca, body_bytes, method="GET"):
    """One request with curl over HTTP/2 (ALPN h2 over TLS, prior knowledge over h2c): returns
    (ok, "http_version status size") — a start-up check that the target speaks HTTP/2 and relays
    the origin's body whole (loadgen does not check body sizes)."""
    argv = ["curl", "-s", "-o", "/dev/null", "--max-time", "3", "-w", "%{http_version} %{http_code} %{size_download}",
            "-X", method, "-H", "Host: bench"]
    if family == "tls":
        argv += ["--http2", "--cacert", ca]
    else:
        argv += ["--http2-prior-knowledge"]
    if method == "POST":
        argv += ["-H", "content-type: application/grpc", "--data-binary", "x" * 64]
    argv.append(url)
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
    out = r.stdout.decode("utf-8", "replace").strip()
    return out == f"2 200 {body_bytes}", shlex.join(argv) + "  ->  " + out


def trailers_check(url, post_bytes):
    """One gRPC-style POST with nghttp (h2c prior knowledge; `nghttp -v` prints every frame):
    returns (relayed, "command  ->  what came back"), relayed True when `grpc-status: 0` arrived in
    a HEADERS frame after the response's DATA (trailers), False when not, None when nghttp is not
    installed (not checked). curl 7.88 does not show HTTP/2 trailers, hence nghttp."""
    nghttp = shutil.which("nghttp")
    if not nghttp:
        return None, "nghttp not installed (apt-get install nghttp2-client): trailers not checked"
    with tempfile.NamedTemporaryFile(prefix="h2-trailers-", suffix=".bin") as body:
        body.write(b"x" * post_bytes)
        body.flush()
        argv = [nghttp, "-v", "-n", "-t", "3", "-H", "content-type: application/grpc", "-H", "te: trailers",
                "-d", body.name, url]
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
            out = r.stdout.decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            out = ""
    lines = out.splitlines()
    data = next((i for i, ln in enumerate(lines) if "recv DATA frame" in ln), None)
    trailer = [ln.split(")", 1)[1].strip() for ln in lines[(data or 0):]
               if data is not None and "recv (stream_id=" in ln and "grpc-" in ln]
    relayed = any(t == "grpc-status: 0" for t in trailer)
    got = ", ".join(trailer) if trailer else ("no trailers" if data is not None else "no response body")
    return relayed, shlex.join(argv[:-3] + ["-d", f"<{post_bytes} bytes>", url]) + "  ->  " + got


class H2Target(Target):
    """A target of one family (tls: https:// with ALPN h2; h2c: http:// prior knowledge)."""

    def __init__(self, name, ctx, certs, family, cfg_sub=None):
        self.family = family
        self.scheme = "https" if family == "tls" else "http"
        self.client_args = ("--ca", certs["ecdsa"]["cert"]) if family == "tls" else ()
        cert = certs["ecdsa"]
        super().__init__(name, ctx, ready=port_open,
                         configure=lambda port: write_h2_configs(
                             os.path.join(ctx.work, cfg_sub) if cfg_sub else ctx.cfgdir, family, name, port,
                             ctx.up_addr, ctx.bins, cert))

    @property
    def url(self):
        port = self.addr.rsplit(":", 1)[1]
        return f"https://{SERVER_NAME}:{port}/" if self.family == "tls" else f"http://127.0.0.1:{port}/"

    def check(self, ca, body_bytes, method):
        deadline = time.monotonic() + 5
        while True:
            ok, line = curl_check(self.url, self.family, ca, body_bytes, method)
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not ok:
            self.check_alive()
            raise Fail(f"{self.name} ({self.family}): the HTTP/2 start-up check failed: {line}; "
                       f"log {self.proc.log_path}:\n{self.proc.log_tail()}")
        return line


class OriginProbe:
    """A listener that records what each connection sends first (the HTTP/2 preface or an
    HTTP/1.1 request line) and closes it: pointed at by a target in place of the origin, it shows
    which protocol the target speaks upstream (the target then answers 502; that is expected)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.seen = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                c.settimeout(2)
                data = b""
                while len(data) < 24 and b"\r\n" not in data:
                    chunk = c.recv(24 - len(data))
                    if not chunk:
                        break
                    data += chunk
                if not data:
                    continue  # a connection that sent nothing (the relay connects upstream for its readiness probe)
                self.seen.append("h2c (HTTP/2 preface)" if data.startswith(b"PRI * HTTP/2.0")
                                 else "http/1.1" if b"HTTP/1.1" in data or data.split(b" ")[0] in (b"GET", b"POST")
                                 else repr(data[:24]))
            except OSError:
                pass
            finally:
                c.close()

    def close(self):
        self.sock.close()


def origin_protocol(name, family, ctx, certs):
    """Starts `name` with the probe as its origin, sends one request, returns what reached the
    origin (a sorted list of distinct first lines), e.g. ["http/1.1"]."""
    probe = OriginProbe()
    saved = ctx.up_addr
    ctx.up_addr = probe.addr
    try:
        t = H2Target(name, ctx, certs, family, cfg_sub="origin-check")
        try:
            ca = certs["ecdsa"]["cert"]
            curl_check(t.url, family, ca, 0, "POST" if family == "h2c" else "GET")
            deadline = time.monotonic() + 3
            while not probe.seen and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            t.stop()
    finally:
        ctx.up_addr = saved
        probe.close()
    return sorted(set(probe.seen))
