"""The HTTP/3 comparison's targets (scripts/compare-h3.sh): every one serves HTTP/3 over QUIC on
127.0.0.1 with the same certificate (one ECDSA P-256 pair per run, tls.make_certs), TLS 1.3 with
TLS_AES_128_GCM_SHA256 (the only suite loadgen's HTTP/3 client offers) and X25519, pinned where
the target has a setting for it; all but `direct` forward to the same HTTP/1.1 origin with
keep-alive. Each config is the cleartext comparison's (peers.write_configs: one worker,
keep-alive to the upstream, access logs off) with only what HTTP/3 needs added:

- direct: `loadgen upstream --tls --http3` (the origin answering over HTTP/3 itself, no hop);
- relay (the floor): `loadgen relay --h3 --upstream-http1` (quinn + h3, each stream one
  HTTP/1.1 request on a keep-alive pool per client connection; no routing, no header rules);
- native (this proxy): `http3 = true` on a TLS listener, `kx_groups = ["X25519"]`,
  `cipher_suites = ["TLS13_AES_128_GCM_SHA256"]`;
- traefik: entryPoint `http3: {}`, router `tls: {}`, the certificate as the default store's,
  TLS options `minVersion: VersionTLS13`, `curvePreferences: [X25519]`;
- caddy: `servers { protocols h1 h2 h3 }`, `tls CERT KEY { protocols tls1.3; curves x25519 }`,
  `reverse_proxy` with 256 idle keep-alive connections to the origin, no `log` (no access log),
  `admin off`, `auto_https off` (no redirect listener, no certificate management).

`group_check` captures one short run's QUIC Initial packets with tshark (which decrypts them: their
keys come from the connection ID) and reads the ClientHello's offered groups and key shares and
the ServerHello's chosen group and suite: what was negotiated, seen on the wire rather than
assumed.
"""

import os
import shutil
import signal
import time

from lib.procs import Fail, Proc, run_cmd

from .peers import write_configs
from .spec import DESC
from .targets import Target
from .tls import SERVER_NAME, _patch, write_tls_configs

H3_TARGETS = ["direct", "relay", "native", "traefik", "caddy"]
MARK = "# HTTP/3 added by scripts/comparison/h3.py\n"
SUITE = "TLS13_AES_128_GCM_SHA256"
GROUP = "X25519"
# TLS named-group code points (RFC 8446, IANA): what tshark prints, as names
GROUPS = {0x001d: "X25519", 0x0017: "secp256r1", 0x0018: "secp384r1", 0x0019: "secp521r1",
          0x001e: "X448", 0x11ec: "X25519MLKEM768", 0x6399: "X25519Kyber768Draft00"}
SUITES = {0x1301: "TLS13_AES_128_GCM_SHA256", 0x1302: "TLS13_AES_256_GCM_SHA384",
          0x1303: "TLS13_CHACHA20_POLY1305_SHA256"}


def write_h3_configs(cfgdir, name, port, up_addr, bins, cert, body_bytes):
    """`name`'s config under cfgdir/<name>/ for UDP (and, where the target also has one, TCP)
    port `port`; returns argv, env."""
    os.makedirs(cfgdir, exist_ok=True)
    listen = f"127.0.0.1:{port}"
    d = os.path.join(cfgdir, name)
    if name == "direct":
        return [bins["loadgen"], "upstream", "--listen", listen, "--tls", "--http3", "--cert", cert["cert"],
                "--key", cert["key"], "--body-bytes", str(body_bytes), "--threads", "1",
                "--cpus", DESC["proxy_cpu"]], {}
    if name == "relay":
        argv, env = write_configs(cfgdir, name, port, up_addr, bins)
        return argv + ["--h3", "--upstream-http1", "--cert", cert["cert"], "--key", cert["key"]], env
    if name == "native":
        argv, env = write_tls_configs(cfgdir, name, port, up_addr, bins, cert)
        p = os.path.join(d, "proxy.toml")
        _patch(p, f'address = "{listen}"\n', f'address = "{listen}"\n{MARK}http3 = true\n')
        _patch(p, "[listeners.tls]\n", f'[listeners.tls]\nkx_groups = ["{GROUP}"]\ncipher_suites = ["{SUITE}"]\n')
        return argv, env
    if name == "traefik":
        argv, env = write_tls_configs(cfgdir, name, port, up_addr, bins, cert)
        _patch(os.path.join(d, "traefik.yml"), f'    address: "{listen}"\n',
               f'    address: "{listen}"\n    {MARK}    http3: {{}}\n')
        with open(os.path.join(d, "dynamic.yml"), "a") as f:
            f.write(f"""  {MARK.strip()}
  options:
    default:
      minVersion: VersionTLS13
      curvePreferences: [{GROUP}]
""")
        return argv, env
    if name == "caddy":
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "Caddyfile")
        ka = DESC["upstream_keepalive"]
        with open(path, "w") as f:
            f.write(f"""# written by scripts/comparison/h3.py from the comparison's one description
{{
	admin off
	auto_https off
	storage file_system {d}/data
	servers {{
		protocols h1 h2 h3
	}}
}}
https://{SERVER_NAME}:{port} {{
	bind 127.0.0.1
	tls {cert['cert']} {cert['key']} {{
		protocols tls1.3
		curves x25519
	}}
	reverse_proxy {up_addr} {{
		transport http {{
			keepalive 60s
			keepalive_idle_conns {ka}
			keepalive_idle_conns_per_host {ka}
		}}
	}}
}}
""")
        return ([bins["caddy"], "run", "--config", path, "--adapter", "caddyfile"],
                {"GOMAXPROCS": str(DESC["workers"]), "HOME": d, "XDG_DATA_HOME": os.path.join(d, "data"),
                 "XDG_CONFIG_HOME": os.path.join(d, "config")})
    raise ValueError(f"{name}: not an HTTP/3 target")


