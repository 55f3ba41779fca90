"""
Misbehaving peers against a real gateway process (issue 10: the dialback
verify fan-out, connect results leaking to unauthenticated peers, and
unauthenticated streams held open), with the shipped default limits.

  attackers 127.0.3.20-.39 ─ raw s2s ─▶ s2sgate (twistd, 127.0.3.2:5269)
      *.evil.test  ─ DNS ─▶ 127.0.3.3:5269, a "blackhole" that accepts and never answers
      probe.test   ─ SRV ─▶ internal.test:5999 = 127.0.3.4:5999, where nothing listens
  legitimate peer 127.0.3.40 ─ raw s2s ─▶ s2sgate
      legit.test   ─ DNS ─▶ 127.0.3.5:5269, an authoritative server that says "valid"

Everything resolves through the test DNS (127.0.3.1) only.  The blackhole
counts the verify connections the gateway holds open: that is the cost of
the attack.
"""

import re
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from tests.lab.dns import TestDNS
from tests.lab.gateway import GatewayProcess

pytestmark = pytest.mark.servers

DNS_IP, GATEWAY_IP, BLACKHOLE_IP, CLOSED_IP, LEGIT_IP = (
    "127.0.3.1", "127.0.3.2", "127.0.3.3", "127.0.3.4", "127.0.3.5")
LEGIT_PEER_IP = "127.0.3.40"
HEADER = ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
          "xmlns:db='jabber:server:dialback' from='{sender}' to='home.test' version='1.0'>")


def attacker(n):
    """The n-th attacker source address (127.0.3.20 ...)."""
    return f"127.0.3.{20 + n}"


class Blackhole(Factory):
    """Accepts connections and never says a word; counts those open."""

    def __init__(self):
        self.open = 0
        self.opened = 0

    def buildProtocol(self, addr):
        hole = Protocol()
        factory = self

        def made():
            factory.open += 1
            factory.opened += 1

        def lost(reason):
            factory.open -= 1

        hole.connectionMade = made
        hole.connectionLost = lost
        return hole


class Authoritative(Protocol):
    """legit.test's authoritative server: every <db:verify/> is valid."""

    def connectionMade(self):
        self.data = ""

    def dataReceived(self, data):
        self.data += data.decode()
        if "<stream:stream" in self.data and not hasattr(self, "started"):
            self.started = True
            self.transport.write(
                b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/"
                b"streams' xmlns:db='jabber:server:dialback' from='legit.test' id='legit-1' "
                b"version='1.0'><stream:features/>")
        match = re.search(r"<db:verify([^>]*)>", self.data)
        if match:
            attrs = dict(re.findall(r"(\w+)=['\"]([^'\"]*)['\"]", match.group(1)))
            self.data = ""
            self.transport.write(
                f"<db:verify from='{attrs['to']}' to='{attrs['from']}' id='{attrs['id']}' "
                f"type='valid'/>".encode())


class Peer(Protocol):
    """A raw s2s peer: what it sent and what came back."""

    def __init__(self):
        self.text = ""
        self.closed = False

    def dataReceived(self, data):
        self.text += data.decode("utf-8", "replace")

    def connectionLost(self, reason):
        self.closed = True

    def send(self, text):
        self.transport.write(text.encode())

    def results(self, kind=None):
        """The <db:result/> elements received (as text), of C{type=kind} if given."""
        found = re.findall(r"<db:result[^>]*?(?:/>|>.*?</db:result>)", self.text, re.S)
        return [r for r in found if kind is None or f"type='{kind}'" in r or
                f'type="{kind}"' in r]

    def streamError(self):
        match = re.search(r"<stream:error><([\w-]+)", self.text)
        return match.group(1) if match else None


async def until(predicate, what, timeout=15):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        await task.deferLater(reactor, 0.02)


async def openStream(source, sender="x.evil.test"):
    """A stream from C{source} that got its features (or was refused)."""
    peer = Peer()
    endpoint = TCP4ClientEndpoint(reactor, GATEWAY_IP, 5269, bindAddress=(source, 0))
    await connectProtocol(endpoint, peer)
    peer.send(HEADER.format(sender=sender))
    await until(lambda: "<stream:features" in peer.text or peer.streamError() or peer.closed,
                f"features for a stream from {source}")
    return peer


def askToVerify(peer, domains):
    peer.send("".join(f"<db:result from='{d}' to='home.test'>key</db:result>" for d in domains))


def hang(peers):
    for peer in peers:
        if not peer.closed:
            peer.transport.abortConnection()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("misbehaving-peers")
    started = []
    listening = []
    try:
        dns = TestDNS(base / "dns", ip=DNS_IP, fallback=False)
        dns.records.append(f"address=/evil.test/{BLACKHOLE_IP}")
        dns.add_srv("_xmpp-server._tcp.probe.test", "internal.test", 5999)
        dns.add_host("internal.test", CLOSED_IP)
        dns.add_host("legit.test", LEGIT_IP)
        dns.start()
        started.append(dns)
        blackhole = Blackhole()
        listening.append(pytest_twisted.blockon(
            TCP4ServerEndpoint(reactor, 5269, interface=BLACKHOLE_IP).listen(blackhole)))
        listening.append(pytest_twisted.blockon(
            TCP4ServerEndpoint(reactor, 5269, interface=LEGIT_IP).listen(
                Factory.forProtocol(Authoritative))))
        gateway = GatewayProcess(base / "gateway", GATEWAY_IP, {
            "local_domains": ["home.test"],
            "component": {"jid": "s2s.home.test", "host": GATEWAY_IP, "port": 5347,
                          "secret": "component-secret", "max_retry_delay": 5},
            "s2s": {"use_starttls": "false", "shared": "dialback-secret-for-tests",
                    "negotiation_timeout": 20, "outgoing": {"connection_timeout": 3},
                    "dns": {"nameservers": [f"{DNS_IP}:53"], "timeout": 2, "retries": 0}},
        }, dns)
        gateway.start()
        started.append(gateway)
        yield {"gateway": gateway, "blackhole": blackhole}
    finally:
        for port in listening:
            pytest_twisted.blockon(port.stopListening())
        for proc in reversed(started):
            proc.stop()


