"""Test DNS: dnsmasq answering only from its own records, never forwarding."""
from __future__ import annotations

import socket
from pathlib import Path

from .procs import Proc, ProcError

_CANDIDATE_IPS = ["127.0.0.53", "127.0.0.153", "127.0.0.253", "127.0.1.53"]


def _udp_free(ip, port) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind((ip, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def pick_dns_ip(preferred="127.0.0.53", port=53) -> str:
    for ip in [preferred] + [c for c in _CANDIDATE_IPS if c != preferred]:
        if _udp_free(ip, port):
            return ip
    raise ProcError(f"no free loopback address for the test DNS on port {port}")


class TestDNS:
    __test__ = False  # not a pytest class

    def __init__(self, workdir, ip="127.0.0.53", port=53, fallback=True):
        """C{fallback=False}: only C{ip}, never another candidate address."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.requested_ip = ip
        self.fallback = fallback
        self.ip = ip
        self.port = port
        self.records: list[str] = []
        self.proc: Proc | None = None
        self.conf = self.workdir / "dnsmasq.conf"
        self.resolv_conf = self.workdir / "resolv.conf"
        self.hosts_file = self.workdir / "hosts"

    # -- records (before start) -------------------------------------------
    def add_host(self, name, ip):
        self.records.append(f"host-record={name},{ip}")

    def add_srv(self, service_domain, target, port, priority=0, weight=5):
        self.records.append(f"srv-host={service_domain},{target},{port},{priority},{weight}")

    def add_no_service(self, service_domain):
        self.records.append(f"srv-host={service_domain}")

    # -- lifecycle --------------------------------------------------------
    @property
    def nameservers(self):
        return [(self.ip, self.port)]

    def start(self):
        if self.proc is not None:
            return self
        if self.fallback:
            self.ip = pick_dns_ip(self.requested_ip, self.port)
        elif not _udp_free(self.requested_ip, self.port):
            raise ProcError(f"{self.requested_ip}:{self.port} is in use; no test DNS")
        lines = [
            "no-resolv", "no-hosts", "no-poll", "bind-interfaces",
            f"listen-address={self.ip}", f"port={self.port}",
            "local=/test/",
            f"pid-file={self.workdir / 'dnsmasq.pid'}",
            "log-queries", "log-facility=-", "user=root",
            *self.records, "",
        ]
        self.conf.write_text("\n".join(lines))
        # Port 53 is only used when it is the standard one; resolv.conf can't carry a port.
        self.resolv_conf.write_text(f"nameserver {self.ip}\noptions timeout:2 attempts:2\n")
        self.hosts_file.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
        self.proc = Proc("dnsmasq", ["dnsmasq", "-k", f"--conf-file={self.conf}"],
                         logfile=self.workdir / "dnsmasq.log").start()
        self.proc.wait_port(self.ip, self.port, timeout=10)  # dnsmasq also listens on TCP
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def log_text(self) -> str:
        try:
            return (self.workdir / "dnsmasq.log").read_text(errors="replace")
        except OSError:
            return ""
