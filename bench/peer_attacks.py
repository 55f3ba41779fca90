"""
What a misbehaving peer costs a running gateway (issue 10: dialback verify
fan-out, unauthenticated streams, leaked connect results), in figures.

    python bench/peer_attacks.py [--streams 5] [--connections 100]

Run from the repository root as root (the test DNS's mount namespace).
Uses the lab of tests/test_misbehaving_peers.py on 127.0.3.1-127.0.3.40:
a twistd gateway with the default [s2s.limits] and negotiation_timeout = 20,
*.evil.test pointing at a blackhole that accepts and never answers.  Prints:

  fan-out   one address opens N streams, 10 <db:result/> each: verify
            connections opened and held, then the seconds they outlive
            their streams once the attacker hangs up
  unauth    one address opens M connections and sends headers only: how
            many the gateway keeps open
  probe     the text a peer reads back when our verify connect is refused
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.endpoints import TCP4ServerEndpoint  # noqa: E402
from twisted.internet.protocol import Factory  # noqa: E402

from tests.lab.dns import TestDNS  # noqa: E402
from tests.lab.gateway import GatewayProcess  # noqa: E402
from tests.test_misbehaving_peers import (  # noqa: E402
    BLACKHOLE_IP,
    CLOSED_IP,
    DNS_IP,
    GATEWAY_IP,
    LEGIT_IP,
    Authoritative,
    Blackhole,
    askToVerify,
    attacker,
    hang,
    openStream,
)


async def sleep(reactor, seconds):
    await task.deferLater(reactor, seconds)


async def waitFor(reactor, predicate, timeout):
    start = time.monotonic()
    while not predicate() and time.monotonic() - start < timeout:
        await sleep(reactor, 0.05)
    return time.monotonic() - start


async def fanOut(reactor, blackhole, streams):
    peers = []
    for s in range(streams):
        peer = await openStream(attacker(0))
        askToVerify(peer, [f"b{s}d{i}.evil.test" for i in range(10)])
        peers.append(peer)
    await sleep(reactor, 2)
    opened, held = blackhole.opened, blackhole.open
    errors = sum(len(p.results("error")) for p in peers)
    alive = sum(not p.closed for p in peers)
    hang(peers)
    outlive = await waitFor(reactor, lambda: blackhole.open == 0, 40)
    print(f"fan-out   {streams} streams x 10 db:result from one address: "
          f"{opened} verify connections opened, {held} held; {errors} dialback errors; "
          f"{alive}/{streams} attacker streams still open; "
          f"verify connections outlive their streams by {outlive:.2f} s"
          + (" (still open at 40 s)" if blackhole.open else ""))


async def unauthenticated(reactor, connections):
    peers = []
    for _ in range(connections):
        peers.append(await openStream(attacker(1)))
    await sleep(reactor, 1)
    held = sum(not p.closed for p in peers)
    refused = sum(p.streamError() is not None for p in peers)
    hang(peers)
    print(f"unauth    {connections} header-only connections from one address: "
          f"{held} held open by the gateway after 1 s, {refused} refused with a stream error")


async def probe(reactor):
    peer = await openStream(attacker(2), sender="probe.test")
    askToVerify(peer, ["probe.test"])
    await waitFor(reactor, lambda: peer.results(), 15)
    hang([peer])
    answer = (peer.results() or ["(no answer)"])[0]
    print(f"probe     the peer reads: {answer}")
    print(f"          leaks {CLOSED_IP}:5999 / 'refused': "
          f"{CLOSED_IP in answer or 'refused' in answer}")


async def main(reactor, args):
    base = Path(tempfile.mkdtemp(prefix="peer-attacks-"))
    dns = TestDNS(base / "dns", ip=DNS_IP, fallback=False)
    dns.records.append(f"address=/evil.test/{BLACKHOLE_IP}")
    dns.add_srv("_xmpp-server._tcp.probe.test", "internal.test", 5999)
    dns.add_host("internal.test", CLOSED_IP)
    gateway = GatewayProcess(base / "gateway", GATEWAY_IP, {
        "local_domains": ["home.test"],
        "component": {"jid": "s2s.home.test", "host": GATEWAY_IP, "port": 5347,
                      "secret": "component-secret", "max_retry_delay": 5},
        "s2s": {"use_starttls": "false", "shared": "dialback-secret-for-benchmarks",
                "negotiation_timeout": 20, "outgoing": {"connection_timeout": 3},
                "dns": {"nameservers": [f"{DNS_IP}:53"], "timeout": 2, "retries": 0}},
    }, dns)
    blackhole = Blackhole()
    ports = []
    try:
        dns.start()
        ports.append(await TCP4ServerEndpoint(reactor, 5269, interface=BLACKHOLE_IP)
                     .listen(blackhole))
        ports.append(await TCP4ServerEndpoint(reactor, 5269, interface=LEGIT_IP)
                     .listen(Factory.forProtocol(Authoritative)))
        gateway.start()
        await fanOut(reactor, blackhole, args.streams)
        await unauthenticated(reactor, args.connections)
        await probe(reactor)
    finally:
        for port in ports:
            await port.stopListening()
        gateway.stop()
        dns.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=5)
    parser.add_argument("--connections", type=int, default=100)
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
