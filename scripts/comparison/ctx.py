"""One comparison run's context: its results folder and scratch folders, the mode's parameters,
the binaries, the command-line arguments and the upstream's address."""

import os

from lib.bins import ROOT


class Ctx:
    def __init__(self, out, mode, params, args, bins):
        self.out = out
        self.mode = mode
        self.p = params
        self.args = args
        self.bins = bins  # proxy, loadgen, traefik, nginx, haproxy -> path
        self.cfgdir = os.path.join(out, "configs")
        self.work = os.path.join(ROOT, "target", "compare-work", os.path.basename(out.rstrip("/")))
        self.logdir = os.path.join(self.work, "logs")
        self.tmpdir = os.path.join(self.work, "tmp")
        for d in (self.cfgdir, self.logdir, self.tmpdir):
            os.makedirs(d, exist_ok=True)
        self._seq = 0
        self.up_addr = None

    def seq(self):
        self._seq += 1
        return self._seq
