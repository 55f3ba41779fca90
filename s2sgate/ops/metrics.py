# -*- test-case-name: tests.test_metrics -*-
"""
Counters for Prometheus, one registry per gateway (no globals).

The protocol code reports events to a L{Metrics}; gauges that describe the
current streams are computed at scrape time from the gateway itself.  The
counters bumped once per stanza or write (stanzas, bytes) are plain
integers read at scrape time: prometheus_client's own counter takes a lock
and checks its labels on every C{inc}, a measurable share of forwarding a
stanza, while the gateway counts from its one reactor thread.
"""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class _Count:
    """One value of a hot counter: the reactor thread is its only writer."""

    __slots__ = ("value", "created")

    def __init__(self):
        self.value = 0
        self.created = time.time()

    def inc(self, amount=1):
        self.value += amount


class _HotCounter:
    """
    A labelled counter family exported at scrape time, with the names and
    samples (C{_total}, C{_created}) a prometheus_client C{Counter} gives.
    """

    def __init__(self, name, documentation, label, values, registry):
        self.name, self.documentation, self.label = name, documentation, label
        self.children = {v: _Count() for v in values}
        registry.register(self)

    def labels(self, value):
        return self.children[value]

    def _family(self):
        return CounterMetricFamily(self.name, self.documentation, labels=[self.label])

    def describe(self):
        yield self._family()

    def collect(self):
        family = self._family()
        for value, count in self.children.items():
            family.add_metric([value], count.value, created=count.created)
        yield family


class Metrics:
    def __init__(self, registry=None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.stanzas = _HotCounter("s2sgate_stanzas", "Stanzas routed", "direction",
                                   ("in", "out"), r)
        self.bytes = _HotCounter("s2sgate_bytes", "Bytes on s2s streams", "direction",
                                 ("in", "out"), r)
        self.bounces = Counter("s2sgate_bounces", "Stanzas bounced to their sender",
                               ["condition"], registry=r)
        self.attempts = Counter("s2sgate_connection_attempts", "Outbound connection attempts",
                                registry=r)
        self.failures = Counter("s2sgate_connection_failures",
                                "Failed outbound connection attempts by the step that failed",
                                ["step"], registry=r)
        self.verifies = Counter("s2sgate_dialback_verifies",
                                "Dialback verify legs by result (valid, invalid, failed, "
                                "cancelled) and those refused over a bound (refused)",
                                ["result"], registry=r)
        self.limitHits = Counter("s2sgate_peer_limit_hits",
                                 "Times a peer hit a bound of [s2s.limits], by its key",
                                 ["limit"], registry=r)
        self.dns = Histogram("s2sgate_dns_seconds", "DNS resolution time of s2s targets",
                             registry=r, buckets=(.001, .005, .01, .05, .1, .5, 1, 2, 5, 10))
        self.streamsLost = Counter("s2sgate_streams_lost",
                                   "Authenticated s2s streams that ended without a clean close",
                                   ["direction"], registry=r)
        self.lostStanzas = Counter("s2sgate_stanzas_on_lost_streams",
                                   "Stanzas a lost outbound stream had not acknowledged, by fate "
                                   "(unknown: written on a stream without stream management)",
                                   ["fate"], registry=r)
        self.extraPairs = Counter("s2sgate_extra_pairs",
                                  "Further local domains asked for on an established outbound "
                                  "stream (XEP-0220 multiplexing), by outcome: joined, refused, "
                                  "timeout, closed (stream error), lost (connection lost)",
                                  ["outcome"], registry=r)
        self.bytesIn = self.bytes.labels("in")
        self.bytesOut = self.bytes.labels("out")
        self._stanzaChildren = self.stanzas.children
        self.componentUp = Gauge("s2sgate_component_link_up",
                                 "1 while the component link to the c2s server is up",
                                 registry=r)

    def stanza(self, direction, count=1):
        self._stanzaChildren[direction].inc(count)

    def bounce(self, condition):
        self.bounces.labels(condition).inc()

    def attempt(self):
        self.attempts.inc()

    def failure(self, step):
        self.failures.labels(step).inc()

    def verify(self, result):
        self.verifies.labels(result).inc()

    def extraPair(self, outcome):
        self.extraPairs.labels(outcome).inc()

    def limitHit(self, limit):
        self.limitHits.labels(limit).inc()

    def streamLost(self, direction, resent=0, bounced=0, unknown=0):
        self.streamsLost.labels(direction).inc()
        for fate, count in (("resent", resent), ("bounced", bounced), ("unknown", unknown)):
            if count:
                self.lostStanzas.labels(fate).inc(count)

    def dnsTime(self, seconds):
        self.dns.observe(seconds)

    def link(self, up):
        self.componentUp.set(1 if up else 0)

    def watch(self, gateway):
        """Add the gauges computed from C{gateway}'s streams at scrape time."""
        self.registry.register(_StreamCollector(gateway))


class _StreamCollector:
    def __init__(self, gateway):
        self.gateway = gateway

    def collect(self):
        streams = GaugeMetricFamily("s2sgate_streams", "Authenticated s2s streams",
                                    labels=["direction", "security", "auth"])
        queued = GaugeMetricFamily("s2sgate_queued_stanzas",
                                   "Stanzas waiting for an outbound stream or the c2s server",
                                   labels=["queue"])
        counts = {}
        for session in self.gateway.sessions():
            if not session["auth"]:
                continue
            key = (session["direction"], "tls" if session["tls"] else "plain", session["auth"])
            counts[key] = counts.get(key, 0) + 1
        for key, value in sorted(counts.items()):
            streams.add_metric(list(key), value)
        queued.add_metric(["outbound"], sum(len(link.queue) for link in self.gateway.pool.links.values()))
        queued.add_metric(["component"], len(self.gateway.link.buffer))
        unacked = GaugeMetricFamily("s2sgate_unacknowledged_stanzas",
                                    "Stanzas written on outbound streams with stream management "
                                    "and not yet acknowledged")
        unacked.add_metric([], sum(s.get("unacked") or 0 for s in self.gateway.sessions()))
        yield streams
        yield queued
        yield unacked


class _NullCounter:
    def inc(self, amount=1):
        pass


class NullMetrics:
    """Counts nothing: for unit tests and tools that run without a registry."""

    bytesIn = bytesOut = _NullCounter()

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
