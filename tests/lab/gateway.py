"""A real s2sgate process, run by `twistd s2sgate` as an operator runs it."""
from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

from .procs import Proc, ProcError, with_test_resolver

TWISTD = Path(sys.executable).parent / "twistd"
# Loopback only: never through an http_proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(config: dict, prefix="") -> str:
    """Plain values first, then one [table] per dict (enough for s2sgate's config)."""
    lines, tables = [], []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml(value)}")
    text = "\n".join(lines) + "\n"
    for key, value in tables:
        name = f"{prefix}{key}"
        text += f"\n[{name}]\n" + toml_text(value, f"{name}.")
    return text


class GatewayProcess:
    """``twistd -n s2sgate --config FILE`` on ``ip``, resolving through ``dns`` only.

    ``config``: the TOML as a dict; its ``[admin] listen`` is set to ``ip``:5281 and
    ``[s2s] listen`` to ``ip``:5269. The process runs in the test resolver's mount
    namespace, so even a stray lookup cannot reach the machine's resolver.
    """

    def __init__(self, workdir, ip, config: dict, dns):
        self.workdir = Path(workdir)
        self.ip = ip
        self.dns = dns
        config = dict(config)
        config["admin"] = dict(config.get("admin", {}), listen=f"tcp:5281:interface={ip}")
        config["s2s"] = dict(config.get("s2s", {}), listen=[f"tcp:5269:interface={ip}"])
        self.config = config
        self.configfile = self.workdir / "s2sgate.toml"
        self.runs = 0
        self.proc: Proc | None = None

    def start(self):
        if self.proc is not None and self.proc.running():
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.configfile.write_text(toml_text(self.config))
        self.runs += 1
        argv = [TWISTD, "-n", "--pidfile=", "s2sgate", "--config", self.configfile]
        self.proc = Proc("s2sgate",
                         with_test_resolver(argv, self.dns.resolv_conf, self.dns.hosts_file),
                         cwd=self.workdir, logfile=self.workdir / f"s2sgate.{self.runs}.log")
        self.proc.start()
        try:
            self.proc.wait_port(self.ip, 5281, timeout=30)
            self.proc.wait_port(self.ip, 5269, timeout=5)
        except ProcError:
            self.stop()
            raise
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def signal(self, sig):
        """SIGTERM / SIGKILL now, without waiting: see L{exited}."""
        if self.proc is not None:
            self.proc.signal(sig)

    def exited(self) -> bool:
        if self.proc is None or self.proc.exited():
            if self.proc is not None:
                self.proc.stop()   # reap it
            self.proc = None
            return True
        return False

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.workdir.glob("s2sgate.*.log")))

    def api(self, path: str) -> dict:
        """GET C{path} of the admin API (e.g. ``/api/failures``) as JSON."""
        with _NO_PROXY.open(f"http://{self.ip}:5281{path}", timeout=5) as r:
            return json.load(r)

    def metrics(self) -> str:
        with _NO_PROXY.open(f"http://{self.ip}:5281/metrics", timeout=5) as r:
            return r.read().decode()

    def link(self) -> dict:
        """The admin API's view of the component link (``state``: up/down/connecting)."""
        with _NO_PROXY.open(f"http://{self.ip}:5281/api/link", timeout=2) as r:
            return json.load(r)

    def sessions(self) -> list[dict]:
        """The admin API's s2s sessions of this process."""
        with _NO_PROXY.open(f"http://{self.ip}:5281/api/sessions", timeout=2) as r:
            return json.load(r)["sessions"]

    @property
    def admin_url(self) -> str:
        return f"http://{self.ip}:5281"

    def wait_link_up(self, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            state = self.link()
            if state["state"] == "up":
                return state
            if time.monotonic() > deadline:
                raise ProcError(f"component link not up after {timeout}s: {state}\n"
                                f"{self.proc.log_tail() if self.proc else ''}")
            time.sleep(0.05)
