"""Unit tests of the HTTP/3 comparison (scripts/comparison/h3.py, scripts/compare_h3.py): each
target's config serves HTTP/3 with the run's certificate and X25519 and keeps HTTP/1.1 to the
origin; tshark's fields read as group and suite names; the summarizer's figures (ratios to the
floor within a round, errors by kind, rounds that held the rate, runs that were not HTTP/3, a
group that differs); committed runs re-render as committed. Needs openssl.

    python3 -B -m unittest discover -s scripts/tests -p 'test_*.py'
"""

import copy
import glob
import json
import os
import shutil
import socket
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)
import compare_h3  # noqa: E402
from comparison import h3, peers, tls  # noqa: E402

BINS = {"proxy": "/nonexistent/proxy", "loadgen": "/nonexistent/loadgen", "traefik": "/nonexistent/traefik",
        "caddy": "/nonexistent/caddy"}
UP = "127.0.0.1:9000"


def text_of(d):
    out = []
    for f in sorted(os.listdir(d)):
        if os.path.isfile(os.path.join(d, f)):
            with open(os.path.join(d, f)) as fh:
                out.append(fh.read())
    return "".join(out)


@unittest.skipUnless(shutil.which("openssl"), "openssl is needed for the certificates")
class H3Configs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.saved = (peers._PROXY_EXTRA, peers._PROXY_MEMORY)
        peers._PROXY_EXTRA = ""
        peers._PROXY_MEMORY = ""
        cls.tmp = tempfile.mkdtemp()
        cls.cert = tls.make_certs(os.path.join(cls.tmp, "certs"))["ecdsa"]

    @classmethod
    def tearDownClass(cls):
        peers._PROXY_EXTRA, peers._PROXY_MEMORY = cls.saved
        shutil.rmtree(cls.tmp)

    def cfg(self, name):
        d = os.path.join(self.tmp, "cfg")
        argv, env = h3.write_h3_configs(d, name, 4443, UP, BINS, self.cert, 100)
        sub = os.path.join(d, name)
        return argv, env, (text_of(sub) if os.path.isdir(sub) else "")

    def test_every_target_serves_http3_with_the_runs_certificate_and_x25519(self):
        for name in h3.H3_TARGETS:
            argv, env, text = self.cfg(name)
            if name in ("direct", "relay"):
                # the loadgen servers: ring's groups (X25519 first), the certificate by flag
                self.assertIn("--cert", argv, name)
                self.assertEqual(argv[argv.index("--cert") + 1], self.cert["cert"], name)
                self.assertEqual(argv[argv.index("--key") + 1], self.cert["key"], name)
                continue
            self.assertIn(self.cert["cert"], text, name)
            self.assertIn(self.cert["key"], text, name)
            if name == "native":
                self.assertIn("http3 = true\n", text)
                self.assertIn('kx_groups = ["X25519"]\n', text)
                self.assertIn('cipher_suites = ["TLS13_AES_128_GCM_SHA256"]\n', text)
                self.assertIn("[listeners.tls]\n", text)
            if name == "traefik":
                self.assertIn("    http3: {}\n", text)
                self.assertIn("      tls: {}\n", text)
                self.assertIn("curvePreferences: [X25519]", text)
                self.assertIn("minVersion: VersionTLS13", text)
                self.assertEqual(env, {"GOMAXPROCS": "1"})
            if name == "caddy":
                self.assertIn("protocols h1 h2 h3", text)
                self.assertIn("curves x25519", text)
                self.assertIn("protocols tls1.3", text)
                self.assertIn("https://localhost:4443 {", text)
                self.assertNotIn("\tlog", text)  # no access log
                self.assertEqual(env["GOMAXPROCS"], "1")

    def test_the_origin_leg_is_http1_everywhere(self):
        for name in h3.H3_TARGETS:
            argv, _, text = self.cfg(name)
            self.assertNotIn("h2c", text + " ".join(argv), name)
            if name == "direct":
                self.assertEqual(argv[1:5], ["upstream", "--listen", "127.0.0.1:4443", "--tls"])
                self.assertIn("--http3", argv)
                self.assertNotIn(UP, argv)  # the direct path answers itself
                continue
            if name == "relay":
                self.assertEqual(argv[argv.index("--upstream") + 1], UP)
                self.assertIn("--h3", argv)
                self.assertIn("--upstream-http1", argv)
                continue
            self.assertIn(UP, text, name)
        _, _, caddy = self.cfg("caddy")
        self.assertIn(f"reverse_proxy {UP} {{", caddy)
        self.assertIn("keepalive_idle_conns_per_host 256", caddy)

    def test_a_changed_base_config_fails_loudly(self):
        from lib.procs import Fail
        saved = h3.write_tls_configs

        def broken(cfgdir, name, port, up_addr, bins, cert):
            argv, env = saved(cfgdir, name, port, up_addr, bins, cert)
            p = os.path.join(cfgdir, name, "traefik.yml")
            with open(p) as f:
                s = f.read()
            with open(p, "w") as f:
                f.write(s.replace("    address:", "    addr:"))
            return argv, env
        h3.write_tls_configs = broken
        try:
            with self.assertRaises(Fail):
                self.cfg("traefik")
        finally:
            h3.write_tls_configs = saved


