# -*- test-case-name: tests.test_connector -*-
"""
An address whose TCP connects hang: a listening socket that never accepts,
its accept queue already full. Linux then drops further SYNs, so a client
sees what a dead or firewalled peer gives it (no refusal, only a timeout);
a closed port on loopback would refuse at once instead.
"""

from __future__ import annotations

import socket


class BlackHole:
    """C{host:port} that swallows connection attempts until L{close}."""

    def __init__(self, host: str, port: int = 0):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(0)         # room for one connection, never accepted
        self.host, self.port = self.listener.getsockname()[:2]
        self.filler = socket.create_connection((self.host, self.port), timeout=2)

    def close(self) -> None:
        self.filler.close()
        self.listener.close()
