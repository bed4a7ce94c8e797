#!/usr/bin/env python3
"""Reload storm: N back-to-back `POST /reload` with soak.py's two valid configs in turn (no load),
the proxy's VmRSS and fd count read every --every reloads. A per-reload leak too small to see
in the soak's 19 reloads shows here.

    python3 scripts/reliability/reload_storm.py [--reloads 2000] [--every 250]

Exit 1 when VmRSS at the end exceeds VmRSS after the first --every reloads (allocator warm-up)
by more than --rss-tolerance (5 %), when the fd count changed, or when a reload was not
answered 200; exit 2 when the run could not be made. Prints one JSON line."""

import argparse
import json
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rel_common as C  # noqa: E402
import soak as S  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reloads", type=int, default=2000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--rss-tolerance", type=float, default=0.05)
    a = ap.parse_args()
    C.install_signal_handlers()
    work = tempfile.mkdtemp(prefix="reload-storm-")
    _, a1 = C.start_upstream(work, "upstream1")
    _, a2 = C.start_upstream(work, "upstream2")
    cfg = os.path.join(work, "proxy.toml")
    S.write_atomic(cfg, S.config_a(a1, a2))
    px, _, admin = C.start_proxy(work, cfg)
    points, bad = [], []
    for k in range(a.reloads + 1):
        if k % a.every == 0:
            points.append({"reloads": k, "rss_kb": C.status_kb(px.pid), "fds": C.fd_count(px.pid)})
        if k == a.reloads:
            break
        S.write_atomic(cfg, S.config_b(a1, a2) if k % 2 == 0 else S.config_a(a1, a2))
        st, body = C.http(admin, "POST", "/reload")
        if st != 200:
            bad.append((k, st, body.decode("utf-8", "replace")[:200]))
    gen = int(C.metric(C.metrics(admin), "proxy_config_generation"))
    for _ in range(20):  # the admin API's last connection may still be closing
        points[-1]["fds"] = C.fd_count(px.pid)
        if points[-1]["fds"] <= points[0]["fds"]:
            break
        time.sleep(0.05)
    warm, end = points[min(1, len(points) - 1)], points[-1]
    ok = (not bad and gen == a.reloads + 1 and end["rss_kb"] <= warm["rss_kb"] * (1 + a.rss_tolerance)
          and end["fds"] == points[0]["fds"])
    print(json.dumps({"kind": "reload_storm", "reloads": a.reloads, "generation": gen, "points": points,
                      "failed_reloads": bad, "pass": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    C.run_main(main, "reload_storm")
