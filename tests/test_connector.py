# -*- test-case-name: tests.test_connector -*-
"""
Tests for L{s2sgate.net.connector}: every target and address is tried in order,
failures become per-attempt diagnostics and the right bounce condition.
No sockets: fake endpoints, or Twisted's MemoryReactorClock.
"""

import random
import time

import pytest
import pytest_twisted
from twisted.internet import defer, error, task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.names import dns
from twisted.names import error as dnserror
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from s2sgate.net.connector import (
    ATTEMPT_DELAY,
    Attempt,
    ConnectFailed,
    Connector,
    connect,
    interleave,
)
from s2sgate.net.resolver import Address, S2SResolver, Target
from tests.lab.blackhole import BlackHole
from tests.test_resolver import FakeResolver, a, aaaa, result, srv

XS = "_xmpp-server._tcp.b.test"
XSS = "_xmpps-server._tcp.b.test"


class FakeEndpoint:
    def __init__(self, outcomes, tried, ip, port, family):
        self.outcomes, self.tried = outcomes, tried
        self.ip, self.port, self.family = ip, port, family

    def connect(self, factory):
        self.tried.append((self.ip, self.port, self.family, factory))
        out = self.outcomes.get(self.ip, error.ConnectionRefusedError())
        if isinstance(out, defer.Deferred):
            # Connects when the test fires it (with the transport, or None).
            return out.addCallback(self._built, factory)
        if isinstance(out, BaseException):
            return defer.fail(out)
        return defer.succeed(self._built(None, factory))

    def _built(self, transport, factory):
        """As a real endpoint: the protocol the factory builds, connected."""
        protocol = factory.buildProtocol(IPv4Address("TCP", self.ip, self.port))
        if transport is not None:
            protocol.makeConnection(transport)
        return protocol


def setup(records, outcomes=None, **kw):
    """Resolver over fake DNS and an endpointFor whose attempts are recorded."""
    kw.setdefault("rng", random.Random(1))
    res = S2SResolver(task.Clock(), resolver=FakeResolver(records), **kw)
    tried = []
    outcomes = outcomes or {}

    def endpointFor(ip, port, family):
        return FakeEndpoint(outcomes, tried, ip, port, family)

    return res, tried, endpointFor


def two_hosts():
    return {
        (XS, dns.SRV): [
            srv(XS, "one.b.test", 5269, priority=10),
            srv(XS, "two.b.test", 5270, priority=20),
        ],
        ("one.b.test", dns.A): [a("one.b.test", "127.0.0.11")],
        ("one.b.test", dns.AAAA): [],
        ("two.b.test", dns.A): [a("two.b.test", "127.0.0.12")],
        ("two.b.test", dns.AAAA): [aaaa("two.b.test", "::12")],
    }


def factory():
    return Factory.forProtocol(Protocol)


def test_second_address_after_first_refused():
    """The first address refuses: the next one (next target) is tried and wins."""
    res, tried, ep = setup(two_hosts(), {"127.0.0.12": "ok"})
    attempts = []
    proto, target, address = result(
        connect(task.Clock(), res, "b.test", factory(), endpointFor=ep, attempts=attempts)
    )
    assert isinstance(proto, Protocol)
    assert target == Target("two.b.test", 5270)
    assert address == Address("127.0.0.12", 5270, 4)
    assert [t[:2] for t in tried] == [("127.0.0.11", 5269), ("127.0.0.12", 5270)]
    assert attempts == [
        Attempt("connect", "127.0.0.11:5269 (one.b.test)", "connection refused"),
        Attempt("connect", "127.0.0.12:5270 (two.b.test)", "connected in 0 ms", ok=True),
    ]


def test_all_refused_is_remote_server_not_found():
    res, tried, ep = setup(two_hosts())
    with pytest.raises(ConnectFailed) as e:
        result(connect(task.Clock(), res, "b.test", factory(), endpointFor=ep))
    f = e.value
    assert f.condition == "remote-server-not-found"
    assert f.text.startswith("connecting to [::12]:5270 (two.b.test): connection refused")
    assert [(x.step, x.target) for x in f.attempts] == [
        ("connect", "127.0.0.11:5269 (one.b.test)"),
        ("connect", "127.0.0.12:5270 (two.b.test)"),
        ("connect", "[::12]:5270 (two.b.test)"),
    ]
    assert len(tried) == 3


def test_all_timed_out_is_remote_server_timeout():
    t = error.TimeoutError()
    res, _, ep = setup(two_hosts(), {"127.0.0.11": t, "127.0.0.12": t, "::12": t})
    with pytest.raises(ConnectFailed) as e:
        result(connect(task.Clock(), res, "b.test", factory(), endpointFor=ep))
    assert e.value.condition == "remote-server-timeout"
    assert "timed out" in e.value.text
    assert all(x.timedOut for x in e.value.attempts)


