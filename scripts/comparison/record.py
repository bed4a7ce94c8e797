"""compare.json: the metadata of a run (command, parameters, machine, git, tool versions,
binaries) and writing the record, atomically, after every phase."""

import datetime
import json
import os
import platform
import shlex
import socket
import subprocess
import sys

from lib import procfs
from lib.bins import ROOT
from lib.procs import version_of

from .spec import CG_CONNECTIONS, CONNECTIONS, DESC, REQ_TIMEOUT, SCHEMA_VERSION


def utc_stamp(t=None):
    t = t or datetime.datetime.now(datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def machine_info():
    return {"host": socket.gethostname(), "cpu_model": procfs.cpu_model(), "cpus": os.cpu_count(),
            "kernel": platform.release(), "kernel_full": " ".join(platform.uname()),
            "loadavg_at_start": procfs.loadavg_text()}


def git_info():
    def g(*a):
        r = subprocess.run(["git", "-C", ROOT] + list(a), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return r.stdout.decode().strip()
    return {"commit": g("rev-parse", "HEAD"),
            "dirty_paths_proxy_loadgen": g("status", "--porcelain", "--", "proxy", "loadgen").splitlines()}


def tool_versions(bins):
    return {
        "proxy": version_of([bins["proxy"], "--version"]),
        "loadgen": version_of([bins["loadgen"], "--version"]),
        "traefik": version_of([bins["traefik"], "version"]),
        "nginx": version_of([bins["nginx"], "-v"]),
        "haproxy": version_of([bins["haproxy"], "-v"]),
        "valgrind": version_of(["valgrind", "--version"]),
        "strace": version_of(["strace", "-V"]),
        "python": sys.version.split()[0],
        "rustc": version_of(["rustc", "--version"]),
    }


def new_record(args, mode, params, targets, bins, started):
    """The record as it starts: schema, kind and the run's metadata."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "compare",
        "meta": {
            "command_line": args.command_line or shlex.join(sys.argv),
            "start_time": utc_stamp(started),
            "mode": mode, "params": params, "targets": targets, "description": DESC,
            "connections": CONNECTIONS, "callgrind_connections": CG_CONNECTIONS,
            "request_timeout": REQ_TIMEOUT, "slo_p99_ms": args.slo_ms,
            "loadgen_command": (f"taskset -c {DESC['loader_cpu']} LOADGEN run --url URL --duration D "
                                f"--warmup 0s --connections N --cpus {DESC['loader_cpu']} --timeout "
                                f"{REQ_TIMEOUT} --json F --quiet --allow-invalid (--closed | --rate R)"),
            "pinning": {"target": f"CPU {DESC['proxy_cpu']} (taskset)",
                        "loadgen_and_upstream": f"CPU {DESC['loader_cpu']} (taskset + --cpus)"},
            "machine": machine_info(), "git": git_info(), "versions": tool_versions(bins),
            "binaries_note": os.environ.get("BINARIES_NOTE", ""),
            "binaries": dict(bins),
        },
    }


def write_json(out, record):
    """OUT/compare.json, replaced atomically."""
    tmp = os.path.join(out, "compare.json.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, separators=(",", ":"))
    os.replace(tmp, os.path.join(out, "compare.json"))
