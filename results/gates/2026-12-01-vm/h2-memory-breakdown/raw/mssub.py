#!/usr/bin/env python3
"""Writes a massif file holding only the header and the chosen snapshots (renumbered 0..), so
ms_print can print them. usage: mssub.py massif.out OUT SNAPSHOT..."""
import sys
want = set(int(x) for x in sys.argv[3:]); out = open(sys.argv[2], 'w'); keep = True; header = True; i = 0
for line in open(sys.argv[1], errors='replace'):
    if line.startswith('#-----------') and header:
        header = False
    if line.startswith('snapshot='):
        n = int(line.split('=')[1]); keep = n in want
        if keep: line = f'snapshot={i}\n'; i += 1
    if line.startswith('#-----------') and not header:
        pass
    if header or keep: out.write(line)
