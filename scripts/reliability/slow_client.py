#!/usr/bin/env python3
"""A slowloris crowd: N connections, each sending a request head that never completes, one byte
every --trickle seconds; records when and how the server cut each one. Run by slowloris.py as its
own process (pinned beside the load generator); usable by hand:

    python3 scripts/reliability/slow_client.py --target 127.0.0.1:8080 --connections 1000 \
        --duration 20 --trickle 1 --json out.json

Each of --connections slots opens a connection (the crowd ramps up at --ramp connections/s),
sends `GET /slowloris HTTP/1.1\\r\\nHost: slowloris\\r\\nX-Slow: ` and then one byte of the header
value every --trickle s. When the server closes the connection the slot records the cut (time
from the first byte sent to EOF; what the server sent before closing, e.g. a 408) and, until
--duration has passed since the start, opens a new connection: the crowd stays at N for the
whole attack. After --duration no new connection is opened and the ones still open trickle on
until the server cuts them or --give-up s pass (those count as `not_cut`).

--silent M: M of the slots send nothing at all after connecting (the server's timer for a
connection without a byte of a request is a different one; see README.md).

Prints `open N` on stdout once the first N connections are open, `done` at the end; writes every
connection's record to --json. Standard library only."""

import argparse
import asyncio
import json
import resource
import sys
import time

HEAD = b"GET /slowloris HTTP/1.1\r\nHost: slowloris\r\nX-Slow: "


class Crowd:
    def __init__(self, a):
        self.a = a
        self.t0 = time.monotonic()
        self.records = []
        self.open_now = 0
        self.peak_open = 0
        self.connect_errors = {}
        self.stop_reconnect_at = self.t0 + a.duration

    def now(self):
        return time.monotonic() - self.t0

    async def one(self, slot, silent):
        host, port = self.a.target.rsplit(":", 1)
        t_conn = self.now()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5.0)
        except (OSError, asyncio.TimeoutError) as e:
            k = type(e).__name__
            self.connect_errors[k] = self.connect_errors.get(k, 0) + 1
            await asyncio.sleep(0.1)
            return
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)
        rec = {"slot": slot, "silent": silent, "connect_s": round(t_conn, 4), "bytes_sent": 0}
        got = b""
        how = None
        t_first = None
        try:
            if not silent:
                writer.write(HEAD)
                await writer.drain()
                t_first = self.now()
                rec["bytes_sent"] = len(HEAD)
            else:
                t_first = self.now()
            give_up = time.monotonic() + self.a.give_up
            while True:
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    how = "not_cut"
                    break
                try:
                    chunk = await asyncio.wait_for(reader.read(4096), min(self.a.trickle, remaining))
                except asyncio.TimeoutError:
                    if not silent:
                        writer.write(b"a")
                        await writer.drain()
                        rec["bytes_sent"] += 1
                    continue
                if chunk:
                    got += chunk
                    if "first_response_s" not in rec:
                        rec["first_response_s"] = round(self.now() - t_first, 4)
                    continue
                how = "eof"
                break
        except (ConnectionResetError, BrokenPipeError) as e:
            how = "reset" if isinstance(e, ConnectionResetError) else "broken_pipe"
        except OSError as e:
            how = f"error:{type(e).__name__}"
        t_end = self.now()
        self.open_now -= 1
        try:
            writer.close()
        except Exception:
            pass
        rec["end"] = how
        rec["cut_after_s"] = round(t_end - t_first, 4) if t_first is not None else None
        rec["end_s"] = round(t_end, 4)
        rec["status_line"] = got.split(b"\r\n", 1)[0].decode("latin-1")[:80] if got else ""
        rec["response_bytes"] = len(got)
        self.records.append(rec)

    async def slot(self, i, silent):
        await asyncio.sleep(i / self.a.ramp)
        while True:
            await self.one(i, silent)
            if time.monotonic() >= self.stop_reconnect_at:
                return

    async def announce(self):
        n = self.a.connections
        while self.open_now < n and self.now() < n / self.a.ramp + 10:
            await asyncio.sleep(0.02)
        print(f"open {self.open_now}", flush=True)

    async def run(self):
        silent = set(range(self.a.connections - self.a.silent, self.a.connections))
        tasks = [asyncio.create_task(self.slot(i, i in silent)) for i in range(self.a.connections)]
        ann = asyncio.create_task(self.announce())
        await asyncio.gather(*tasks)
        ann.cancel()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="HOST:PORT")
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--silent", type=int, default=0, help="slots that send no byte at all")
    ap.add_argument("--duration", type=float, default=20.0, help="s: keep the crowd at N this long")
    ap.add_argument("--trickle", type=float, default=1.0, help="s between bytes")
    ap.add_argument("--ramp", type=float, default=500.0, help="connections opened per second at start")
    ap.add_argument("--give-up", type=float, default=30.0,
                    help="s a connection may stay open before it is counted not_cut and closed")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.connections + 64
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    c = Crowd(a)
    asyncio.run(c.run())
    out = {"schema_version": 1, "kind": "slow_client", "args": vars(a), "elapsed_s": round(c.now(), 3),
           "peak_open": c.peak_open, "connect_errors": c.connect_errors, "records": c.records}
    with open(a.json, "w") as f:
        json.dump(out, f)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
