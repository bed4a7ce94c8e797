#!/usr/bin/env python3
"""Renders the JSON records of proxy/examples/adversarial_peers.rs as a markdown table.

    adversarial_table.py [--command-line CMD] [--versions FILE] native.json nginx.json ...

The first file is the reference ("this proxy"); every other target gets a verdict per row from the
rank the runner gave each outcome (3 rejected, 2 forwarded well framed, 1 malformed bytes passed on
or a request pipelined after a rejection forwarded, 0 smuggled): this proxy is *stricter* when its
rank is higher, *looser* when lower, *same* otherwise (`same*`: both forwarded, rewriting differently).
Standard library only.
"""
import argparse
import json
import sys

LABEL = {"native": "this proxy", "nginx": "nginx", "haproxy": "HAProxy", "traefik": "Traefik"}
GROUP_TITLE = {
    "rejected": "Requests the project rejects",
    "relayed": "Requests the project forwards (rewritten where the RFC says so)",
    "bad_body": "Broken chunked request bodies",
    "bad_response": "Broken responses from the upstream (to a plain GET; then a second client's GET)",
}


def md(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def cell(case):
    text = f"{case['client'] or '—'} · {case['upstream']}"
    notes = case.get("rewrites") or []
    if notes and case["rank"] >= 1:
        shown = " ".join(notes)
        if len(shown) > 160:
            shown = shown[:157] + "…"
        text += f" ({shown})"
    return md(text)


def verdict(ref, peer):
    if peer is None:
        return "—"
    if ref["rank"] > peer["rank"]:
        return "**stricter**"
    if ref["rank"] < peer["rank"]:
        return "**looser**"
    if ref["rank"] == 2 and ref.get("rewrites") != peer.get("rewrites"):
        return "same*"
    return "same"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--command-line", default="")
    ap.add_argument("--versions", default="")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    records = [json.load(open(f)) for f in args.files]
    names = [r["target"] for r in records]
    by_name = [{c["name"]: c for c in r["cases"]} for r in records]
    ref_name, ref = names[0], by_name[0]
    peers = list(range(1, len(records)))

    out = []
    w = out.append
    w("# Adversarial HTTP: this proxy against its peers")
    w("")
    w("Every row of `proxy/tests/adversarial_cases.rs` (the table `cargo test` runs against this proxy, "
      "byte for byte) sent on a raw socket to each proxy in turn, each forwarding with keep-alive to the "
      "same recording upstream (`proxy/examples/adversarial_peers.rs`). For every rejected-expected row "
      "a valid `GET /smuggled` is pipelined in the same write. A cell is *what the client got* · *what the "
      "upstream received*; rewrites are header lines removed (`-`) or added (`+`) beyond what the proxy "
      "does to a plain GET (its baseline, below).")
    w("")
    if args.command_line:
        w(f"Command: `{args.command_line}`")
        w("")
    if args.versions:
        w("Versions:")
        w("")
        for line in open(args.versions):
            w(f"- {line.strip()}")
        w("")
    w("Verdict: this proxy compared with each peer, by the runner's rank of each outcome (3 rejected, "
      "nothing complete upstream; 2 forwarded, well framed; 1 malformed bytes passed to the upstream, or "
      "the request pipelined after a rejection forwarded; 0 smuggled: the upstream parsed a request the "
      "client got no response for). **stricter**: this proxy ranks higher; **looser**: lower; `same*`: "
      "both forwarded but rewrote differently.")
    w("")

    # Summary.
    w("## Summary")
    w("")
    w("| peer | stricter | same | looser | rows where this proxy is looser |")
    w("|---|---|---|---|---|")
    for i in peers:
        counts = {"stricter": 0, "same": 0, "looser": 0}
        looser = []
        for name, c in ref.items():
            p = by_name[i].get(name)
            v = verdict(c, p).strip("*")
            if v.startswith("same"):
                counts["same"] += 1
            elif v in counts:
                counts[v] += 1
            if v == "looser":
                looser.append(f"`{name}`")
        w(f"| {LABEL.get(names[i], names[i])} | {counts['stricter']} | {counts['same']} | "
          f"{counts['looser']} | {', '.join(looser) or '—'} |")
    w("")
    unexpected = [n for n, c in ref.items() if c["rank"] != c["expected_rank"]]
    w(f"This proxy against the table's own expectation (outcome class only; `cargo test` checks bytes): "
      f"{len(ref) - len(unexpected)} of {len(ref)} rows as expected"
      + (f"; unexpected: {', '.join('`'+n+'`' for n in unexpected)}" if unexpected else "") + ".")
    w("")
    smuggled = []
    for i in range(len(records)):
        for n, c in by_name[i].items():
            if c["rank"] == 0:
                smuggled.append(f"{LABEL.get(names[i], names[i])}: `{n}`")
    w(f"Smuggling seen (rank 0): {', '.join(smuggled) if smuggled else 'none'}.")
    w("")

    # Tables per group.
    head = "| case | expected (reason) | " + " | ".join(LABEL.get(n, n) for n in names) + " | verdict: this proxy vs " + \
        " / ".join(LABEL.get(names[i], names[i]) for i in peers) + " |"
    sep = "|" + "---|" * (3 + len(names))
    groups = []
    for c in records[0]["cases"]:
        if c["group"] not in groups:
            groups.append(c["group"])
    for g in groups:
        w(f"## {GROUP_TITLE.get(g, g)}")
        w("")
        w(head)
        w(sep)
        for c in records[0]["cases"]:
            if c["group"] != g:
                continue
            n = c["name"]
            cells = [cell(by_name[i][n]) if n in by_name[i] else "—" for i in range(len(records))]
            verdicts = " / ".join(verdict(c, by_name[i].get(n)) for i in peers)
            mark = "" if c["rank"] == c["expected_rank"] else " ⚠ unexpected"
            cells[0] += mark
            w(f"| `{n}` | {md(c['expected'])} ({md(c['why'])}) | " + " | ".join(cells) + f" | {verdicts} |")
        w("")

    w("## Baselines (what each proxy does to `GET /baseline` with `Host: a.test`)")
    w("")
    for r in records:
        b = r["baseline"]
        w(f"- {LABEL.get(r['target'], r['target'])}: added {', '.join('`'+md(x)+'`' for x in b['added']) or 'nothing'}; "
          f"removed {', '.join('`'+md(x)+'`' for x in b['removed']) or 'nothing'}")
    w("")
    w("Raw records (every byte each upstream connection received per row, parsed requests, client "
      "statuses): the `*.json` files beside this one. Configs: `configs/`.")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
