#!/usr/bin/env python3
"""Per-site difference between two detailed massif snapshots, divided by the connections added
between them. Each allocation (a leaf of a snapshot's tree) is attributed to its first stack
frame, walking from malloc towards main, that is not in Rust's std/alloc/core (library/...) nor
in a generic container crate (bytes, hashbrown, slab, indexmap, http's HeaderMap internals),
followed by the next such frame for context.
usage: msdiff.py massif.out BASE_SNAPSHOT TARGET_SNAPSHOT CONNECTIONS_ADDED
       msdiff.py massif.out --timeline SUBSTRING   (bytes at sites whose key contains SUBSTRING, per snapshot)"""
import re, sys, collections
GENERIC = re.compile(r'\((library/|src/bytes_mut\.rs|src/bytes\.rs|src/raw/|src/map\.rs|src/rustc_entry\.rs|src/lib\.rs|src/header/map\.rs|src/buf/|src/vec_deque)')
def parse(path):
    snaps = []; cur = None; stack = []
    for line in open(path, errors='replace'):
        line = line.rstrip('\n')
        if line.startswith('snapshot='):
            cur = {'n': int(line.split('=')[1]), 'leaves': []}; snaps.append(cur); stack = []
        elif cur is not None and line.startswith('mem_heap_B='): cur['heap'] = int(line.split('=')[1])
        elif cur is not None and line.startswith('mem_heap_extra_B='): cur['extra'] = int(line.split('=')[1])
        elif cur is not None and line.startswith('heap_tree='): cur['kind'] = line.split('=')[1]
        else:
            m = re.match(r'^( *)n(\d+): (\d+) (.*)$', line)
            if m and cur is not None:
                depth = len(m.group(1)); nch = int(m.group(2)); b = int(m.group(3)); desc = m.group(4)
                stack = stack[:depth]; stack.append(desc)
                if nch == 0: cur['leaves'].append((b, list(stack[1:])))
    return snaps
def short(d):
    d = re.sub(r'^0x[0-9A-F]+: ', '', d)
    # drop generic parameters for readability
    out, depth = [], 0
    for ch in d:
        if ch == '<': depth += 1; continue
        if ch == '>': depth -= 1; continue
        if depth == 0: out.append(ch)
    return ''.join(out)
def key(st):
    frames = [d for d in st if not GENERIC.search(d) and 'UnknownInlinedFun' not in d]
    if not st: return '?'
    if 'below massif' in st[-1] or 'in ' in st[-1] and 'places' in st[-1]:
        parent = [d for d in st[:-1] if not GENERIC.search(d)]
        return '(below threshold, under) ' + (short(parent[0]) if parent else short(st[0]))
    if not frames: return short(st[0])
    return ' <- '.join(short(f) for f in frames[:2])
def attribute(s):
    c = collections.Counter()
    for b, st in s['leaves']: c[key(st)] += b
    return c
snaps = parse(sys.argv[1])
if sys.argv[2] == '--timeline':
    for s in snaps:
        if s.get('kind') in ('detailed', 'peak'):
            a = attribute(s); v = sum(b for k, b in a.items() if sys.argv[3] in k)
            print(s['n'], s.get('kind'), s['heap'], s.get('extra'), v)
    sys.exit()
bn, tn, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
base = next(s for s in snaps if s['n'] == bn); tgt = next(s for s in snaps if s['n'] == tn)
a = attribute(base); b = attribute(tgt)
dh = tgt['heap'] - base['heap']; de = tgt.get('extra', 0) - base.get('extra', 0)
print(f"snapshot {bn}: heap {base['heap']} B (+{base.get('extra')} B massif 'extra'); snapshot {tn} ({tgt.get('kind')}): heap {tgt['heap']} B (+{tgt.get('extra')} B)")
print(f"difference over {n} connections: heap {dh} B = {dh/n:.1f} B/conn; malloc header/padding ('extra') {de} B = {de/n:.1f} B/conn; together {(dh+de)/n:.1f} B = {(dh+de)/n/1024:.2f} KiB/conn\n")
print(f"{'B/conn':>9}  {'total B':>10}  site: first frame past std/containers <- its caller")
rows = sorted(((b[k] - a[k], k) for k in set(a) | set(b)), reverse=True)
for d, k in rows:
    if abs(d) / n >= 4: print(f"{d/n:9.1f}  {d:10d}  {k}")
small = sum(d for d, k in rows if abs(d) / n < 4)
print(f"{small/n:9.1f}  {small:10d}  (sites under 4 B/conn each, summed)")
