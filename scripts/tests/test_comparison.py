"""Tests of the comparison's split: every module imports, compare.py and summarize.py keep their
command lines, the strace record, the memory phase's record, configs and rendering, and summarize
re-renders every committed run byte for byte (run by `cargo test`: gates/tests/scripts.rs).

    python3 -B -m unittest discover -s scripts/tests -p 'test_*.py'
"""

import glob
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)

MODULES = ["lib." + m for m in ("procs", "procfs", "bins", "probe", "hist")] + [
    "comparison." + m for m in ("spec", "ctx", "peers", "targets", "loadruns", "rounds", "strace_phase",
                                "callgrind_phase", "search_phase", "memory_phase", "record", "labels", "stats",
                                "markdown", "svg", "plots")]


class Layout(unittest.TestCase):
    def test_every_module_imports(self):
        for m in MODULES:
            with self.subTest(module=m):
                importlib.import_module(m)

    def test_entry_points_keep_their_command_lines(self):
        r = subprocess.run([sys.executable, "-B", os.path.join(SCRIPTS, "compare.py"), "--help"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        for opt in ("--quick", "--rounds", "--out", "--targets", "--slo-ms", "--rate-base", "--skip"):
            self.assertIn(opt, r.stdout)
        self.assertIn("strace,callgrind,search,memory", r.stdout)
        r = subprocess.run([sys.executable, "-B", os.path.join(SCRIPTS, "summarize.py")],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage: summarize.py DIR", r.stderr)

    def test_reliability_common_imports_with_the_shared_helpers(self):
        sys.path.insert(0, os.path.join(SCRIPTS, "reliability"))
        try:
            import rel_common as C
            from lib import procfs, procs
        finally:
            sys.path.remove(os.path.join(SCRIPTS, "reliability"))
        self.assertIs(C.Proc, procs.Proc)
        self.assertIs(C.Fail, procs.Fail)
        self.assertIs(C.status_kb, procfs.status_kb)


class StraceRecord(unittest.TestCase):
    def test_per_request_sorts_by_count_and_sums(self):
        from comparison.strace_phase import per_request
        calls = {"recvfrom": 8000, "sendto": 8000, "epoll_wait": 9000, "close": 8}
        rec = per_request("native", calls, {"requests_handled": 8000, "valid": True}, 2000)
        self.assertEqual(rec["total_calls"], 25008)
        self.assertAlmostEqual(rec["per_request"], 3.126)
        self.assertEqual(list(rec["by_syscall_per_request"]), ["epoll_wait", "recvfrom", "sendto", "close"])
        self.assertEqual(rec["file"], "strace/native.txt")
        self.assertEqual((rec["rate"], rec["connections"], rec["valid"]), (2000, 8, True))

    def test_committed_strace_tables_give_the_committed_totals(self):
        """The probe's parser (gates' own) reads every committed strace table to the totals the
        Python parser once recorded."""
        import json
        from lib import probe
        for run in sorted(glob.glob(os.path.join(ROOT, "results", "compare", "*", "compare.json"))):
            with open(run) as f:
                sc = json.load(f).get("syscalls", {})
            for name, rec in sc.items():
                with self.subTest(run=run, target=name):
                    calls = dict(probe.strace_summary(os.path.join(os.path.dirname(run), rec["file"])))
                    self.assertEqual(sum(calls.values()), rec["total_calls"])
                    n = rec["requests"]
                    self.assertEqual({k: v / max(n, 1) for k, v in calls.items()}, rec["by_syscall_per_request"])


def hold_report(counts):
    """A `loadgen hold --json` report (schema 1) with (connections, before, held, after) KiB."""
    cs = []
    for n, b, h, a in counts:
        cs.append({"connections": n, "n_ok": n, "valid": True,
                   "failures": {"connect": 0, "read": 0, "closed_while_held": 0},
                   "first_failure": None, "rss_before_kib": b, "rss_held_kib": h, "rss_after_kib": a,
                   "kib_per_conn": (h - b) / n, "after_ratio": a / b, "processes": 2, "open_s": 0.5})
    return {"schema_version": 1, "valid": True, "invalid_reasons": [],
            "meta": {"settle_s": 2.5, "target_command": "nginx -p X"}, "counts": cs}


class MemoryPhase(unittest.TestCase):
    def test_hold_record_keeps_each_crowd_and_the_run_against_the_fresh_start(self):
        from comparison.memory_phase import hold_line, hold_record
        rep = hold_report([(1000, 10000, 11000, 10100), (10000, 10100, 15100, 10605)])
        rep["counts"][1]["failures"]["read"] = 3
        rec = hold_record(rep, "memory/nginx.json")
        self.assertEqual(rec["file"], "memory/nginx.json")
        self.assertEqual([c["kib_per_conn"] for c in rec["counts"]], [1.0, 0.5])
        self.assertEqual(rec["counts"][1]["failed"], 3)
        self.assertAlmostEqual(rec["counts"][1]["after_ratio"], 1.05)
        self.assertAlmostEqual(rec["after_vs_start"], 1.0605)
        self.assertEqual(hold_line("nginx", rec),
                         "nginx    1000: 1.00 KiB/conn, 10000: 0.50 KiB/conn; after release 1.050× before")

    def test_an_unknown_hold_schema_is_refused(self):
        from comparison.memory_phase import hold_record
        from lib.procs import Fail
        rep = hold_report([(1000, 1, 2, 1)])
        rep["schema_version"] = 2
        with self.assertRaises(Fail):
            hold_record(rep, "memory/x.json")

    def test_summary_figures_and_cells(self):
        from comparison.markdown import mem_cell, memory_section
        from comparison.memory_phase import hold_record
        from comparison.stats import memory_figures
        rec = hold_record(hold_report([(1000, 10240, 38400, 30000), (10000, 30000, 276000, 60000)]), "f")
        m = memory_figures(rec)
        self.assertEqual(m["kib_per_conn"], {"1000": 28.16, "10000": 24.6})
        self.assertEqual((m["after_ratio"], m["largest"], m["rss_before_mb"]), (2.0, 10000, 10.0))
        self.assertIsNone(memory_figures({"measured": False, "reason": "x"}))
        d = {"memory": {"connections": [1000, 10000], "settle": "2.5s",
                        "targets": {"native": rec, "direct": {"measured": False, "reason": "the origin"}}},
             "meta": {"description": {"loader_cpu": "0"}}}
        self.assertEqual(mem_cell(d, {"memory": m}), "28.2 / 24.6 KiB (after: 2.00×)")
        self.assertEqual(mem_cell(d, {"memory": None}), "—")
        m["valid"]["10000"] = False
        self.assertEqual(mem_cell(d, {"memory": m}), "28.2 / 24.6 (INVALID) KiB (after: 2.00×)")
        rows = memory_section(d, ["direct", "native"], {"direct": {"memory": None}, "native": {"memory": m}})
        self.assertIn("| direct (no proxy) | — | — | — | — | — | — | — | not measured: the origin |", rows)
        self.assertIn("| proxy (native) | 28.2 | 24.6 (INVALID) | 10.0 | 37.5 | 269.5 | 58.6 | 2.00× | 5.86× |", rows)

    def test_memory_configs_make_room_for_the_crowd_and_leave_the_others_alone(self):
        from comparison import peers
        from comparison.spec import MEMORY_CONNECTIONS, MEMORY_IDLE_TIMEOUT_S, MEMORY_MAX_CONNECTIONS
        self.assertGreater(MEMORY_MAX_CONNECTIONS, max(MEMORY_CONNECTIONS))
        peers._PROXY_EXTRA, peers._PROXY_MEMORY = "", None
        bins = {"proxy": "/bin/false", "loadgen": "L", "traefik": "T", "nginx": "N", "haproxy": "H"}
        with tempfile.TemporaryDirectory() as tmp:
            def text(name, mem, f):
                peers.write_configs(tmp, name, 1234, "127.0.0.1:9", bins, for_memory=mem)
                with open(os.path.join(tmp, name + ("-memory" if mem else ""), f)) as fh:
                    return fh.read()
            n = text("nginx", True, "nginx.conf")
            nofile = peers.nofile_for(2 * MEMORY_MAX_CONNECTIONS + 1024)
            self.assertGreater(nofile, max(MEMORY_CONNECTIONS))
            self.assertIn(f"worker_connections {min(MEMORY_MAX_CONNECTIONS + 1024, nofile)};", n)
            self.assertIn(f"worker_rlimit_nofile {nofile};", n)
            self.assertIn("worker_rlimit_nofile", n)
            self.assertIn(f"keepalive_timeout {MEMORY_IDLE_TIMEOUT_S}s;", n)
            self.assertNotIn("worker_rlimit_nofile", text("nginx", False, "nginx.conf"))
            h = text("haproxy", True, "haproxy.cfg")
            self.assertEqual(h.count(f"maxconn {MEMORY_MAX_CONNECTIONS}"), 2)
            self.assertIn(f"timeout http-keep-alive {MEMORY_IDLE_TIMEOUT_S}s", h)
            self.assertIn("maxconn 4096", text("haproxy", False, "haproxy.cfg"))
            self.assertIn(f"idleTimeout: {MEMORY_IDLE_TIMEOUT_S}s", text("traefik", True, "traefik.yml"))
            self.assertNotIn("idleTimeout", text("traefik", False, "traefik.yml"))
            # a proxy build that refuses [limits] (here: one that refuses everything) gets none
            self.assertNotIn("[limits]", text("native", True, "proxy.toml"))
        peers._PROXY_EXTRA = peers._PROXY_MEMORY = None


class Summarize(unittest.TestCase):
    def test_committed_runs_render_byte_for_byte(self):
        runs = sorted(glob.glob(os.path.join(ROOT, "results", "compare", "*", "compare.json")))
        self.assertTrue(runs, "no committed comparison run")
        for run in runs:
            with self.subTest(run=os.path.basename(os.path.dirname(run))):
                self.rerender(os.path.dirname(run))

    def rerender(self, src):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, os.path.basename(src))  # the title names the folder
            os.mkdir(out)
            for f in ("compare.json", "NOTES.md"):
                if os.path.exists(os.path.join(src, f)):
                    shutil.copy(os.path.join(src, f), out)
            r = subprocess.run([sys.executable, "-B", os.path.join(SCRIPTS, "summarize.py"), out],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            for f in ("summary.md", "README.md", "summary.json", "latency.svg", "cpu.svg", "cpu_vs_rate.svg"):
                with self.subTest(file=f):
                    with open(os.path.join(src, f), "rb") as a, open(os.path.join(out, f), "rb") as b:
                        self.assertTrue(a.read() == b.read(),
                                        f"{f} differs from {src}/{f}: if the change is deliberate, re-render "
                                        f"the committed runs (python3 scripts/summarize.py DIR) in the same commit")


if __name__ == "__main__":
    unittest.main()
