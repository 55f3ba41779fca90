# -*- test-case-name: tests.test_resolver -*-
"""
Tests for L{s2sgate.net.resolver}: SRV ordering, "." handling, fallback, and
that nothing ever reaches a real nameserver (a fake IResolver answers).
"""

import random
from collections import Counter

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns
from twisted.names import error as dnserror

from s2sgate.net.resolver import (
    Address,
    DNSFailure,
    NoService,
    S2SResolver,
    Target,
    orderSRV,
)

# -- helpers -----------------------------------------------------------------


def srv(name, target, port=5269, priority=0, weight=0):
    # "." is the root: on the wire Twisted parses it as the empty name.
    if target == ".":
        target = b""
    return dns.RRHeader(
        name, type=dns.SRV, payload=dns.Record_SRV(priority, weight, port, target)
    )


def a(name, ip):
    return dns.RRHeader(name, type=dns.A, payload=dns.Record_A(ip))


def aaaa(name, ip):
    return dns.RRHeader(name, type=dns.AAAA, payload=dns.Record_AAAA(ip))


class FakeResolver:
    """
    An in-memory IResolver: C{records[(name, type)]} is a list of RRHeaders,
    an exception instance to fail with, or a Deferred to return. Missing
    names are NXDOMAIN. Every query is recorded in C{queries}.
    """

    def __init__(self, records=None):
        self.records = dict(records or {})
        self.queries = []

    def _lookup(self, name, type, timeout):
        if isinstance(name, bytes):
            name = name.decode()
        self.queries.append((name, type, timeout))
        r = self.records.get((name, type))
        if r is None:
            return defer.fail(dnserror.DNSNameError(name))
        if isinstance(r, defer.Deferred):
            return r
        if isinstance(r, BaseException):
            return defer.fail(r)
        return defer.succeed((list(r), [], []))

    def lookupService(self, name, timeout=None):
        return self._lookup(name, dns.SRV, timeout)

    def lookupAddress(self, name, timeout=None):
        return self._lookup(name, dns.A, timeout)

    def lookupIPV6Address(self, name, timeout=None):
        return self._lookup(name, dns.AAAA, timeout)


def result(coro):
    """Run an async function that must finish synchronously; return or raise."""
    d = defer.ensureDeferred(coro)
    out = []
    d.addBoth(out.append)
    assert out, "coroutine did not finish synchronously"
    if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def make(records=None, **kw):
    fake = FakeResolver(records)
    kw.setdefault("rng", random.Random(1))
    return S2SResolver(task.Clock(), resolver=fake, **kw), fake


XS = "_xmpp-server._tcp.b.test"
XSS = "_xmpps-server._tcp.b.test"


# -- SRV ordering ------------------------------------------------------------


def test_priority_ordering():
    """Lower priority first, whatever the answer order."""
    r, _ = make({(XS, dns.SRV): [
        srv(XS, "c.b.test", 5271, priority=30, weight=10),
        srv(XS, "a.b.test", 5269, priority=10, weight=10),
        srv(XS, "b.b.test", 5270, priority=20, weight=10),
    ]})
    assert result(r.targets("b.test")) == [
        Target("a.b.test", 5269),
        Target("b.b.test", 5270),
        Target("c.b.test", 5271),
    ]


def test_weighted_random_ordering_is_proportional():
    """Weight 90 vs 10 in one priority: the heavy one comes first ~90% of draws."""
    rng = random.Random(42)
    heavy = dns.Record_SRV(0, 90, 5269, "heavy.test")
    light = dns.Record_SRV(0, 10, 5269, "light.test")
    firsts = Counter(str(orderSRV([light, heavy], rng)[0].target) for _ in range(1000))
    assert 850 <= firsts["heavy.test"] <= 950
    assert firsts["heavy.test"] + firsts["light.test"] == 1000


def test_weight_zero_rarely_first_and_never_lost():
    """Weight-0 records stay in the list; with others weighted they are seldom first."""
    rng = random.Random(7)
    zero = dns.Record_SRV(0, 0, 5269, "zero.test")
    some = dns.Record_SRV(0, 50, 5269, "some.test")
    firsts = Counter()
    for _ in range(1000):
        order = orderSRV([some, zero], rng)
        assert len(order) == 2
        firsts[str(order[0].target)] += 1
    assert firsts["zero.test"] < 30  # chosen only when the draw is 0 (1/51)


def test_all_weight_zero_keeps_all():
    """All-zero weights: every record is still returned exactly once."""
    recs = [dns.Record_SRV(0, 0, 5269 + i, f"h{i}.test") for i in range(4)]
    order = orderSRV(recs, random.Random(3))
    assert sorted(r.port for r in order) == [5269, 5270, 5271, 5272]


