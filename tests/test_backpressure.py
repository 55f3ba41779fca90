"""
The component link under a flood (issue 10, item 4), with task.Clock and
StringTransport producers: the link is never dropped for backlog; past
high_water the inbound s2s streams stop being read, below low_water they are
read again; what the c2s server never took is buffered (bounded in bytes and
stanzas) or bounced, never lost.
"""

import random
from types import SimpleNamespace

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.words.xish import domish

from s2sgate.config import ConfigError, parse_config
from s2sgate.gateway.component import ComponentLink
from s2sgate.s2s.sessions import SessionTable
from s2sgate.xmpp.rawstanza import RawStanza
from s2sgate.xmpp.stream import XmlStream
from tests.test_component import HEADER, linkConfig

KIB = 1024


class ProducerTransport(StringTransport):
    """A StringTransport that, like a socket, asks its producer to pause past
    C{bufferSize} bytes and to resume once C{drain()} empties it."""

    bufferSize = 64 * KIB

    def __init__(self):
        StringTransport.__init__(self)
        self.buffered = 0
        self.aborted = False

    def write(self, data):
        StringTransport.write(self, data)
        self.buffered += len(data)
        if self.producer is not None and self.buffered > self.bufferSize:
            self.producer.pauseProducing()

    def drain(self):
        """The c2s server read everything: the transport's buffer is empty."""
        self.buffered = 0
        if self.producer is not None:
            self.producer.resumeProducing()

    def abortConnection(self):
        self.aborted = True
        StringTransport.loseConnection(self)


class FakeInbound(XmlStream):
    """An authenticated inbound stream, as the session table sees it."""

    direction = "in"
    peerHost = "127.0.0.9"
    bidi = False

    def __init__(self, clock, idleTimeout=None):
        XmlStream.__init__(self, clock, idleTimeout=idleTimeout)
        self.pairs = {("remote.test", "home.test")}
        self.transport = StringTransport()
        self.connected = True


class Flood:
    def __init__(self, **kw):
        self.clock = task.Clock()
        self.bounces = []
        self.sessions = SessionTable()
        self.attempts = []
        config = dict(high_water=256 * KIB, low_water=64 * KIB, buffer_limit=1000,
                      buffer_bytes=1 << 20)
        config.update(kw)
        self.link = ComponentLink(linkConfig(**config), self.clock, self.connect,
                                  onStanza=lambda e: None,
                                  onBounce=lambda reply: self.bounces.append(reply.element()),
                                  rng=random.Random(1), inbound=self.sessions,
                                  probeTo="home.test")
        self.link.startService()

    def connect(self, factory):
        d = defer.Deferred()
        self.attempts.append((factory, d))
        return d

    def up(self):
        factory, d = self.attempts[-1]
        proto = factory.buildProtocol(None)
        transport = ProducerTransport()
        proto.makeConnection(transport)
        d.callback(proto)
        proto.dataReceived(HEADER.format(id="x").encode())
        proto.dataReceived(b"<handshake/>")
        assert self.link.state == "up"
        return proto, transport

    def inbound(self, n=2, **kw):
        streams = [FakeInbound(self.clock, **kw) for _ in range(n)]
        for s in streams:
            self.sessions.track(s)
            self.sessions.authenticated(s, "remote.test", "home.test")
        return streams


def big(i, size=32 * KIB, to="alice@home.test"):
    m = domish.Element(("jabber:server", "message"))
    m["from"], m["to"], m["id"] = f"bob@remote.test/{i}", to, f"m{i}"
    m.addElement("body", content="x" * size)
    return RawStanza.fromElement(m)


def ids(data):
    import re
    return re.findall(rb"id='(m\d+)'", data)


def test_a_c2s_server_that_stops_reading_never_gets_the_link_dropped():
    f = Flood(high_water=64 << 20)   # no pause: only the old 16 MiB rule could act
    proto, transport = f.up()
    for i in range(700):             # ~22 MiB the c2s server does not read
        f.link.send(big(i))
    assert not transport.aborted and transport.connected
    assert f.link.state == "up"
    transport.clear()
    transport.drain()
    while proto.held:
        transport.drain()
    assert not transport.aborted


def test_past_high_water_the_inbound_streams_stop_being_read():
    f = Flood()
    streams = f.inbound(3)
    proto, transport = f.up()
    i = 0
    while not f.link.throttled:
        f.link.send(big(i))
        i += 1
    assert proto.backlog > 256 * KIB
    assert [s.transport.producerState for s in streams] == ["paused"] * 3
    assert f.sessions.inboundPaused


def test_below_low_water_they_are_read_again_and_every_stanza_is_written_in_order():
    f = Flood()
    streams = f.inbound(2)
    proto, transport = f.up()
    for i in range(20):
        f.link.send(big(i))
    assert f.link.throttled
    while proto.held:
        transport.drain()
    assert not f.link.throttled
    assert [s.transport.producerState for s in streams] == ["producing"] * 2
    assert ids(transport.value()) == [f"m{i}".encode() for i in range(20)]
    assert f.bounces == []