def test_mixed_timeout_and_refused_is_not_found():
    t = error.TimeoutError()
    res, _, ep = setup(two_hosts(), {"127.0.0.11": t, "127.0.0.12": t})
    with pytest.raises(ConnectFailed) as e:
        result(connect(task.Clock(), res, "b.test", factory(), endpointFor=ep))
    assert e.value.condition == "remote-server-not-found"


def test_srv_timeout_is_remote_server_timeout():
    res, tried, ep = setup({(XS, dns.SRV): dnserror.DNSQueryTimeoutError("x")})
    with pytest.raises(ConnectFailed) as e:
        result(connect(task.Clock(), res, "b.test", factory(), endpointFor=ep))
    assert e.value.condition == "remote-server-timeout"
    assert e.value.attempts[0].step == "dns"
    assert tried == []


def test_no_service_text():
    res, _, ep = setup({(XS, dns.SRV): [srv(XS, ".", 0)]})
    with pytest.raises(ConnectFailed) as e:
        result(connect(task.Clock(), res, "b.test", factory(), endpointFor=ep))
    assert e.value.condition == "remote-server-not-found"
    assert e.value.text == "DNS: b.test has no XMPP service (SRV '.')"


def test_nxdomain_domain():
    """No SRV and no such domain: a DNS attempt naming the domain."""
    res, _, ep = setup({})
    with pytest.raises(ConnectFailed) as e:
        result(connect(task.Clock(), res, "nothing.test", factory(), endpointFor=ep))
    assert e.value.condition == "remote-server-not-found"
    assert e.value.text == "DNS: no such domain nothing.test"
    assert e.value.attempts == [
        Attempt("dns", "nothing.test", "DNS: no such domain nothing.test")
    ]


def test_dns_failure_of_one_target_then_connect():
    """A target without addresses is recorded and skipped."""
    recs = two_hosts()
    del recs[("one.b.test", dns.A)]
    del recs[("one.b.test", dns.AAAA)]
    res, _, ep = setup(recs, {"127.0.0.12": "ok"})
    attempts = []
    _, target, _ = result(
        connect(task.Clock(), res, "b.test", factory(), endpointFor=ep, attempts=attempts)
    )
    assert target.host == "two.b.test"
    assert attempts[0] == Attempt("dns", "one.b.test", "DNS: no such domain one.b.test")
    assert [a.ok for a in attempts[1:]] == [True]


def test_override_connects_to_ip():
    res, tried, ep = setup({}, {"192.0.2.7": "ok"}, overrides={"b.test": ("192.0.2.7", 5270)})
    _, target, address = result(connect(task.Clock(), res, "b.test", factory(), endpointFor=ep))
    assert address == Address("192.0.2.7", 5270, 4)
    assert res.resolver.queries == []


def test_direct_tls_targets_first_when_enabled():
    """With a TLS factory, the _xmpps-server target is tried first, wrapped in TLS."""
    recs = {
        (XSS, dns.SRV): [srv(XSS, "tls.b.test", 5223)],
        (XS, dns.SRV): [srv(XS, "plain.b.test", 5269)],
        ("tls.b.test", dns.A): [a("tls.b.test", "127.0.0.20")],
        ("tls.b.test", dns.AAAA): [],
        ("plain.b.test", dns.A): [a("plain.b.test", "127.0.0.21")],
        ("plain.b.test", dns.AAAA): [],
    }
    res, tried, ep = setup(recs, {"127.0.0.20": "ok"})
    asked = []

    def tlsFactory(target):
        asked.append(target)
        return optionsForClientTLS("b.test")

    proto, target, _ = result(
        connect(task.Clock(), res, "b.test", factory(), endpointFor=ep, directTLS=tlsFactory)
    )
    assert target == Target("tls.b.test", 5223, True)
    assert asked == [target]
    assert isinstance(tried[0][3], TLSMemoryBIOFactory)
    assert isinstance(proto, Protocol)


def test_direct_tls_not_looked_up_without_factory():
    res, tried, ep = setup(two_hosts(), {"127.0.0.11": "ok"})
    result(connect(task.Clock(), res, "b.test", factory(), endpointFor=ep))
    assert XSS not in [q[0] for q in res.resolver.queries]


def test_cancel_stops_connecting():
    """Cancelling the connect cancels the pending attempt and the timer; no further tries."""
    pending = defer.Deferred()
    clock = task.Clock()
    res, tried, ep = setup(two_hosts(), {"127.0.0.11": pending})
    d = defer.ensureDeferred(connect(clock, res, "b.test", factory(), endpointFor=ep))
    d.cancel()
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(defer.CancelledError)
    assert pending.called
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert len(tried) == 1


