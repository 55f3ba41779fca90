# -*- test-case-name: tests.test_connector -*-
"""
Tests for L{s2sgate.net.connector}: every target and address is tried in order,
failures become per-attempt diagnostics and the right bounce condition.
No sockets: fake endpoints, or Twisted's MemoryReactorClock.
"""

import random

import pytest
from twisted.internet import defer, error, task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.names import dns
from twisted.names import error as dnserror
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from s2sgate.net.connector import Attempt, ConnectFailed, connect
from s2sgate.net.resolver import Address, S2SResolver, Target
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
            return out
        if isinstance(out, BaseException):
            return defer.fail(out)
        return defer.succeed(factory.buildProtocol(IPv4Address("TCP", self.ip, self.port)))


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
        connect(None, res, "b.test", factory(), endpointFor=ep, attempts=attempts)
    )
    assert isinstance(proto, Protocol)
    assert target == Target("two.b.test", 5270)
    assert address == Address("127.0.0.12", 5270, 4)
    assert [t[:2] for t in tried] == [("127.0.0.11", 5269), ("127.0.0.12", 5270)]
    assert attempts == [
        Attempt("connect", "127.0.0.11:5269 (one.b.test)", "connection refused")
    ]


def test_all_refused_is_remote_server_not_found():
    res, tried, ep = setup(two_hosts())
    with pytest.raises(ConnectFailed) as e:
        result(connect(None, res, "b.test", factory(), endpointFor=ep))
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
        result(connect(None, res, "b.test", factory(), endpointFor=ep))
    assert e.value.condition == "remote-server-timeout"
    assert "timed out" in e.value.text
    assert all(x.timedOut for x in e.value.attempts)


def test_mixed_timeout_and_refused_is_not_found():
    t = error.TimeoutError()
    res, _, ep = setup(two_hosts(), {"127.0.0.11": t, "127.0.0.12": t})
    with pytest.raises(ConnectFailed) as e:
        result(connect(None, res, "b.test", factory(), endpointFor=ep))
    assert e.value.condition == "remote-server-not-found"


def test_srv_timeout_is_remote_server_timeout():
    res, tried, ep = setup({(XS, dns.SRV): dnserror.DNSQueryTimeoutError("x")})
    with pytest.raises(ConnectFailed) as e:
        result(connect(None, res, "b.test", factory(), endpointFor=ep))
    assert e.value.condition == "remote-server-timeout"
    assert e.value.attempts[0].step == "dns"
    assert tried == []


def test_no_service_text():
    res, _, ep = setup({(XS, dns.SRV): [srv(XS, ".", 0)]})
    with pytest.raises(ConnectFailed) as e:
        result(connect(None, res, "b.test", factory(), endpointFor=ep))
    assert e.value.condition == "remote-server-not-found"
    assert e.value.text == "DNS: b.test has no XMPP service (SRV '.')"


def test_nxdomain_domain():
    """No SRV and no such domain: a DNS attempt naming the domain."""
    res, _, ep = setup({})
    with pytest.raises(ConnectFailed) as e:
        result(connect(None, res, "nothing.test", factory(), endpointFor=ep))
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
        connect(None, res, "b.test", factory(), endpointFor=ep, attempts=attempts)
    )
    assert target.host == "two.b.test"
    assert attempts == [Attempt("dns", "one.b.test", "DNS: no such domain one.b.test")]


def test_override_connects_to_ip():
    res, tried, ep = setup({}, {"192.0.2.7": "ok"}, overrides={"b.test": ("192.0.2.7", 5270)})
    _, target, address = result(connect(None, res, "b.test", factory(), endpointFor=ep))
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
        connect(None, res, "b.test", factory(), endpointFor=ep, directTLS=tlsFactory)
    )
    assert target == Target("tls.b.test", 5223, True)
    assert asked == [target]
    assert isinstance(tried[0][3], TLSMemoryBIOFactory)
    assert isinstance(proto, Protocol)


def test_direct_tls_not_looked_up_without_factory():
    res, tried, ep = setup(two_hosts(), {"127.0.0.11": "ok"})
    result(connect(None, res, "b.test", factory(), endpointFor=ep))
    assert XSS not in [q[0] for q in res.resolver.queries]


def test_cancel_stops_connecting():
    """Cancelling the connect cancels the pending attempt; no further tries."""
    pending = defer.Deferred()
    res, tried, ep = setup(two_hosts(), {"127.0.0.11": pending})
    d = defer.ensureDeferred(connect(None, res, "b.test", factory(), endpointFor=ep))
    d.cancel()
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(defer.CancelledError)
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
