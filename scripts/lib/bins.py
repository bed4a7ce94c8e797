"""Where the project's binaries are: an environment variable (PROXY_BIN, LOADGEN_BIN, PROBE_BIN)
when set, else the release build under $CARGO_TARGET_DIR (default: target/ at the root)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))

# binary -> (environment variable, the cargo command that builds it)
KNOWN = {
    "proxy": ("PROXY_BIN", "cargo build --release -p proxy"),
    "loadgen": ("LOADGEN_BIN", "cargo build --release -p loadgen"),
    "probe": ("PROBE_BIN", "cargo build --release -p gates --bin probe"),
}


def path(name):
    """The path of binary `name` (not checked: running it says when it is missing)."""
    env, _ = KNOWN[name]
    return os.environ.get(env) or os.path.join(TARGET_DIR, "release", name)