def test_srv_answer_with_cname_chain():
    """A CNAME in the answer section is skipped; the SRV records count."""
    r, _ = make({(XS, dns.SRV): [
        dns.RRHeader(XS, type=dns.CNAME, payload=dns.Record_CNAME("_x.other.test")),
        srv("_x.other.test", "xmpp.other.test", 5269),
    ]})
    assert result(r.targets("b.test")) == [Target("xmpp.other.test", 5269)]


# -- "." and fallback --------------------------------------------------------


def test_dot_target_is_no_service():
    """A sole "." target means the domain offers no s2s service."""
    r, _ = make({(XS, dns.SRV): [srv(XS, ".", 0)]})
    with pytest.raises(NoService) as e:
        result(r.targets("b.test"))
    assert "b.test" in e.value.text


def test_dot_target_empty_name_is_no_service():
    """Twisted parses the root name as b''; that is "." too."""
    r, _ = make({(XS, dns.SRV): [srv(XS, "", 0)]})
    with pytest.raises(NoService):
        result(r.targets("b.test"))


def test_nxdomain_srv_falls_back_to_domain_on_configured_port():
    """No SRV at all: the domain itself, on the configured port, via A/AAAA."""
    r, _ = make({
        ("b.test", dns.A): [a("b.test", "127.0.0.12")],
        ("b.test", dns.AAAA): [aaaa("b.test", "::12")],
    }, port=5999)
    targets = result(r.targets("b.test"))
    assert targets == [Target("b.test", 5999)]
    assert result(r.addresses("b.test", 5999)) == [
        Address("127.0.0.12", 5999, 4),
        Address("::12", 5999, 6),
    ]


def test_empty_srv_answer_falls_back():
    """NOERROR with no SRV records (NODATA) is "no SRV" too."""
    r, _ = make({(XS, dns.SRV): []})
    assert result(r.targets("b.test")) == [Target("b.test", 5269)]


def test_srv_timeout_is_dns_failure_not_fallback():
    """A timed-out SRV query must not be mistaken for "no SRV"."""
    r, _ = make({(XS, dns.SRV): dnserror.DNSQueryTimeoutError("x")})
    with pytest.raises(DNSFailure) as e:
        result(r.targets("b.test"))
    assert e.value.timedOut


def test_srv_server_failure_is_dns_failure():
    """SERVFAIL is not "no SRV" either (it may hide the real targets)."""
    r, _ = make({(XS, dns.SRV): dnserror.DNSServerError("x")})
    with pytest.raises(DNSFailure) as e:
        result(r.targets("b.test"))
    assert not e.value.timedOut


def test_override_skips_dns():
    """An overridden domain is connected to directly; DNS is never asked."""
    r, fake = make(overrides={"b.test": ("192.0.2.7", 5270)})
    assert result(r.targets("b.test", directTLS=True)) == [Target("192.0.2.7", 5270)]
    assert result(r.addresses("192.0.2.7", 5270)) == [Address("192.0.2.7", 5270, 4)]
    assert fake.queries == []


# -- direct TLS --------------------------------------------------------------


def test_direct_tls_targets_first():
    """With direct TLS, _xmpps-server targets come before _xmpp-server ones."""
    r, _ = make({
        (XSS, dns.SRV): [srv(XSS, "tls.b.test", 5223)],
        (XS, dns.SRV): [srv(XS, "plain.b.test", 5269)],
    })
    assert result(r.targets("b.test", directTLS=True)) == [
        Target("tls.b.test", 5223, True),
        Target("plain.b.test", 5269, False),
    ]


def test_no_xmpps_lookup_without_direct_tls():
    """Without direct TLS the _xmpps-server name is not even queried."""
    r, fake = make({(XS, dns.SRV): [srv(XS, "plain.b.test", 5269)]})
    result(r.targets("b.test"))
    assert [q[0] for q in fake.queries] == [XS]


def test_xmpp_dot_but_xmpps_targets():
    """xmpp "." with xmpps records: the direct TLS targets are used."""
    r, _ = make({
        (XSS, dns.SRV): [srv(XSS, "tls.b.test", 5223)],
        (XS, dns.SRV): [srv(XS, ".", 0)],
    })
    assert result(r.targets("b.test", directTLS=True)) == [Target("tls.b.test", 5223, True)]


def test_both_dot_is_no_service():
    r, _ = make({
        (XSS, dns.SRV): [srv(XSS, ".", 0)],
        (XS, dns.SRV): [srv(XS, ".", 0)],
    })
    with pytest.raises(NoService):
        result(r.targets("b.test", directTLS=True))