def test_default_endpoints_on_memory_reactor():
    """Without endpointFor, TCP4/TCP6 endpoints go to the reactor with the timeout."""
    reactor = MemoryReactorClock()
    res = S2SResolver(task.Clock(), resolver=FakeResolver(two_hosts()), rng=random.Random(1))
    d = defer.ensureDeferred(connect(reactor, res, "b.test", factory(), timeout=7))
    host, port, wrapping, timeout, _ = reactor.tcpClients[0]
    assert (host, port, timeout) == ("127.0.0.11", 5269, 7)
    wrapping.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
    host, port, wrapping, timeout, _ = reactor.tcpClients[1]
    assert (host, port) == ("127.0.0.12", 5270)
    proto = wrapping.buildProtocol(IPv4Address("TCP", host, port))
    proto.makeConnection(StringTransport())
    got = []
    d.addCallback(got.append)
    assert got and got[0][2] == Address("127.0.0.12", 5270, 4)


# --- happy eyeballs (RFC 8305) ----------------------------------------------------


def dual_stack():
    """One target with two IPv4 and two IPv6 addresses."""
    return {
        (XS, dns.SRV): [srv(XS, "dual.b.test", 5269)],
        ("dual.b.test", dns.A): [a("dual.b.test", "127.0.0.11"), a("dual.b.test", "127.0.0.12")],
        ("dual.b.test", dns.AAAA): [aaaa("dual.b.test", "::11"), aaaa("dual.b.test", "::12")],
    }


class Hanging(defer.Deferred):
    """A connection attempt that neither connects nor fails until told; notes its cancel."""

    def __init__(self):
        self.cancelled = False

        def canceller(d):
            self.cancelled = True

        super().__init__(canceller)


def race(records, outcomes, **kw):
    clock = task.Clock()
    res, tried, ep = setup(records, outcomes, **kw)
    attempts = []
    d = connect(clock, res, "b.test", factory(), endpointFor=ep, attempts=attempts)
    return clock, d, tried, attempts


def test_interleave_alternates_families_preferred_first():
    v4 = [Address("127.0.0.1", 1, 4), Address("127.0.0.2", 1, 4), Address("127.0.0.3", 1, 4)]
    v6 = [Address("::1", 1, 6)]
    assert interleave(v4 + v6) == [v4[0], v6[0], v4[1], v4[2]]
    assert interleave(v6 + v4) == [v6[0], v4[0], v4[1], v4[2]]


def test_next_address_waits_for_the_attempt_delay():
    """While the first attempt is still connecting, the second starts 250 ms after it."""
    clock, d, tried, _ = race(dual_stack(), {"127.0.0.11": Hanging(), "::11": Hanging()})
    assert ATTEMPT_DELAY == 0.25
    assert [t[0] for t in tried] == ["127.0.0.11"]
    clock.advance(0.249)
    assert len(tried) == 1
    clock.advance(0.001)
    assert [t[0] for t in tried] == ["127.0.0.11", "::11"]


def test_families_are_interleaved_in_ip_versions_order():
    hang = {ip: Hanging() for ip in ("127.0.0.11", "127.0.0.12", "::11", "::12")}
    clock, d, tried, _ = race(dual_stack(), hang, ip_versions=(6, 4))
    clock.pump([ATTEMPT_DELAY] * 3)
    assert [t[0] for t in tried] == ["::11", "127.0.0.11", "::12", "127.0.0.12"]


def test_dead_first_address_costs_one_attempt_delay():
    """The first address black-holes: the second connects at 250 ms and the first is cancelled."""
    dead = Hanging()
    clock, d, tried, attempts = race(dual_stack(), {"127.0.0.11": dead, "::11": "ok"})
    got = []
    d.addCallback(got.append)
    assert not got
    clock.advance(ATTEMPT_DELAY)
    assert got and got[0][2] == Address("::11", 5269, 6)
    assert clock.seconds() == ATTEMPT_DELAY
    assert dead.cancelled
    assert attempts == [
        Attempt("connect", "127.0.0.11:5269 (dual.b.test)",
                "abandoned, still connecting when [::11]:5269 connected"),
        Attempt("connect", "[::11]:5269 (dual.b.test)", "connected in 0 ms", ok=True),
    ]
    assert clock.getDelayedCalls() == []