def test_a_stream_authenticated_during_the_pause_is_paused_too():
    f = Flood()
    proto, transport = f.up()
    for i in range(20):
        f.link.send(big(i))
    late = f.inbound(1)[0]
    assert late.transport.producerState == "paused"
    while proto.held:
        transport.drain()
    assert late.transport.producerState == "producing"


def test_unauthenticated_streams_may_still_negotiate_during_the_pause():
    f = Flood()
    fresh = FakeInbound(f.clock)
    fresh.pairs = set()
    f.sessions.track(fresh)
    proto, transport = f.up()
    for i in range(20):
        f.link.send(big(i))
    assert f.link.throttled
    assert fresh.transport.producerState == "producing"


def test_a_paused_stream_is_not_closed_as_idle():
    f = Flood()
    stream = f.inbound(1, idleTimeout=10)[0]
    stream._touch()
    proto, transport = f.up()
    for i in range(20):
        f.link.send(big(i))
    f.clock.advance(60)
    assert not stream.closing
    while proto.held:
        transport.drain()
    f.clock.advance(11)
    assert stream.closing   # idle again counts once we read again


def test_stanzas_the_c2s_server_never_took_wait_for_the_next_link():
    f = Flood()
    streams = f.inbound(1)
    proto, transport = f.up()
    for i in range(20):
        f.link.send(big(i))
    written = ids(transport.value())
    proto.connectionLost(None)
    assert f.link.state == "down"
    assert not f.link.throttled     # stanzas now go to the bounded buffer
    assert streams[0].transport.producerState == "producing"
    f.clock.advance(f.clock.getDelayedCalls()[0].getTime() - f.clock.seconds())
    proto2, transport2 = f.up()
    while proto2.held:
        transport2.drain()
    # No probe came back for what was written: it goes out again, before the rest.
    assert written and ids(transport2.value()) == [f"m{i}".encode() for i in range(20)]
    assert f.bounces == []


def test_the_buffer_while_the_link_is_down_is_bounded_in_bytes():
    f = Flood(buffer_bytes=100 * KIB, buffer_limit=1000)
    for i in range(5):
        f.link.send(big(i))          # ~32 KiB each: three fit
    assert len(f.link.buffer) == 3
    assert f.link.bufferBytes <= 100 * KIB
    assert [b["id"] for b in f.bounces] == ["m3", "m4"]
    assert all(b["type"] == "error" and b.error.firstChildElement().name ==
               "resource-constraint" for b in f.bounces)
    f.clock.advance(f.link.config.buffer_timeout + 1)
    assert f.link.bufferBytes == 0 and len(f.bounces) == 5


def test_held_stanzas_that_overflow_the_down_buffer_are_bounced():
    f = Flood(buffer_bytes=100 * KIB)
    proto, transport = f.up()
    for i in range(20):
        f.link.send(big(i))
    proto.connectionLost(None)
    # Written but unconfirmed, and never written: all 20 compete for the buffer.
    assert len(f.link.buffer) == 3
    assert len(f.bounces) == 20 - 3
    assert all(b.error.firstChildElement().name == "resource-constraint" for b in f.bounces)


# --- configuration ----------------------------------------------------------------


def config(**component):
    data = {"local_domains": ["home.test"],
            "component": dict({"jid": "s2s.home.test", "secret": "x"}, **component),
            "s2s": {"use_starttls": "false"}}
    return parse_config(data, "x.toml")


def test_defaults_of_the_back_pressure_keys():
    c = config().component
    assert (c.high_water, c.low_water, c.buffer_bytes) == (4 << 20, 1 << 20, 16 << 20)


@pytest.mark.parametrize("values, message", [
    (dict(high_water=1000), "x.toml: component.high_water: got 1000; allowed: an integer >= 65536"),
    (dict(high_water=1 << 20, low_water=1 << 20),
     "x.toml: component.low_water: got 1048576; allowed: an integer from 0 to 1048575"),
    (dict(buffer_bytes=-1), "x.toml: component.buffer_bytes: got -1; allowed: an integer >= 0"),
])
def test_back_pressure_keys_are_validated(values, message):
    with pytest.raises(ConfigError) as e:
        config(**values)
    assert str(e.value) == message


def test_low_water_follows_a_small_high_water():
    assert config(high_water=100000).component.low_water == 50000


class Outbound(SimpleNamespace):
    __hash__ = object.__hash__

    def pauseReading(self):
        pytest.fail("an outbound stream was paused")


def test_sessions_table_pause_touches_only_inbound_streams():
    table = SessionTable()
    table.track(Outbound(direction="out", pairs={("a", "b")}, closed=False, bidi=False))
    assert table.pauseInbound() == 0
