"""
Several gateway processes attached to one c2s server (issue 14, part 1): what the
real-server tests of Prosody's and ejabberd's routing modules share.

- L{rendezvous}: the routing modules' choice, written once in Python (the tests
  compare what the running c2s server did with it);
- L{Traffic}: chat messages both ways between one home user and each peer user,
  every few milliseconds, and per direction what was delivered, bounced and lost;
- L{federation}: the lab both modules' tests start once: test DNS (both gateways as
  SRV targets of home.test), the home c2s server the test builds, two Prosody peers
  and two gateway processes (L{gatewayConfig});
- the gateway-process steps of the cases: L{stopGracefully}, L{startAgain},
  L{carriedBy}, L{stopLines}.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import signal
import time

import pytest
from twisted.internet import reactor, task, threads

from .chat import login
from .dns import TestDNS
from .gateway import GatewayProcess
from .prosody import Prosody

_IDS = itertools.count()

COMPONENTS = ["s2s1.home.test", "s2s2.home.test"]
SECRET = "component-secret-for-tests"
SHARED = "dialback-secret-shared-by-both-processes"


def gatewayConfig(ips, jid, otherIp):
    """One process's config: its component JID, the same dialback secret as the other,
    the other's admin API as its peer (for C{sessions --all})."""
    return {
        "local_domains": ["home.test"],
        "component": {"jid": jid, "host": ips["home"], "port": 5347, "secret": SECRET,
                      "max_retry_delay": 1},
        "s2s": {"use_starttls": "false", "shared": SHARED, "max_retry_delay": 2,
                "shutdown_timeout": 6, "outgoing": {"connection_timeout": 3},
                "dns": {"nameservers": [f"{ips['dns']}:53"], "timeout": 2, "retries": 0}},
        "admin": {"peers": [f"http://{otherIp}:5281"]},
    }


@contextlib.contextmanager
def federation(base, ips, makeHome):
    """
    Start the lab on the addresses C{ips} (dns, home, gw1, gw2, peer1, peer2), the home
    server being C{makeHome()}; yield C{{"home", "gateways"}} (gateways by component
    JID, their links up); stop everything in reverse order.
    """
    started = []
    try:
        dns = TestDNS(base / "dns", ip=ips["dns"], fallback=False)
        for name, ip in (("gw1.home.test", ips["gw1"]), ("gw2.home.test", ips["gw2"])):
            dns.add_srv("_xmpp-server._tcp.home.test", name, 5269)
            dns.add_host(name, ip)
        dns.add_host("peer1.test", ips["peer1"])
        dns.add_host("peer2.test", ips["peer2"])
        dns.start()
        started.append(dns)
        home = makeHome()
        peer1 = Prosody(base, "peer1", ips["peer1"], hosts=["peer1.test"],
                        users=[("bob@peer1.test", "bobpw")], dns=dns)
        peer2 = Prosody(base, "peer2", ips["peer2"], hosts=["peer2.test"],
                        users=[("carol@peer2.test", "carolpw")], dns=dns)
        for server in (home, peer1, peer2):
            server.start()
            started.append(server)
        gateways = {}
        for jid, ip, other in ((COMPONENTS[0], ips["gw1"], ips["gw2"]),
                               (COMPONENTS[1], ips["gw2"], ips["gw1"])):
            gw = GatewayProcess(base / jid, ip, gatewayConfig(ips, jid, other), dns)
            gw.start()
            started.append(gw)
            gateways[jid] = gw
        for gw in gateways.values():
            gw.wait_link_up()
        yield {"home": home, "gateways": gateways}
    finally:
        for proc in reversed(started):
            proc.stop()


def rendezvous(components, domain):
    """The components in the routing modules' preference order for C{domain}: the score
    of a component is the first six bytes of SHA-256("<component> <domain>")."""
    def score(c):
        return int.from_bytes(hashlib.sha256(f"{c} {domain}".encode()).digest()[:6], "big")
    return sorted(components, key=lambda c: -score(c))


