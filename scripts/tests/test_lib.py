"""Unit tests of scripts/lib (run by `cargo test`: gates/tests/scripts.rs, which passes the probe
and loadgen binaries as PROBE_BIN and LOADGEN_BIN).

    python3 -B -m unittest discover -s scripts/tests -p 'test_*.py'
"""

import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.dont_write_bytecode = True
SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, SCRIPTS)
from lib import hist, probe, procfs  # noqa: E402
from lib.procs import Fail, Proc, run_cmd  # noqa: E402

STRACE_SUMMARY = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 55.00    0.100000           5     16000           sendto
 40.00    0.080000           4     16000      8000 recvfrom
  5.00    0.010000           1       320           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.190000           5     32320      8000 total
"""


def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


class Probe(unittest.TestCase):
    """schedstat and strace summaries come from gates' probe binary (gates/src/floor.rs)."""

    def test_schedstat_counts_this_process_and_grows_with_work(self):
        me = os.getpid()
        a = probe.schedstat_ns([me])
        spin(0.05)
        b = probe.schedstat_ns([me])
        self.assertGreater(a, 0)
        self.assertGreaterEqual(b - a, 40_000_000)  # 50 ms of CPU, in ns
        self.assertEqual(probe.schedstat_ns([]), 0)

    def test_schedstat_of_a_process_that_is_gone_fails_naming_it(self):
        p = subprocess.Popen(["true"])
        p.wait()
        with self.assertRaises(Fail) as e:
            probe.schedstat_ns([os.getpid(), p.pid])
        self.assertIn(f"/proc/{p.pid}/task", str(e.exception))

    def test_strace_summary_in_file_order_without_total(self):
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write(STRACE_SUMMARY)
            f.flush()
            self.assertEqual(probe.strace_summary(f.name),
                             [("sendto", 16000), ("recvfrom", 16000), ("epoll_wait", 320)])
        with self.assertRaises(Fail):
            probe.strace_summary("/nonexistent/strace.txt")


class Hist(unittest.TestCase):
    """HdrHistograms are merged by `loadgen hist` (loadgen/src/report.rs)."""

    def test_empty_groups_and_bad_input(self):
        self.assertEqual(hist.merge([], [0.5]), [])
        self.assertEqual(hist.merge([[]], [0.5, 0.99]), [{"count": 0, "quantiles": [None, None], "max": None}])
        self.assertIsNone(hist.quantile([], 0.99))
        with self.assertRaises(Fail):
            hist.merge([["not a histogram"]], [0.5])


class ProcFs(unittest.TestCase):
    def test_tree_cpu_and_memory_of_a_child_group(self):
        with tempfile.TemporaryDirectory() as d:
            p = Proc("sh", ["sh", "-c", "sleep 30 & sleep 30"], os.path.join(d, "sh.log"))
            try:
                deadline = time.monotonic() + 5
                while len(procfs.tree_pids(p.pid)) < 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
                pids = procfs.tree_pids(p.pid)
                self.assertEqual(len(pids), 3, pids)  # sh and its two sleeps
                self.assertEqual(pids, sorted(pids))
                hwm, rss = procfs.mem_kb(pids)
                self.assertGreater(hwm, 0)
                self.assertGreater(rss, 0)
                self.assertEqual(procfs.status_kb(p.pid), procfs.status_fields(p.pid, ("VmRSS",))["VmRSS"])
                self.assertEqual(procfs.threads(p.pid), 1)
                self.assertGreater(procfs.fd_count(p.pid), 0)
                self.assertIsNotNone(procfs.cpu_s(p.pid))
            finally:
                p.stop(grace=1.0)
            # the whole group is killed, the backgrounded sleep too (gone, or a zombie not yet
            # reaped by whoever inherited it: no memory either way)
            deadline = time.monotonic() + 5
            while any(procfs.status_kb(q) is not None for q in pids) and time.monotonic() < deadline:
                time.sleep(0.01)
            self.assertEqual([procfs.status_kb(q) for q in pids], [None] * 3)
            self.assertIsNone(procfs.cpu_s(p.pid))

    def test_run_cmd_time_limit_kills_and_fails(self):
        t0 = time.monotonic()
        with self.assertRaises(Fail) as e:
            run_cmd(["sleep", "30"], timeout=0.2, what="a sleep")
        self.assertLess(time.monotonic() - t0, 5)
        self.assertIn("a sleep: timed out", str(e.exception))
        self.assertEqual(run_cmd(["cat"], 5, "cat", stdin=b"x").stdout, b"x")


if __name__ == "__main__":
    unittest.main()
