"""HdrHistograms of loadgen's reports (base64 V2 + deflate), merged and read by `loadgen hist`
(loadgen/src/report.rs), the one decoder; this is its Python side."""

import json

from . import bins
from .procs import Fail, run_cmd


def merge(groups, quantiles):
    """groups: a list of lists of base64 histograms. For each group, the histograms merged into
    one: {"count": N, "quantiles": [value per quantile], "max": V} in the histograms' unit (ns);
    quantiles and max are None for a group without a value."""
    if not groups:
        return []
    exe = bins.path("loadgen")
    argv = [exe, "hist", "--quantiles", ",".join(repr(float(q)) for q in quantiles)]
    try:
        r = run_cmd(argv, timeout=120, what="loadgen hist", stdin=json.dumps(groups).encode())
    except FileNotFoundError:
        raise Fail(f"loadgen hist: no loadgen binary at {exe} ({bins.KNOWN['loadgen'][1]}, or set LOADGEN_BIN)")
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip()
        raise Fail(f"loadgen hist failed (code {r.returncode}; a loadgen built before `hist` existed "
                   f"needs {bins.KNOWN['loadgen'][1]}): {err}")
    out = json.loads(r.stdout)
    if len(out) != len(groups):
        raise Fail(f"loadgen hist: {len(out)} results for {len(groups)} groups")
    return out


def quantile(histograms, q):
    """The q quantile (ns) of the histograms merged, or None when they hold no value."""
    return merge([list(histograms)], [q])[0]["quantiles"][0]