async def until(predicate, what, timeout=20):
    """Poll C{predicate} without blocking the reactor; fail naming C{what}."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        await task.deferLater(reactor, 0.02)


async def sleep(seconds):
    await task.deferLater(reactor, seconds)


class Traffic:
    """
    Messages both ways between C{home} and each of C{peers}, C{burst} per direction
    every C{interval} seconds.  Directions are named ``out:<peer domain>`` (home user to
    peer) and ``in:<peer domain>``.

    C{home}: ``(jid, password, server ip)``; C{peers}: ``{jid: (password, server ip)}``.
    """

    def __init__(self, case, home, peers, *, interval=0.02, burst=3):
        self.case = case
        self.home, self.homePassword, self.homeIp = home
        self.peers = dict(peers)
        self.interval = interval
        self.burst = burst
        self.sent = {}         # id -> (direction, time)
        self.delivered = {}    # id -> time
        self.bounced = {}      # id -> condition
        self.clients = {}

    async def start(self):
        self.clients[self.home] = await login(self.home, self.homePassword, self.homeIp)
        for jid, (password, ip) in self.peers.items():
            self.clients[jid] = await login(jid, password, ip)
        for client in self.clients.values():
            client.xs.addObserver("/message", self._received, priority=10)
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor
        self._done = self._loop.start(self.interval)

    def _tick(self):
        for _ in range(self.burst):
            for peer in self.peers:
                domain = peer.split("@")[1]
                self._send(self.home, peer, f"out:{domain}")
                self._send(peer, self.home, f"in:{domain}")

    def _send(self, sender, to, direction):
        stanzaId = f"{self.case}-{next(_IDS)}"
        self.sent[stanzaId] = (direction, time.monotonic())
        self.clients[sender].send(f"<message xmlns='jabber:client' to='{to}' type='chat' "
                                  f"id='{stanzaId}'><body>{direction}</body></message>")

    def _received(self, element):
        stanzaId = element.getAttribute("id") or ""
        if stanzaId not in self.sent:
            return
        if element.getAttribute("type") == "error":
            conditions = [c.name for c in element.error.elements() if c.name != "text"]
            self.bounced[stanzaId] = conditions[0] if conditions else "?"
        else:
            self.delivered.setdefault(stanzaId, time.monotonic())

    async def stop(self):
        self._loop.stop()
        # Let stragglers arrive: until nothing changed for 2 s (at most 20 s).
        last, stable = None, time.monotonic()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = (len(self.delivered), len(self.bounced))
            if now != last:
                last, stable = now, time.monotonic()
            elif time.monotonic() - stable > 2:
                break
            await sleep(0.1)
        for client in self.clients.values():
            await client.disconnect()

    def counts(self, since=None, until=None):
        """{direction: (sent, delivered, bounced, lost)} for messages sent in [since, until)."""
        result = {}
        for stanzaId, (direction, at) in self.sent.items():
            if since is not None and at < since or until is not None and at >= until:
                continue
            s, d, b, lost = result.get(direction, (0, 0, 0, 0))
            delivered, bounced = stanzaId in self.delivered, stanzaId in self.bounced
            result[direction] = (s + 1, d + delivered, b + bounced,
                                 lost + (not delivered and not bounced))
        return dict(sorted(result.items()))

    def report(self, title, **window):
        print(f"\n{title}")
        print(f"  {'direction':<12} {'sent':>6} {'delivered':>10} {'bounced':>8} {'lost':>6}")
        for direction, (s, d, b, lost) in self.counts(**window).items():
            print(f"  {direction:<12} {s:>6} {d:>10} {b:>8} {lost:>6}")
        if self.bounced:
            print(f"  bounce conditions: {sorted(set(self.bounced.values()))}")

    def firstDeliveredAfter(self, direction, when):
        """When the first message of C{direction} sent after C{when} arrived."""
        times = [self.delivered[i] for i, (d, at) in self.sent.items()
                 if d == direction and at >= when and i in self.delivered]
        return min(times) if times else None


async def stopGracefully(gw):
    """SIGTERM, and wait until the process has exited (its drain done)."""
    gw.signal(signal.SIGTERM)
    await until(gw.exited, f"{gw.ip} exited after SIGTERM")


async def startAgain(gw):
    await threads.deferToThread(gw.start)
    await until(lambda: gw.link()["state"] == "up", f"{gw.ip} link up")


def carriedBy(gw, direction="out"):
    """The remote domains this process has a stream with (outbound by default)."""
    return {s["remote"] for s in gw.sessions() if s["direction"] == direction}


def stopLines(gw):
    """The log lines in which the process reported its drain."""
    return [line for line in gw.log_text().splitlines() if "s2sgate stopped after" in line]
