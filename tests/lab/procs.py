"""Process helpers: every process in its own session, output to a log file."""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path


class ProcError(RuntimeError):
    pass


def tail(path, n=40) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def port_open(ip: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


class Proc:
    """A child process in its own session/process group, output to ``logfile``."""

    def __init__(self, name, argv, *, env=None, cwd=None, logfile):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = env
        self.cwd = cwd
        self.logfile = Path(logfile)
        self.popen: subprocess.Popen | None = None

    def start(self) -> "Proc":
        if self.popen is not None:
            raise ProcError(f"{self.name} already started")
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.logfile, "ab")
        try:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True)
        finally:
            log.close()
        return self

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, n=40) -> str:
        return tail(self.logfile, n)

    def wait_port(self, ip, port, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            if port_open(ip, port):
                return
            if self.popen is None or self.popen.poll() is not None:
                rc = self.popen.returncode if self.popen else None
                raise ProcError(f"{self.name} exited (rc={rc}) before {ip}:{port} opened; "
                                f"last log lines:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ProcError(f"{self.name}: {ip}:{port} not open after {timeout}s; "
                                f"last log lines:\n{self.log_tail()}")
            time.sleep(0.05)

    def signal(self, sig):
        """Send C{sig} to the process group without waiting (SIGTERM, SIGKILL)."""
        if self.popen is not None:
            _killpg(self.popen.pid, sig)

    def exited(self) -> bool:
        """True once no process of the group is left (reaped or not)."""
        if self.popen is None:
            return True
        self.popen.poll()
        return not _group_alive(self.popen.pid)

    def stop(self, timeout=10):
        """SIGTERM the process group, wait for the whole group to go, then SIGKILL.
        Idempotent."""
        p = self.popen
        if p is None:
            return
        pgid = p.pid  # start_new_session: pgid == pid
        _killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p.poll()
            if not _group_alive(pgid):
                break
            time.sleep(0.05)
        _killpg(pgid, signal.SIGKILL)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 5
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)


    def kill(self, timeout=5):
        """SIGKILL the process group at once (a crash, as kill -9), and reap it."""
        p = self.popen
        if p is None:
            return
        _killpg(p.pid, signal.SIGKILL)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + timeout
        while _group_alive(p.pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def _group_alive(pgid) -> bool:
    """True while a non-zombie process of group ``pgid`` exists."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] = state, fields[2] = pgrp
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def with_test_resolver(argv, resolv_conf, hosts_file):
    """Wrap ``argv`` so it runs in a private mount namespace where /etc/resolv.conf
    and /etc/hosts are the given test files (needs root)."""
    script = ('mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/hosts '
              '&& shift 2 && exec "$@"')
    # sh -c SCRIPT $0 $1 $2 ARGV...
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
            "test-resolver", str(resolv_conf), str(hosts_file), *[str(a) for a in argv]]


def shell_join(argv) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)
