#!/usr/bin/env python3
"""
Happy eyeballs: time to connect to a peer whose first address black-holes.

``python bench/happy_eyeballs.py [--timeout 3] [--runs 5]``

Races the addresses as the gateway does (``connection_attempt_delay`` 250 ms) and, for
comparison, one address after the other (the attempt delay set to the connection timeout,
which is what the connector did before). Uses 127.0.6.20/21 only; no DNS (in-memory records).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402
from twisted.names import dns  # noqa: E402

from s2sgate.net.connector import ATTEMPT_DELAY, Connector  # noqa: E402
from s2sgate.net.resolver import S2SResolver  # noqa: E402
from tests.lab.blackhole import BlackHole  # noqa: E402
from tests.test_resolver import FakeResolver, a, srv  # noqa: E402

DEAD, ALIVE = "127.0.6.20", "127.0.6.21"
XS = "_xmpp-server._tcp.peer.test"


async def once(port, delay, timeout):
    records = {(XS, dns.SRV): [srv(XS, "host.peer.test", port)],
               ("host.peer.test", dns.A): [a("host.peer.test", DEAD), a("host.peer.test", ALIVE)],
               ("host.peer.test", dns.AAAA): []}
    connector = Connector(reactor, S2SResolver(reactor, resolver=FakeResolver(records)),
                          timeout=timeout, attemptDelay=delay)
    started = time.monotonic()
    connection = await connector.connect("peer.test", Factory.forProtocol(Protocol))
    took = time.monotonic() - started
    connection.protocol.transport.loseConnection()
    assert connection.address.ip == ALIVE
    return took


async def main(reactor, args):
    server = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface=ALIVE)
    port = server.getHost().port
    hole = BlackHole(DEAD, port)
    try:
        rows = []
        for label, delay in ((f"raced ({ATTEMPT_DELAY * 1000:.0f} ms attempt delay)",
                              ATTEMPT_DELAY),
                             (f"one after the other ({args.timeout} s timeout)", args.timeout)):
            times = [await once(port, delay, args.timeout) for _ in range(args.runs)]
            rows.append((label, statistics.median(times), max(times)))
    finally:
        hole.close()
        await server.stopListening()
    print(f"dead first address, {args.runs} runs each: median / max seconds to connect")
    for label, median, worst in rows:
        print(f"  {label:45} {median:6.3f} / {worst:6.3f}")
    print(f"  speed-up {rows[1][1] / rows[0][1]:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--timeout", type=float, default=3)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    task.react(lambda r: defer.ensureDeferred(main(r, args)))