@pytest.fixture
def blackhole(lab):
    """The blackhole, empty before and after the test (a leftover would skew the next one)."""
    hole = lab["blackhole"]
    deadline = time.monotonic() + 40
    while hole.open and time.monotonic() < deadline:
        pytest_twisted.blockon(task.deferLater(reactor, 0.1))
    assert hole.open == 0, "verify connections of an earlier test are still open"
    yield hole


# the verify fan-out


@pytest_twisted.ensureDeferred
async def test_closing_a_stream_aborts_its_verify_connections_at_once(lab, blackhole):
    peer = await openStream(attacker(0))
    askToVerify(peer, [f"d{i}.evil.test" for i in range(10)])
    await until(lambda: blackhole.open == 10, "10 verify connections to the blackhole")
    closed = time.monotonic()
    peer.transport.abortConnection()
    await until(lambda: blackhole.open == 0, "verify connections closed with their stream",
                timeout=3)
    print(f"verify connections gone {time.monotonic() - closed:.2f}s after their stream")


@pytest_twisted.ensureDeferred
async def test_verifies_over_the_stream_bound_get_a_dialback_error_and_the_stream_stays(
        lab, blackhole):
    before = blackhole.opened
    peer = await openStream(attacker(1))
    askToVerify(peer, [f"d{i}.evil.test" for i in range(12)])
    await until(lambda: len(peer.results("error")) == 2, "two dialback errors")
    try:
        assert all("resource-constraint" in r for r in peer.results("error"))
        assert "d10.evil.test" in peer.results("error")[0]
        await task.deferLater(reactor, 0.3)
        assert (blackhole.open, blackhole.opened - before) == (10, 10)
        assert not peer.closed and peer.streamError() is None
    finally:
        hang([peer])


@pytest_twisted.ensureDeferred
async def test_one_address_holds_at_most_its_verify_budget_and_a_legitimate_peer_still_verifies(
        lab, blackhole):
    before = blackhole.opened
    peers = []
    try:
        for s in range(4):
            peer = await openStream(attacker(2))
            askToVerify(peer, [f"s{s}d{i}.evil.test" for i in range(10)])
            peers.append(peer)
        await until(lambda: sum(len(p.results("error")) for p in peers) == 10,
                    "the fourth stream's ten requests refused")
        assert blackhole.open == 30 and blackhole.opened - before == 30
        assert all("resource-constraint" in r for r in peers[3].results("error"))

        legit = await openStream(LEGIT_PEER_IP, sender="legit.test")
        askToVerify(legit, ["legit.test"])
        await until(lambda: legit.results(), "an answer to the legitimate peer")
        assert legit.results("valid"), legit.text
        hang([legit])
    finally:
        hang(peers)


@pytest_twisted.ensureDeferred
async def test_verify_legs_are_bounded_in_total(lab, blackhole):
    peers = []
    try:
        for a in range(10):
            for s in range(3):
                peer = await openStream(attacker(3 + a))
                askToVerify(peer, [f"t{a}s{s}d{i}.evil.test" for i in range(10)])
                peers.append(peer)
        await until(lambda: blackhole.open == 300, "300 verify connections", timeout=30)
        late = await openStream(attacker(13))
        askToVerify(late, ["late.evil.test"])
        peers.append(late)
        await until(lambda: late.results(), "an answer over the total bound")
        [refused] = late.results("error")
        assert "resource-constraint" in refused
        await task.deferLater(reactor, 0.3)
        assert blackhole.open == 300
    finally:
        hang(peers)


# connect results (a port scan through our connector)


@pytest_twisted.ensureDeferred
async def test_a_failed_verify_tells_the_peer_nothing_of_where_we_connected(lab, blackhole):
    peer = await openStream(attacker(14), sender="probe.test")
    askToVerify(peer, ["probe.test"])
    await until(lambda: peer.results(), "an answer to the probe")
    hang([peer])
    [answer] = peer.results("error")
    assert "could not verify the key" in answer
    for leak in (CLOSED_IP, "5999", "refused", "internal.test", "timed out"):
        assert leak not in peer.text
    # Operators see it all: failure log (s2sgate failures), metrics.
    failures = lab["gateway"].api("/api/failures")["failures"]
    [entry] = [f for f in failures if f["remote"] == "probe.test"]
    assert entry["kind"] == "dialback verify"
    assert f"{CLOSED_IP}:5999" in entry["text"] and "connection refused" in entry["text"]
    assert re.search(r'^s2sgate_dialback_verifies_total\{result="failed"\} [1-9]',
                     lab["gateway"].metrics(), re.M)


# unauthenticated streams


@pytest_twisted.ensureDeferred
async def test_unauthenticated_streams_from_one_address_are_bounded(lab, blackhole):
    peers = []
    try:
        for _ in range(32):
            peers.append(await openStream(attacker(15)))
        assert all(p.streamError() is None for p in peers)
        refused = await openStream(attacker(15))
        peers.append(refused)
        await until(lambda: refused.closed, "the refused connection closed", timeout=2)
        assert refused.streamError() == "policy-violation"
        other = await openStream(attacker(16))
        peers.append(other)
        assert other.streamError() is None and "<stream:features" in other.text
    finally:
        hang(peers)