def test_earlier_attempt_can_still_win():
    """The first address answers after the second was started: it wins, the second is cancelled."""
    first, second = Hanging(), Hanging()
    clock, d, tried, attempts = race(dual_stack(), {"127.0.0.11": first, "::11": second})
    clock.advance(0.3)
    assert len(tried) == 2
    first.callback(None)
    got = []
    d.addCallback(got.append)
    assert got[0][2] == Address("127.0.0.11", 5269, 4)
    assert second.cancelled
    assert [(a.target, a.ok) for a in attempts] == [
        ("[::11]:5269 (dual.b.test)", False), ("127.0.0.11:5269 (dual.b.test)", True)]


def test_failed_attempt_starts_the_next_at_once():
    """A refusal does not wait for the attempt delay: the next address is tried right away."""
    first = Hanging()
    clock, d, tried, attempts = race(dual_stack(), {"127.0.0.11": first, "::11": Hanging()})
    clock.advance(0.1)
    first.errback(error.ConnectionRefusedError())
    assert [t[0] for t in tried] == ["127.0.0.11", "::11"]
    assert attempts[0] == Attempt("connect", "127.0.0.11:5269 (dual.b.test)",
                                  "connection refused")


def test_next_target_is_resolved_only_when_its_turn_comes():
    """A backup SRV target's addresses are looked up when the attempt delay has passed."""
    clock = task.Clock()
    res, tried, ep = setup(two_hosts(), {"127.0.0.11": Hanging(), "127.0.0.12": "ok"})
    d = connect(clock, res, "b.test", factory(), endpointFor=ep)
    asked = lambda: [q[0] for q in res.resolver.queries]  # noqa: E731
    assert "two.b.test" not in asked()
    clock.advance(ATTEMPT_DELAY)
    assert "two.b.test" in asked()
    assert [t[:2] for t in tried] == [("127.0.0.11", 5269), ("127.0.0.12", 5270)]
    assert result(d)[0].__class__ is Protocol


def test_every_attempt_timing_out_is_remote_server_timeout():
    """Raced attempts that all time out give every address in the attempt list."""
    hang = {ip: Hanging() for ip in ("127.0.0.11", "127.0.0.12", "::11", "::12")}
    clock, d, tried, attempts = race(dual_stack(), hang)
    clock.pump([ATTEMPT_DELAY] * 3)
    failures = []
    d.addErrback(failures.append)
    for ip in ("::11", "127.0.0.11", "127.0.0.12", "::12"):
        assert not failures
        hang[ip].errback(error.TimeoutError())
    e = failures[0].value
    assert e.condition == "remote-server-timeout"
    assert len(e.attempts) == 4 and all(x.timedOut for x in e.attempts)
    assert e.text.endswith("(4 attempts failed)")


def test_connection_made_after_the_race_is_decided_is_closed():
    """An attempt that connects in the very moment it is cancelled is closed, not leaked."""
    late = StringTransport()

    def connectAnyway(d):
        d.callback(late)

    clock, d, tried, attempts = race(
        dual_stack(), {"127.0.0.11": defer.Deferred(connectAnyway), "::11": "ok"})
    clock.advance(ATTEMPT_DELAY)
    assert result(d)[2].ip == "::11"
    assert late.disconnecting


# --- real sockets -------------------------------------------------------------------

DEAD, ALIVE = "127.0.6.10", "127.0.6.11"


@pytest_twisted.ensureDeferred
async def test_black_holed_first_address_costs_about_one_attempt_delay():
    """
    On real sockets: the first address swallows SYNs, the second listens.
    The connection is made via the second after ~250 ms, far below
    connection_timeout (10 s), and the dead attempt is cancelled.
    """
    from twisted.internet import reactor

    server = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface=ALIVE)
    port = server.getHost().port
    hole = BlackHole(DEAD, port)
    records = {
        (XS, dns.SRV): [srv(XS, "host.b.test", port)],
        ("host.b.test", dns.A): [a("host.b.test", DEAD), a("host.b.test", ALIVE)],
        ("host.b.test", dns.AAAA): [],
    }
    resolver = S2SResolver(reactor, resolver=FakeResolver(records))
    connector = Connector(reactor, resolver, timeout=10)
    try:
        started = time.monotonic()
        connection = await connector.connect("b.test", factory())
        took = time.monotonic() - started
        connection.protocol.transport.loseConnection()
    finally:
        hole.close()
        await server.stopListening()
    assert connection.address == Address(ALIVE, port, 4)
    assert ATTEMPT_DELAY <= took < 1.5, took
    assert [(x.target.split()[0], x.ok) for x in connection.attempts] == [
        (f"{DEAD}:{port}", False), (f"{ALIVE}:{port}", True)]
    assert connection.attempts[0].error.startswith("abandoned, still connecting")