def test_xmpp_dot_and_no_xmpps_is_no_service():
    r, _ = make({(XS, dns.SRV): [srv(XS, ".", 0)]})
    with pytest.raises(NoService):
        result(r.targets("b.test", directTLS=True))


def test_xmpps_timeout_alone_is_not_fatal():
    """Direct TLS is optional: its lookup failing leaves the normal targets."""
    r, _ = make({
        (XSS, dns.SRV): dnserror.DNSQueryTimeoutError("x"),
        (XS, dns.SRV): [srv(XS, "plain.b.test", 5269)],
    })
    assert result(r.targets("b.test", directTLS=True)) == [Target("plain.b.test", 5269)]


# -- addresses ---------------------------------------------------------------


def _dual():
    return {
        ("h.test", dns.A): [a("h.test", "127.0.0.1")],
        ("h.test", dns.AAAA): [aaaa("h.test", "::1")],
    }


def test_ip_versions_six_first():
    r, _ = make(_dual(), ip_versions=(6, 4))
    assert result(r.addresses("h.test", 5269)) == [
        Address("::1", 5269, 6),
        Address("127.0.0.1", 5269, 4),
    ]


def test_ip_versions_four_only_does_not_query_aaaa():
    r, fake = make(_dual(), ip_versions=(4,))
    assert result(r.addresses("h.test", 5269)) == [Address("127.0.0.1", 5269, 4)]
    assert [q[1] for q in fake.queries] == [dns.A]


def test_a_fails_aaaa_works():
    """One family failing is fine when the other answers."""
    recs = _dual()
    recs[("h.test", dns.A)] = dnserror.DNSQueryTimeoutError("x")
    r, _ = make(recs)
    assert result(r.addresses("h.test", 5269)) == [Address("::1", 5269, 6)]


def test_no_address_at_all():
    r, _ = make({("h.test", dns.A): [], ("h.test", dns.AAAA): []})
    with pytest.raises(DNSFailure) as e:
        result(r.addresses("h.test", 5269))
    assert e.value.text == "DNS: no address for h.test"
    assert not e.value.timedOut


def test_nxdomain_address():
    r, _ = make()
    with pytest.raises(DNSFailure) as e:
        result(r.addresses("nothing.test", 5269))
    assert e.value.text == "DNS: no such domain nothing.test"


def test_address_timeout():
    t = dnserror.DNSQueryTimeoutError("x")
    r, _ = make({("h.test", dns.A): t, ("h.test", dns.AAAA): t})
    with pytest.raises(DNSFailure) as e:
        result(r.addresses("h.test", 5269))
    assert e.value.timedOut


def test_ip_literal_needs_no_dns():
    r, fake = make()
    assert result(r.addresses("::1", 5269)) == [Address("::1", 5269, 6)]
    assert fake.queries == []


def test_queries_carry_configured_timeout_and_retries():
    """Each query gets (timeout,) * (retries + 1) as its Twisted timeout sequence."""
    r, fake = make(_dual(), timeout=3, retries=2)
    result(r.addresses("h.test", 5269))
    assert {q[2] for q in fake.queries} == {(3, 3, 3)}


def test_concurrent_a_and_aaaa():
    """A and AAAA are both asked before either answers."""
    pa, p6 = defer.Deferred(), defer.Deferred()
    r, fake = make({("h.test", dns.A): pa, ("h.test", dns.AAAA): p6})
    d = defer.ensureDeferred(r.addresses("h.test", 5269))
    assert len(fake.queries) == 2
    p6.callback(([aaaa("h.test", "::1")], [], []))
    pa.callback(([a("h.test", "127.0.0.1")], [], []))
    got = []
    d.addCallback(got.append)
    assert got == [[Address("127.0.0.1", 5269, 4), Address("::1", 5269, 6)]]


# -- default resolver ----------------------------------------------------------


def test_default_resolver_uses_only_given_nameservers():
    """
    Built from nameservers, the Twisted resolver asks exactly those and never
    reads resolv.conf (createResolver would also add the machine's servers).
    """
    reactor = MemoryReactorClock()
    r = S2SResolver(reactor, nameservers=(("127.0.0.53", 5353),), timeout=2, retries=1)
    tw = r.resolver
    assert tw.servers == [("127.0.0.53", 5353)]
    assert tw.resolv is None
    assert list(tw.dynServers) == []
    assert tw.timeout == (2, 2)
    assert reactor.getDelayedCalls() == []  # no resolv.conf re-read loop


def test_default_resolver_without_nameservers_reads_resolv_conf():
    reactor = MemoryReactorClock()
    r = S2SResolver(reactor)
    assert r.resolver.resolv == "/etc/resolv.conf"
    assert r.resolver.servers == []
    # Stop the re-parse loop Twisted started.
    for c in reactor.getDelayedCalls():
        c.cancel()
