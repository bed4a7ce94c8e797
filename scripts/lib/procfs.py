"""/proc readings: a process tree, CPU ticks (utime, stime), /proc/PID/status fields, open fds and
threads of processes; the CPU model and load average of the machine. A process that is gone
reads as nothing (None for one pid, left out of a sum over pids).

CPU time in ns from schedstat is not here: gates' `probe` binary owns it (lib/probe.py)."""

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return None
    return st[st.rindex(")") + 2:].split()


def tree_pids(root):
    """root and its descendants (nginx: master + worker), sorted."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        fields = _stat_fields(d)
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return sorted(out)


def cpu_ticks(pids):
    """(utime, stime) in clock ticks summed over pids (all threads of each)."""
    u = s = 0
    for p in pids:
        fields = _stat_fields(p)
        if fields is None:
            continue
        u += int(fields[11])
        s += int(fields[12])
    return u, s


def cpu_s(pid):
    """utime + stime of the process (all threads), seconds; None when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_fields(pid, keys):
    """{key: kB} for the /proc/PID/status lines named in keys (VmRSS, VmHWM, ...) that are
    present; None when the process is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, rest = line.partition(":")
                if k in keys:
                    out[k] = int(rest.split()[0])
    except OSError:
        return None
    return out


def status_kb(pid, key="VmRSS"):
    """One /proc/PID/status field in kB, or None."""
    return (status_fields(pid, (key,)) or {}).get(key)


def mem_kb(pids):
    """(VmHWM, VmRSS) in KiB summed over pids."""
    hwm = rss = 0
    for p in pids:
        st = status_fields(p, ("VmHWM", "VmRSS")) or {}
        hwm += st.get("VmHWM", 0)
        rss += st.get("VmRSS", 0)
    return hwm, rss


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def loadavg_text():
    """/proc/loadavg as it reads (three averages, runnable/total, last pid)."""
    with open("/proc/loadavg") as f:
        return f.read().strip()
