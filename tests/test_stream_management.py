"""
XEP-0198 on s2s (issue 11): two gateways federate in memory, acks flow, and
a stream that dies with unacknowledged stanzas neither forgets nor silently
drops them; the ack window alone is checked as a state machine.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.words.xish import domish

from s2sgate.config import parse_config
from s2sgate.features.stream_management import AckWindow, StreamManagementOffer
from s2sgate.gateway.service import GatewayService
from s2sgate.xmpp.namespaces import NS_SM
from s2sgate.xmpp.rawstanza import RawStanza
from tests.test_plugin_feature import LocalDeliveries, MemoryNetwork

SM_OFF = {"enabled": False}


def site(network, domain, sm=None):
    config = parse_config({"local_domains": [domain],
                           "component": {"jid": f"s2s.{domain}", "secret": "x"},
                           "s2s": {"use_starttls": "false", "listen": [],
                                   "stream_management": sm or {}},
                           "admin": {"listen": ""}}, f"{domain}.toml")
    reactor = MemoryReactorClock()
    gateway = GatewayService(config, reactor, connector=network.connector(),
                             componentLink=LocalDeliveries)
    network.gateways[domain] = gateway
    return gateway, reactor


def federation(smA=None, smB=None):
    network = MemoryNetwork()
    a, clock = site(network, "a.test", smA)
    b, _ = site(network, "b.test", smB)
    return network, a, b, clock


def send(a, count, start=0):
    for i in range(start, start + count):
        m = domish.Element(("jabber:server", "message"))
        m["from"], m["to"], m["type"], m["id"] = "alice@a.test/pc", "bob@b.test", "chat", f"m{i}"
        m.addElement("body", content=f"m{i}")
        a.link.fromLocal(RawStanza.fromElement(m))


def bodies(b):
    return [str(m.body) for m in b.link.delivered]


def outbound(a):
    return a.sessionTable.outgoing("a.test", "b.test")


def kill(network, a, b):
    """Both ends lose the connection, with whatever is in flight."""
    lost = Failure(ConnectionLost("kill -9"))
    out = outbound(a)
    [inbound] = b.sessionTable.streams("in")
    network.pumps.clear()
    inbound.connectionLost(lost)
    out.connectionLost(lost)


class Events(list):
    def __enter__(self):
        globalLogPublisher.addObserver(self.append)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self.append)


def test_two_gateways_enable_stream_management_after_dialback_and_acks_empty_the_window():
    network, a, b, clock = federation()
    send(a, 12)
    network.flush(clock)
    assert bodies(b) == [f"m{i}" for i in range(12)]
    delivery = outbound(a).delivery
    assert (delivery.enabled, delivery.sent, delivery.acked, delivery.unacked) == (True, 12, 12, 0)
    [out] = [s for s in a.sessions() if s["direction"] == "out"]
    [inb] = [s for s in b.sessions() if s["direction"] == "in"]
    assert (out["sm"], out["unacked"], inb["sm"]) == (True, 0, True)


def test_a_peer_without_stream_management_gets_no_enable_and_the_stream_is_untracked():
    network, a, b, clock = federation(smB=SM_OFF)
    send(a, 3)
    network.flush(clock)
    assert bodies(b) == ["m0", "m1", "m2"]
    [out] = [s for s in a.sessions() if s["direction"] == "out"]
    assert (out["sm"], out["unacked"]) == (False, None)


def test_an_inbound_stream_the_peer_never_enabled_acks_on_shows_no_stream_management():
    network, a, b, clock = federation(smA=SM_OFF)
    send(a, 3)
    network.flush(clock)
    assert bodies(b) == ["m0", "m1", "m2"]
    [inb] = [s for s in b.sessions() if s["direction"] == "in"]
    assert (inb["sm"], inb["unacked"]) == (False, None)


def test_unacknowledged_stanzas_of_a_lost_stream_are_resent_once_on_the_next_stream():
    network, a, b, clock = federation()
    send(a, 2)
    network.flush(clock)
    send(a, 3, start=2)          # written, never read by the peer
    with Events() as events:
        kill(network, a, b)
        network.flush(clock)
    assert bodies(b) == ["m0", "m1", "m2", "m3", "m4"]
    assert a.link.delivered == []   # nothing bounced
    [lost] = [e for e in events if e.get("event") == "stream.lost" and e["direction"] == "outbound"]
    assert (lost["sent"], lost["acked"], lost["unacked"], lost["resent"], lost["bounced"]) == (
        5, 2, 3, 3, 0)
    assert "5 sent, 2 acknowledged, 3 unacknowledged: 3 to be re-sent, 0 bounced" in \
        lost["log_format"].format(**lost)
    assert [e["sm"] for e in events
            if e.get("event") == "stream.lost" and e["direction"] == "inbound"] == [True]
    assert a.failureLog()[0]["condition"] == "stream-lost"


def test_with_on_loss_bounce_the_unacknowledged_stanzas_go_back_to_their_sender():
    network, a, b, clock = federation(smA={"on_loss": "bounce"})
    send(a, 1)
    network.flush(clock)
    send(a, 2, start=1)
    kill(network, a, b)
    network.flush(clock)
    assert bodies(b) == ["m0"]
    assert [(m["id"], m["type"]) for m in a.link.delivered] == [("m1", "error"), ("m2", "error")]
    error = a.link.delivered[0].error
    assert [c.name for c in error.elements()] == ["remote-server-timeout", "text"]
    assert "may or may not have arrived" in str(list(error.elements())[1])


def test_a_stanza_lost_twice_is_bounced_not_resent_again():
    network, a, b, clock = federation()
    send(a, 1)
    network.flush(clock)
    send(a, 1, start=1)
    kill(network, a, b)
    # The next stream comes up and re-sends m1; it dies before the ack.
    for _ in range(20):
        if outbound(a) is not None and outbound(a).delivery.unacked:
            break
        for pump in list(network.pumps):
            pump.pump()
        clock.advance(0)
    out = outbound(a)
    assert out.delivery.unacked == 1
    kill(network, a, b)
    network.flush(clock)
    assert [(m["id"], m["type"]) for m in a.link.delivered] == [("m1", "error")]


def test_without_stream_management_a_lost_stream_says_the_gateway_cannot_know():
    network, a, b, clock = federation(smB=SM_OFF)
    send(a, 2)
    network.flush(clock)
    with Events() as events:
        kill(network, a, b)
    [lost] = [e for e in events if e.get("event") == "stream.lost" and e["direction"] == "outbound"]
    assert lost["sm"] is False and lost["sent"] == 2
    assert "cannot know" in lost["fate"]


def test_a_clean_close_is_not_reported_as_a_lost_stream():
    network, a, b, clock = federation()
    send(a, 2)
    network.flush(clock)
    with Events() as events:
        assert a.close("b.test") == 1
        network.flush(clock)
        clock.advance(10)
    assert not [e for e in events if e.get("event") == "stream.lost"]
    assert [e["log_level"].name for e in events if e.get("event") == "stream.closed"] == [
        "info", "info"]


# the ack window alone

class Wire:
    def __init__(self):
        self.closing = self.closed = False
        self.sent = []
        self.errors = []

    def send(self, element):
        self.sent.append(element.name)

    def streamError(self, condition, text):
        self.errors.append(condition)


def ack(h):
    a = domish.Element((NS_SM, "a"))
    a["h"] = str(h)
    return a


def test_an_ack_is_requested_after_a_burst_and_after_every_n_stanzas():
    clock, wire = task.Clock(), Wire()
    window = AckWindow(wire, clock, requestEvery=3)
    window.stanzaSent("s1")
    window.stanzaSent("s2")
    assert wire.sent == []
    clock.advance(0)                       # the burst is over
    assert wire.sent == ["r"]
    for i in range(3):
        window.stanzaSent(f"t{i}")
    assert wire.sent == ["r", "r"]         # three since the last request: at once


def test_an_ack_for_more_than_was_sent_is_a_stream_error():
    wire = Wire()
    window = AckWindow(wire, task.Clock(), requestEvery=5)
    window.stanzaSent("s1")
    assert window.elementReceived(ack(2))
    assert wire.errors == ["undefined-condition"]


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=30),
       st.integers(0, 2 ** 32 - 1))
def test_the_window_holds_exactly_the_stanzas_not_yet_acknowledged(steps, start):
    """Sends and acks interleaved, h counting from any point of its 2^32 wrap."""
    wire = Wire()
    window = AckWindow(wire, task.Clock(), requestEvery=1000)
    window._h = start
    sent = acked = 0
    for sends, acks in steps:
        for _ in range(sends):
            window.stanzaSent(sent)
            sent += 1
        acked = min(sent, acked + acks)
        window.elementReceived(ack((start + acked) % 2 ** 32))
    assert wire.errors == []
    assert [e for e, _ in window.unacknowledged()] == list(range(acked, sent))
    assert (window.sent, window.acked, window.unacked) == (sent, acked, sent - acked)


# the receiving side alone

class Inbound:
    def __init__(self, pairs):
        self.pairs = pairs
        self.stanzasIn = 0
        self.out = []
        self.streamManagement = False
        self.verifyOnly = False

    def send(self, element):
        self.out.append((element.name, dict(element.attributes),
                         [c.name for c in element.elements()]))

    def acknowledging(self):
        self.streamManagement = True

    def streamError(self, condition, text):
        self.out.append(("error", condition))


def offer(enabled=True):
    config = parse_config({"local_domains": ["a.test"],
                           "component": {"jid": "s2s.a.test", "secret": "x"},
                           "s2s": {"use_starttls": "false",
                                   "stream_management": {"enabled": enabled}}}, "t.toml")

    class Runtime:
        pass
    runtime = Runtime()
    runtime.config = config
    return StreamManagementOffer(runtime)


def sm(name):
    return domish.Element((NS_SM, name))


def test_enable_before_authentication_fails_and_after_it_acks_count_handled_stanzas():
    o = offer()
    stream = Inbound(set())
    o.element(stream, sm("enable"))
    assert stream.out == [("failed", {}, ["unexpected-request"])]
    stream.out.clear()
    stream.pairs = {("b.test", "a.test")}
    stream.stanzasIn = 4                    # before <enable/>: not counted
    o.element(stream, sm("enable"))
    stream.stanzasIn = 7
    o.element(stream, sm("r"))
    assert stream.out == [("enabled", {}, []), ("a", {"h": "3"}, [])]
    assert stream.streamManagement


def test_with_stream_management_off_nothing_is_offered_or_handled():
    o = offer(enabled=False)
    features = domish.Element(("http://etherx.jabber.org/streams", "features"))
    o.advertise(Inbound(set()), features)
    assert list(features.elements()) == [] and o.handlers() == {}


def test_shutdown_drains_what_peers_acknowledge_and_bounces_the_rest_saying_so():
    network, a, b, clock = federation()
    send(a, 2)
    network.flush(clock)
    send(a, 3, start=2)            # unacknowledged when the shutdown starts
    network.pumps.clear()          # the peer never reads them
    with Events() as events:
        d = a.stopService()
        for _ in range(120):       # past s2s.shutdown_timeout (10 s)
            clock.advance(0.1)
    assert d.called
    # Bounced at two thirds of it, while the component link can still carry them.
    assert [(m["id"], m["type"]) for m in a.link.delivered] == [
        ("m2", "error"), ("m3", "error"), ("m4", "error")]
    text = str(list(a.link.delivered[0].error.elements())[1])
    assert "the gateway is shutting down" in text and "may or may not have arrived" in text
    [done] = [e for e in events if e.get("event") == "shutdown.done"]
    assert (done["bounced"], done["lost"]) == (3, 0)
