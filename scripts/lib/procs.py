"""Child processes for the scripts: each in its own process group, killed group-wide when
stopped and on any exit of the script (normal, error, signal); commands with a time limit; the
one failure type and the log line."""

import datetime
import os
import shlex
import signal
import socket
import subprocess
import sys


class Fail(Exception):
    """A failure that names what failed and stops the run (each script picks its exit code)."""


def log(msg):
    t = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
    print(f"[{t}] {msg}", file=sys.stderr, flush=True)


class Proc:
    """A child in its own process group; stop() kills the group (nginx's workers with their
    master). stdout and stderr go to log_path, or stdout to a pipe (stdout_pipe=True) for
    children that announce `listening ADDR`."""

    live = []

    def __init__(self, name, argv, log_path, env=None, cwd=None, stdout_pipe=False):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env or {}
        self.logf = open(log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(self.env)
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE if stdout_pipe else self.logf,
                                  stderr=self.logf, env=full_env, cwd=cwd, start_new_session=True)
        self.pid = self.p.pid
        Proc.live.append(self)

    def alive(self):
        return self.p.poll() is None

    def log_tail(self, n=15):
        try:
            with open(self.log_path, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""

    def send_signal(self, sig):
        os.kill(self.pid, sig)

    def stop(self, sig=signal.SIGTERM, grace=5.0):
        """`sig` to the group, up to `grace` s to exit, then SIGKILL to the group (always: the
        group may hold children that outlived the leader)."""
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.logf.close()
        if self in Proc.live:
            Proc.live.remove(self)


RUNNING = set()  # short-lived children of run_cmd (loadgen runs, callgrind_control): killed on exit too


def run_cmd(argv, timeout, what, stdin=None):
    """Runs argv in its own process group with a time limit; a timeout kills the group and
    raises Fail naming `what`. Returns the CompletedProcess (stdout and stderr as bytes)."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else None,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    RUNNING.add(p)
    try:
        out, err = p.communicate(input=stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise Fail(f"{what}: timed out after {timeout:.0f}s: {shlex.join(argv)}")
    finally:
        RUNNING.discard(p)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def kill_all():
    """Kills every child started here that is still running."""
    for p in list(RUNNING):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in list(Proc.live):
        try:
            p.stop(grace=2.0)
        except Exception:
            pass


def install_signal_handlers(signals=(signal.SIGTERM, signal.SIGINT)):
    """On any of `signals`: kill every child, exit 128 + the signal."""
    def on_signal(signum, _frame):
        kill_all()
        sys.exit(128 + signum)
    for s in signals:
        signal.signal(s, on_signal)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def version_of(argv):
    """The first line a tool prints for its version, or `unavailable (why)` (not fatal)."""
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
        return r.stdout.decode("utf-8", "replace").strip().splitlines()[0]
    except Exception as e:
        return f"unavailable ({e})"