class Wire(unittest.TestCase):
    def test_tshark_fields_read_as_names(self):
        text = ("1\t29,23,24\t29\t4865\n"                   # ClientHello, decimal
                "2\t\t0x001d\t0x1301\n"                      # ServerHello, hex
                "1\t0x11ec,0x001d\t0x11ec,0x001d\t0x1301\n")  # a post-quantum offer
        w = h3.parse_tshark(text)
        self.assertEqual(w["offered"], ["X25519", "secp256r1", "secp384r1", "X25519MLKEM768"])
        self.assertEqual(w["key_shares"], ["X25519", "X25519MLKEM768"])
        self.assertEqual(w["chosen"], ["X25519"])
        self.assertEqual(w["suite"], ["TLS13_AES_128_GCM_SHA256"])
        self.assertEqual(h3.parse_tshark(""), {"offered": [], "key_shares": [], "chosen": [], "suite": []})

    def test_udp_bound_sees_a_bound_socket(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        addr = "127.0.0.1:%d" % s.getsockname()[1]
        self.assertTrue(h3.udp_bound(addr))
        s.close()
        self.assertFalse(h3.udp_bound(addr))


def run_(us, n=4000, p99_us=2000, errors=None, protocol="h3", alpn="h3", achieved=1000.0, codes=None):
    cpu_s = us * n / 1e6
    return {"achieved_rate": achieved, "requests_handled": n, "valid": True, "protocol": protocol, "streams": 10,
            "cpu": {"user_s": cpu_s * 0.75, "sys_s": cpu_s * 0.25, "us_per_req_user": us * 0.75,
                    "us_per_req_sys": us * 0.25, "util": 0.1, "sched_us_per_req": us},
            "latency": {"corrected": {"p50_us": 500, "p99_us": p99_us}},
            "errors": errors or {"timeout": 0, "reset": 0}, "status_codes": codes or {"200": n},
            "tls_negotiated": [{"alpn": alpn, "version": "TLSv1.3", "cipher_suite": "TLS13_AES_128_GCM_SHA256",
                                "handshakes": 4}],
            "command": "loadgen run ..."}


def fake_record(cpu):
    """cpu: {target: [(low_us, high_us) per round]} -> an h3.json record."""
    targets = list(cpu)
    rounds = []
    for i in range(len(next(iter(cpu.values())))):
        res = {t: {"start": {"command": f"{t} --flags", "env": {}, "pids": [1]},
                   "low": run_(cpu[t][i][0]), "high": run_(cpu[t][i][1], achieved=3000.0),
                   "mem": {"vm_hwm_kb": 10240, "vm_rss_kb": 9216}} for t in targets}
        rounds.append({"round": i + 1, "order": targets, "results": res})
    w = {"offered": ["X25519"], "key_shares": ["X25519"], "chosen": ["X25519"], "suite": ["TLS13_AES_128_GCM_SHA256"]}
    return {"schema_version": 1, "kind": "compare-h3",
            "meta": {"command_line": "scripts/compare-h3.sh", "start_time": "2026-12-01T00:00:00Z", "mode": "full",
                     "params": {"rounds": len(rounds), "prewarm_s": 0.5, "run_s": 6.0}, "targets": targets,
                     "rates": {"low": 1000.0, "high": 3000.0}, "streams": 10, "connections": 4, "body_bytes": 100,
                     "description": {"proxy_cpu": "1", "loader_cpu": "0"}, "upstream_command": "loadgen upstream",
                     "certificate": "openssl req", "machine": {"host": "vm", "loadavg_at_start": "0"},
                     "git": {"commit": "0" * 40}, "elapsed_s": 1},
            "wire": {t: dict(w) for t in targets}, "origin_protocol": {t: ["http/1.1"] for t in targets if t != "direct"},
            "rounds": rounds}


class Summary(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def render(self, d):
        with open(os.path.join(self.tmp, "h3.json"), "w") as f:
            json.dump(d, f)
        compare_h3.summarize(self.tmp)
        with open(os.path.join(self.tmp, "summary.md")) as f:
            return f.read()

    def test_ratios_are_taken_within_a_round(self):
        # the floor doubles in round 2 and so does the proxy: its ratio does not move
        d = fake_record({"relay": [(20, 10), (40, 20), (20, 10)], "native": [(30, 12), (60, 24), (30, 12)],
                         "traefik": [(200, 100), (200, 100), (200, 100)]})
        _, S, M = compare_h3.compute(d)
        fx = S["low"]["native"]["floor_x"]
        for k in ("median", "min", "max"):
            self.assertAlmostEqual(fx[k], 1.5)
        self.assertEqual(fx["n"], 3)
        self.assertAlmostEqual(S["high"]["native"]["floor_x"]["median"], 1.2)
        self.assertEqual(S["low"]["traefik"]["floor_x"]["min"], 5.0)
        self.assertEqual(S["high"]["native"]["held"], 3)
        self.assertEqual(M["native"]["rss_mib"]["median"], 9.0)
        text = self.render(d)
        self.assertIn("| this proxy | 30.0 [30.0–60.0] µs = 1.50× | 12.0 [12.0–24.0] µs = 1.20× |", text)
        self.assertIn("Every run was `h3`.", text)
        self.assertNotIn("**", text.split("## Was it HTTP/3")[1].replace("**X25519**", ""))

    def test_errors_by_kind_a_missed_rate_and_a_run_not_over_http3_are_reported(self):
        d = fake_record({"relay": [(20, 10), (20, 10)], "caddy": [(200, 100), (200, 100)]})
        r = d["rounds"]
        r[0]["results"]["caddy"]["high"] = run_(100, errors={"timeout": 3, "reset": 2}, achieved=2500.0)
        r[1]["results"]["caddy"]["high"] = run_(100, errors={"timeout": 1}, codes={"200": 3990, "502": 10},
                                                     achieved=3000.0)
        r[1]["results"]["relay"]["low"] = run_(20, protocol="h2", alpn="h2")
        _, S, _ = compare_h3.compute(d)
        self.assertEqual(S["high"]["caddy"]["errors"], {"timeout": 4, "reset": 2})
        self.assertEqual(S["high"]["caddy"]["non_200"], 10)
        self.assertEqual(S["high"]["caddy"]["held"], 1)
        self.assertEqual(S["low"]["relay"]["not_h3"], ["round 2: protocol 'h2'"])
        text = self.render(d)
        self.assertIn("reset 2, timeout 4, non-200 10", text)
        self.assertIn("| 1/2 |", text)
        self.assertIn("**Not HTTP/3: relay: round 2: protocol 'h2'**", text)
        with open(os.path.join(self.tmp, "runs.csv")) as f:
            rows = f.read()
        self.assertIn("reset=2;timeout=3", rows)

    def test_a_different_group_or_origin_protocol_is_flagged(self):
        d = fake_record({"relay": [(20, 10)], "traefik": [(200, 100)]})
        d["wire"]["traefik"]["chosen"] = ["X25519MLKEM768"]
        d["origin_protocol"]["traefik"] = ["h2c (HTTP/2 preface)"]
        text = self.render(d)
        self.assertIn("chose **X25519MLKEM768**", text)
        self.assertIn("did not all pick the same group", text)
        self.assertIn("not HTTP/1.1 everywhere", text)


class CommittedRuns(unittest.TestCase):
    def test_committed_runs_render_as_committed(self):
        for run in sorted(glob.glob(os.path.join(ROOT, "results", "compare-h3", "*", "h3.json"))):
            d = os.path.dirname(run)
            tmp = tempfile.mkdtemp()
            try:
                shutil.copy(run, tmp)
                compare_h3.summarize(tmp)
                for f in ("summary.md", "runs.csv", "commands.md", "summary.json"):
                    with open(os.path.join(d, f)) as a, open(os.path.join(tmp, f)) as b:
                        self.assertEqual(a.read(), b.read(), f"{run}: {f}")
            finally:
                shutil.rmtree(tmp)


if __name__ == "__main__":
    unittest.main()