def udp_bound(addr):
    """True when a UDP socket is bound on addr (127.0.0.1:PORT), from /proc/net/udp: QUIC cannot
    be probed by a connect, and a start-up request is made by the caller with loadgen."""
    host, port = addr.rsplit(":", 1)
    want = f"0100007F:{int(port):04X}"
    try:
        with open("/proc/net/udp") as f:
            return any(line.split()[1] == want for line in list(f)[1:] if len(line.split()) > 1)
    except OSError:
        return False


class H3Target(Target):
    """A target serving HTTP/3 on UDP 127.0.0.1:PORT; loadgen reaches it as
    https://localhost:PORT/ with --ca (the run's certificate) and --http3 --streams N."""

    scheme = "https"

    def __init__(self, name, ctx, cert, streams, body_bytes, cfg_sub=None):
        self.client_args = ("--ca", cert["cert"], "--http3", "--streams", str(streams))
        cfgdir = os.path.join(ctx.work, cfg_sub) if cfg_sub else ctx.cfgdir
        # Target takes the name "direct" to mean the shared origin itself; here direct is a server of its own
        super().__init__("direct-h3" if name == "direct" else name, ctx, ready=udp_bound,
                         configure=lambda port: write_h3_configs(cfgdir, name, port, ctx.up_addr, ctx.bins, cert,
                                                                 body_bytes))
        self.name = name

    @property
    def url(self):
        return f"https://{SERVER_NAME}:{self.addr.rsplit(':', 1)[1]}/"


def group_name(x):
    """A named group as tshark prints it (decimal or 0x hex) -> its name."""
    x = x.strip().lower()
    try:
        code = int(x, 16) if x.startswith("0x") else int(x)
    except ValueError:
        return x
    return GROUPS.get(code, f"0x{code:04x}")


def parse_tshark(text):
    """tshark's fields (one line per handshake message: type, supported groups, key share groups,
    cipher suites, each comma-separated) -> {"offered", "key_shares", "chosen", "suite"}."""
    out = {"offered": [], "key_shares": [], "chosen": [], "suite": []}

    def names(field):
        return [group_name(x) for x in field.split(",") if x.strip()]

    for line in text.splitlines():
        f = line.split("\t")
        f += [""] * (4 - len(f))
        types = [t.strip() for t in f[0].split(",")]
        if "1" in types:  # ClientHello
            for g in names(f[1]):
                if g not in out["offered"]:
                    out["offered"].append(g)
            for g in names(f[2]):
                if g not in out["key_shares"]:
                    out["key_shares"].append(g)
        if "2" in types:  # ServerHello
            for g in names(f[2]):
                if g not in out["chosen"]:
                    out["chosen"].append(g)
            for x in f[3].split(","):
                x = x.strip().lower()
                if not x:
                    continue
                try:
                    x = SUITES.get(int(x, 16) if x.startswith("0x") else int(x), x)
                except ValueError:
                    pass
                if x not in out["suite"]:
                    out["suite"].append(x)
    return out


def group_check(target, loadgen_argv, pcap):
    """Runs loadgen_argv (a short run against target) under a tshark capture of the target's UDP
    port; returns (parsed, text) with what the ClientHellos offered and the ServerHellos chose.
    Needs tshark (Debian package `tshark`) and the right to capture on lo."""
    tshark = shutil.which("tshark")
    if not tshark:
        return None, f"{target.name}: tshark not installed: the key-exchange group was not checked"
    port = target.addr.rsplit(":", 1)[1]
    cap = Proc(f"tshark-{target.name}", [tshark, "-i", "lo", "-f", f"udp port {port}", "-w", pcap, "-q"],
               pcap + ".log")
    try:
        # the file's header is written once the capture is live
        deadline = time.monotonic() + 15
        while not (os.path.exists(pcap) and os.path.getsize(pcap) > 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        r = run_cmd(loadgen_argv, timeout=30, what=f"the key-exchange check against {target.name}")
        time.sleep(0.5)
    finally:
        cap.stop(sig=signal.SIGINT)
    if r.returncode != 0:
        raise Fail(f"{target.name}: the key-exchange check's loadgen run failed: {r.stderr.decode()[-500:]}")
    fields = ["tls.handshake.type", "tls.handshake.extensions_supported_group",
              "tls.handshake.extensions_key_share_group", "tls.handshake.ciphersuite"]
    argv = [tshark, "-r", pcap, "-Y", "tls.handshake.type == 1 || tls.handshake.type == 2", "-T", "fields"]
    for f in fields:
        argv += ["-e", f]
    argv += ["-E", "separator=/t", "-E", "aggregator=,"]
    r = run_cmd(argv, timeout=60, what="tshark -r")
    parsed = parse_tshark(r.stdout.decode("utf-8", "replace"))
    line = (f"{target.name}: client offered groups {', '.join(parsed['offered']) or '?'} (key share "
            f"{', '.join(parsed['key_shares']) or '?'}); server chose {', '.join(parsed['chosen']) or '?'}, "
            f"suite {', '.join(parsed['suite']) or '?'}")
    return parsed, line
