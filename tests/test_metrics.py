"""What s2sgate.ops.metrics.Metrics counts, read back from its own registry."""

from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from twisted.internet import task
from twisted.internet.testing import StringTransport

from s2sgate.ops.metrics import Metrics, NullMetrics
from s2sgate.xmpp.stream import XmlStream


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


@pytest.mark.parametrize("direction", ["in", "out"])
def test_stanzas_are_counted_by_direction(direction):
    m = Metrics()
    m.stanza(direction)
    m.stanza(direction, 3)
    assert sample(m, "s2sgate_stanzas_total", direction=direction) == 4
    other = {"in": "out", "out": "in"}[direction]
    assert sample(m, "s2sgate_stanzas_total", direction=other) == 0


def test_bounces_are_counted_by_condition():
    m = Metrics()
    m.bounce("remote-server-not-found")
    m.bounce("remote-server-not-found")
    m.bounce("not-allowed")
    assert sample(m, "s2sgate_bounces_total", condition="remote-server-not-found") == 2
    assert sample(m, "s2sgate_bounces_total", condition="not-allowed") == 1


def test_connection_attempts_are_counted():
    m = Metrics()
    m.attempt()
    m.attempt()
    assert sample(m, "s2sgate_connection_attempts_total") == 2


def test_connection_failures_are_counted_by_the_step_that_failed():
    m = Metrics()
    m.failure("dns")
    m.failure("tls")
    m.failure("tls")
    assert sample(m, "s2sgate_connection_failures_total", step="dns") == 1
    assert sample(m, "s2sgate_connection_failures_total", step="tls") == 2


def test_dns_times_go_into_the_histogram():
    m = Metrics()
    m.dnsTime(0.003)
    m.dnsTime(0.7)
    assert sample(m, "s2sgate_dns_seconds_count") == 2
    assert sample(m, "s2sgate_dns_seconds_sum") == pytest.approx(0.703)
    assert sample(m, "s2sgate_dns_seconds_bucket", le="0.005") == 1
    assert sample(m, "s2sgate_dns_seconds_bucket", le="0.5") == 1
    assert sample(m, "s2sgate_dns_seconds_bucket", le="1.0") == 2


def test_the_component_link_gauge_follows_up_and_down():
    m = Metrics()
    assert sample(m, "s2sgate_component_link_up") == 0
    m.link(True)
    assert sample(m, "s2sgate_component_link_up") == 1
    m.link(False)
    assert sample(m, "s2sgate_component_link_up") == 0


def test_bytes_a_stream_receives_and_sends_are_counted():
    m = Metrics()
    s = XmlStream(task.Clock())
    s.metrics = m
    s.makeConnection(StringTransport())
    header = (b"<stream:stream xmlns='jabber:server' "
              b"xmlns:stream='http://etherx.jabber.org/streams'>")
    s.dataReceived(header)
    s.send(b"<presence/>")
    assert sample(m, "s2sgate_bytes_total", direction="in") == len(header)
    assert sample(m, "s2sgate_bytes_total", direction="out") == len(b"<presence/>")


def test_each_gateway_counts_in_its_own_registry():
    one, two = Metrics(), Metrics()
    one.stanza("in")
    assert sample(one, "s2sgate_stanzas_total", direction="in") == 1
    assert sample(two, "s2sgate_stanzas_total", direction="in") == 0


def fakeGateway(sessions, outboundQueues, componentBuffer):
    links = {i: SimpleNamespace(queue=[None] * n) for i, n in enumerate(outboundQueues)}
    return SimpleNamespace(sessions=lambda: sessions, pool=SimpleNamespace(links=links),
                           link=SimpleNamespace(buffer=[None] * componentBuffer))


def test_authenticated_streams_are_gauged_by_direction_security_and_method():
    m = Metrics()
    m.watch(fakeGateway([
        {"direction": "in", "tls": True, "auth": "sasl-external"},
        {"direction": "in", "tls": True, "auth": "sasl-external"},
        {"direction": "out", "tls": False, "auth": "dialback"},
        {"direction": "out", "tls": True, "auth": None},   # not authenticated yet
    ], [], 0))
    gauged = sorted((tuple(sorted(s.labels.items())), s.value)
                    for family in m.registry.collect() if family.name == "s2sgate_streams"
                    for s in family.samples)
    assert gauged == [
        ((("auth", "dialback"), ("direction", "out"), ("security", "plain")), 1),
        ((("auth", "sasl-external"), ("direction", "in"), ("security", "tls")), 2),
    ]


def test_queued_stanzas_are_gauged_outbound_and_for_the_component_link():
    m = Metrics()
    m.watch(fakeGateway([], [2, 3], 4))
    assert sample(m, "s2sgate_queued_stanzas", queue="outbound") == 5
    assert sample(m, "s2sgate_queued_stanzas", queue="component") == 4


def test_gauges_are_computed_at_scrape_time():
    m = Metrics()
    gateway = fakeGateway([], [], 0)
    m.watch(gateway)
    gateway.link.buffer.append(None)
    assert b's2sgate_queued_stanzas{queue="component"} 1.0' in generate_latest(m.registry)


def test_null_metrics_take_every_report_that_metrics_take():
    m = NullMetrics()
    reports = [m.stanza("in"), m.stanza("out", 3), m.bounce("not-allowed"), m.attempt(),
               m.failure("dns"), m.dnsTime(1), m.link(True), m.bytesIn.inc(10),
               m.bytesOut.inc(10)]
    assert reports == [None] * 9


def test_the_per_stanza_counters_export_what_a_prometheus_counter_would():
    """stanzas and bytes are plain integers read at scrape time (no lock per
    stanza); a scrape shows the same families and samples as before."""
    from prometheus_client import CollectorRegistry
    from prometheus_client import Counter as PromCounter
    m = Metrics()
    m.stanza("out", 2)
    m.bytesIn.inc(7)
    reference = CollectorRegistry()
    for name, doc in (("s2sgate_stanzas", "Stanzas routed"),
                      ("s2sgate_bytes", "Bytes on s2s streams")):
        counter = PromCounter(name, doc, ["direction"], registry=reference)
        counter.labels("in")
        counter.labels("out")

    def shape(registry, family):
        return sorted((f.documentation, f.type, s.name, tuple(sorted(s.labels.items())))
                      for f in registry.collect() if f.name == family for s in f.samples)

    for family in ("s2sgate_stanzas", "s2sgate_bytes"):
        assert shape(m.registry, family) == shape(reference, family)
    assert sample(m, "s2sgate_stanzas_total", direction="out") == 2
    assert sample(m, "s2sgate_bytes_total", direction="in") == 7
    assert sample(m, "s2sgate_stanzas_created", direction="out") > 0
