"""The component link's state machine, driven with task.Clock and in-memory transports."""

import random
import re
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, error, task
from twisted.internet.testing import StringTransport
from twisted.python import failure
from twisted.words.xish import domish

from s2sgate.gateway.component import ComponentLink, handshakeDigest
from s2sgate.xmpp.rawstanza import RawStanza

HEADER = ("<stream:stream xmlns='jabber:component:accept' "
          "xmlns:stream='http://etherx.jabber.org/streams' from='s2s.home.test' id='{id}'>")


def linkConfig(**kw):
    values = dict(jid="s2s.home.test", host="127.0.0.1", port=5347, secret="sekrit",
                  keepalive=60, max_retry_delay=60, auth_retry_delay=300,
                  buffer_limit=3, buffer_timeout=30, buffer_bytes=1 << 20,
                  high_water=1 << 20, low_water=1 << 18, fast_retry_period=30)
    values.update(kw)
    return SimpleNamespace(**values)


class Harness:
    """A link whose connection attempts the test answers by hand."""

    def __init__(self, seed=1, **kw):
        self.clock = task.Clock()
        self.attempts = []
        self.received = []
        self.bounces = []
        self.link = ComponentLink(linkConfig(**kw), self.clock, self.connect,
                                  onStanza=self.received.append,
                                  onBounce=lambda reply: self.bounces.append(reply.element()),
                                  rng=random.Random(seed), probeTo="home.test")

    def connect(self, factory):
        d = defer.Deferred()
        self.attempts.append((factory, d))
        return d

    def accept(self, streamId="abc"):
        """Answer the latest attempt: connect and complete the handshake."""
        proto, transport = self.open()
        proto.dataReceived(HEADER.format(id=streamId).encode())
        proto.dataReceived(b"<handshake/>")
        return proto, transport

    def open(self):
        factory, d = self.attempts[-1]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        d.callback(proto)
        return proto, transport

    def refuse(self):
        self.attempts[-1][1].errback(error.ConnectionRefusedError())


def message(sender="bob@remote.test/x", to="alice@home.test", kind=None, stanzaId=None):
    m = domish.Element(("jabber:server", "message"))
    m["from"], m["to"] = sender, to
    if kind:
        m["type"] = kind
    if stanzaId:
        m["id"] = stanzaId
    m.addElement("body", content="hi")
    return RawStanza.fromElement(m)


def test_handshake_sends_the_sha1_of_stream_id_and_secret():
    h = Harness()
    h.link.startService()
    proto, transport = h.open()
    assert b'to="s2s.home.test"' in transport.value()
    proto.dataReceived(HEADER.format(id="xyz").encode())
    expected = handshakeDigest("xyz", "sekrit")
    assert f"<handshake>{expected}</handshake>".encode() in transport.value()
    assert h.link.state != "up"
    proto.dataReceived(b"<handshake/>")
    assert h.link.state == "up"


def retryDelays(h, count):
    """Refuse C{count} connection attempts in a row; the delay before each retry."""
    h.link.startService()
    delays = []
    for _ in range(count):
        h.refuse()
        call = h.clock.getDelayedCalls()[0]
        delays.append(call.getTime() - h.clock.seconds())
        h.clock.advance(call.getTime() - h.clock.seconds())
    return delays


def backoffSteps(count, cap):
    """1 s, doubling up to the cap (docs/behaviour.md)."""
    return [min(2 ** i, cap) for i in range(count)]


def test_network_failure_retries_with_growing_capped_delay():
    h = Harness(max_retry_delay=8)
    delays = retryDelays(h, 7)
    assert len(h.attempts) == 8
    assert delays[1] > delays[0] * 1.0 or delays[2] > delays[0]
    assert max(delays) <= 8
    assert delays[-1] >= 4   # jitter keeps at least half of the capped delay


def test_each_retry_waits_half_to_all_of_its_backoff_step():
    h = Harness(max_retry_delay=8)
    for delay, step in zip(retryDelays(h, 12), backoffSteps(12, 8), strict=True):
        assert step / 2 <= delay <= step


def test_retry_delays_are_jittered_over_the_half_to_all_range():
    # With the seeded source the twelve fractions of their step spread over
    # most of [0.5, 1]: not the step itself, nor one fixed fraction of it.
    h = Harness(max_retry_delay=8)
    fractions = [d / s for d, s in zip(retryDelays(h, 12), backoffSteps(12, 8), strict=True)]
    assert min(fractions) < 0.6
    assert max(fractions) > 0.9


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=2 ** 32))
def test_retry_delays_stay_in_their_bounds_whatever_the_random_source(seed):
    h = Harness(seed=seed, max_retry_delay=8)
    for delay, step in zip(retryDelays(h, 8), backoffSteps(8, 8), strict=True):
        assert step / 2 <= delay <= step


def test_rejected_secret_waits_the_auth_retry_delay():
    h = Harness(auth_retry_delay=300)
    h.link.startService()
    proto, transport = h.open()
    proto.dataReceived(HEADER.format(id="x").encode())
    proto.dataReceived(b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                       b"</stream:error>")
    proto.connectionLost(None)
    call = h.clock.getDelayedCalls()
    retry = [c for c in call if c.func == h.link._connect]
    assert retry and retry[0].getTime() - h.clock.seconds() == 300


def test_stanzas_wait_while_the_link_is_down_and_flow_after_reconnect():
    h = Harness()
    h.link.startService()
    h.refuse()
    h.link.send(message())
    assert h.bounces == []
    h.clock.advance(2)
    _, transport = h.accept()
    # Sent once the handshake is done, in the stream's namespace
    # (jabber:component:accept): no xmlns='jabber:server' of its own.
    beforeUp, handshake, afterUp = transport.value().partition(b"</handshake>")
    assert handshake
    assert b"<message" not in beforeUp
    assert afterUp == b"<message from='bob@remote.test/x' to='alice@home.test'><body>hi</body></message>"


def test_buffer_overflow_bounces_resource_constraint_to_the_remote_sender():
    h = Harness(buffer_limit=2)
    h.link.startService()
    h.refuse()
    for _ in range(3):
        h.link.send(message())
    assert len(h.bounces) == 1
    bounce = h.bounces[0]
    assert bounce["type"] == "error"
    assert bounce["to"] == "bob@remote.test/x"
    assert bounce["from"] == "alice@home.test"
    assert bounce.error.firstChildElement().name == "resource-constraint"


def test_stanza_waiting_too_long_is_bounced():
    h = Harness(buffer_timeout=30)
    h.link.startService()
    h.refuse()
    h.link.send(message())
    h.clock.advance(29)
    assert h.bounces == []
    h.clock.advance(2)
    assert [b.error.firstChildElement().name for b in h.bounces] == ["recipient-unavailable"]


def test_error_stanza_is_never_bounced():
    h = Harness(buffer_limit=0)
    h.link.startService()
    h.refuse()
    h.link.send(message(kind="error"))
    assert h.bounces == []


def test_stanzas_from_the_c2s_server_reach_the_router_as_the_bytes_it_sent():
    h = Harness()
    h.link.startService()
    proto, _ = h.accept()
    sent = b"<message from='alice@home.test' to='bob@remote.test'><body>x &amp; y</body></message>"
    proto.dataReceived(sent + b" ")
    [stanza] = h.received
    assert (stanza.name, stanza.sender, stanza.recipient, stanza.data) == (
        "message", "alice@home.test", "bob@remote.test", sent)


def test_whitespace_keepalive_is_sent():
    h = Harness(keepalive=60)
    h.link.startService()
    proto, transport = h.accept()
    transport.clear()
    h.clock.advance(61)
    assert transport.value() == b" "


def test_link_reconnects_after_losing_an_established_connection():
    h = Harness()
    h.link.startService()
    proto, _ = h.accept()
    proto.connectionLost(None)
    assert h.link.state == "down"
    h.clock.advance(2)
    assert len(h.attempts) == 2


def test_a_c2s_port_that_never_answers_is_given_up_and_retried():
    h = Harness()
    h.link.startService()
    proto, transport = h.open()
    h.clock.advance(30)
    assert transport.value().endswith(b"</stream:stream>")
    proto.connectionLost(None)
    assert h.link.state == "down"
    h.clock.advance(2)
    assert len(h.attempts) == 2


# Stanzas from remote peers that the link cannot hand over: bounced to their
# sender only where the sender waits for an answer (docs/behaviour.md).

def stanza(name, kind):
    e = domish.Element(("jabber:server", name))
    e["from"], e["to"] = "bob@remote.test/x", "alice@home.test"
    if kind:
        e["type"] = kind
    if name == "message":
        e.addElement("body", content="hi")
    return RawStanza.fromElement(e)


EXPECT_AN_ANSWER = [("message", None), ("message", "normal"), ("message", "chat"),
                    ("message", "groupchat"), ("presence", None), ("presence", "subscribe"),
                    ("iq", "get"), ("iq", "set")]
EXPECT_NO_ANSWER = [("message", "headline"), ("message", "error"), ("presence", "unavailable"),
                    ("presence", "probe"), ("presence", "subscribed"),
                    ("presence", "unsubscribe"), ("presence", "unsubscribed"),
                    ("presence", "error"), ("iq", "result"), ("iq", "error")]


def overflow(name, kind):
    """A link that is down with a full buffer of one message gets the stanza."""
    h = Harness(buffer_limit=1)
    h.link.startService()
    h.refuse()
    h.link.send(message())
    h.link.send(stanza(name, kind))
    return h


def expire(name, kind):
    """The stanza waits in the buffer for longer than buffer_timeout."""
    h = Harness(buffer_timeout=30)
    h.link.startService()
    h.refuse()
    h.link.send(stanza(name, kind))
    h.clock.advance(31)
    return h


@pytest.mark.parametrize(("name", "kind"), EXPECT_AN_ANSWER)
def test_a_stanza_that_expects_an_answer_is_bounced_when_the_buffer_is_full(name, kind):
    h = overflow(name, kind)
    assert [(b.name, b["type"], b["from"], b["to"], b.error.firstChildElement().name)
            for b in h.bounces] == [
        (name, "error", "alice@home.test", "bob@remote.test/x", "resource-constraint")]
    assert h.bounces[0].uri == "jabber:server"


@pytest.mark.parametrize(("name", "kind"), EXPECT_NO_ANSWER)
def test_a_stanza_that_expects_no_answer_is_dropped_when_the_buffer_is_full(name, kind):
    h = overflow(name, kind)
    assert h.bounces == []
    assert [e.name for _, e, _, _ in h.link.buffer] == ["message"]   # dropped, not kept


@pytest.mark.parametrize(("name", "kind"), EXPECT_AN_ANSWER)
def test_a_stanza_that_expects_an_answer_is_bounced_when_it_waited_too_long(name, kind):
    h = expire(name, kind)
    assert [(b.name, b["type"], b["from"], b["to"], b.error.firstChildElement().name)
            for b in h.bounces] == [
        (name, "error", "alice@home.test", "bob@remote.test/x", "recipient-unavailable")]
    assert h.bounces[0].uri == "jabber:server"


@pytest.mark.parametrize(("name", "kind"), EXPECT_NO_ANSWER)
def test_a_stanza_that_expects_no_answer_is_dropped_when_it_waited_too_long(name, kind):
    h = expire(name, kind)
    assert h.bounces == []
    assert list(h.link.buffer) == []
    _, transport = h.accept()
    assert transport.value().endswith(b"</handshake>")   # nothing left to flush


def test_stopping_closes_the_xep0114_way_and_still_handles_what_the_server_sent_before():
    h = Harness()
    h.link.startService()
    proto, transport = h.accept()
    transport.clear()
    gone = h.link.stopService()
    assert transport.value().endswith(b"</stream:stream>")
    assert not gone.called
    # The c2s server wrote this before it saw our closing tag.
    proto.dataReceived(b"<message xmlns='jabber:component:accept' from='alice@home.test' "
                       b"to='bob@remote.test' id='late'><body>x</body></message>")
    assert [m.getAttribute("id") for m in h.received] == ["late"]
    proto.dataReceived(b"</stream:stream>")
    proto.connectionLost(failure.Failure(error.ConnectionDone()))
    assert gone.called and h.link.state == "down"
    h.clock.advance(600)
    assert len(h.attempts) == 1    # no reconnect while stopped


def test_a_stopping_link_gives_the_server_close_wait_seconds_then_drops_the_connection():
    h = Harness()
    h.link.closeWait = 2
    h.link.startService()
    proto, transport = h.accept()
    gone = h.link.stopService()
    h.clock.advance(1.9)
    assert not transport.disconnecting
    h.clock.advance(0.2)
    assert transport.disconnecting
    proto.connectionLost(failure.Failure(error.ConnectionLost()))
    assert gone.called


def quickRetryDelays(h, count):
    delays = []
    for _ in range(count):
        h.refuse()
        call = h.clock.getDelayedCalls()[0]
        delays.append(call.getTime() - h.clock.seconds())
        h.clock.advance(call.getTime() - h.clock.seconds())
    return delays


def test_after_losing_a_link_that_was_up_the_first_retries_are_quick_with_jitter():
    h = Harness()
    h.link.startService()
    proto, _ = h.accept()
    proto.connectionLost(None)
    h.clock.advance(h.clock.getDelayedCalls()[0].getTime() - h.clock.seconds())
    delays = quickRetryDelays(h, 6)
    first = [d for d in [0.05, 0.1, 0.2]]
    # The retry before the first refusal was the 50 ms one; then 100, 200, 200, 200...
    for got, nominal in zip(delays, first[1:] + [0.2, 0.2, 0.2, 0.2]):
        assert nominal / 2 <= got <= nominal
    # Every retry within the fast period: the c2s server accepting again is
    # noticed within 0.2 s, whatever its restart took.
    assert max(delays) <= 0.2


def test_once_the_fast_retry_period_is_over_the_backoff_grows():
    h = Harness(fast_retry_period=1)
    h.link.startService()
    proto, _ = h.accept()
    proto.connectionLost(None)
    h.clock.advance(h.clock.getDelayedCalls()[0].getTime() - h.clock.seconds())
    delays = quickRetryDelays(h, 12)
    assert max(delays[:3]) <= 0.2
    assert delays[-1] >= 4


def test_a_link_that_never_came_up_backs_off_without_quick_retries():
    h = Harness()
    h.link.startService()
    delays = quickRetryDelays(h, 2)
    assert min(delays) >= 0.5


# --- probes: what the c2s server confirmed ---------------------------------------------

PROBE = re.compile(rb"<iq [^>]*id='(s2sgate-probe-\d+)'")


def bodies(data):
    return re.findall(rb"<message[^>]*id='(\w+)'", data)


def numbered(i):
    return message(stanzaId=f"m{i}")


def returnProbe(proto, probeId):
    proto.dataReceived(b"<iq xmlns='jabber:component:accept' type='result' from='home.test' "
                       b"to='s2s.home.test' id='" + probeId + b"'/>")


def test_after_a_burst_the_link_pings_the_c2s_server():
    h = Harness()
    h.link.startService()
    proto, transport = h.accept()
    transport.clear()
    for i in range(3):
        h.link.send(numbered(i))
    assert PROBE.findall(transport.value()) == []
    h.clock.advance(0)
    data = transport.value()
    [probe] = PROBE.findall(data)
    assert data.index(probe) > data.index(b"id='m2'")
    iq = data[data.index(b"<iq"):]
    assert b'to="home.test"' in iq and b"urn:xmpp:ping" in iq


def test_stanzas_no_returned_probe_confirmed_go_out_again_on_the_next_link():
    h = Harness()
    h.link.startService()
    proto, transport = h.accept()
    for i in range(2):
        h.link.send(numbered(i))
    h.clock.advance(0)
    proto.connectionLost(failure.Failure(error.ConnectionLost()))
    h.clock.advance(1)
    _, transport2 = h.accept()
    assert bodies(transport2.value()) == [b"m0", b"m1"]
    assert h.bounces == [] and h.received == []


def test_a_returned_probe_confirms_what_was_written_before_it_and_is_not_delivered():
    h = Harness()
    h.link.startService()
    proto, transport = h.accept()
    h.link.send(numbered(0))
    h.clock.advance(0)
    [probe] = PROBE.findall(transport.value())
    h.link.send(numbered(1))       # after the probe: not covered by it
    returnProbe(proto, probe)
    assert h.received == []        # the probe is ours, not a stanza for the router
    proto.connectionLost(failure.Failure(error.ConnectionLost()))
    h.clock.advance(1)
    _, transport2 = h.accept()
    assert bodies(transport2.value()) == [b"m1"]


def test_a_stanza_unconfirmed_on_two_lost_links_is_bounced_saying_it_may_have_arrived():
    h = Harness()
    h.link.startService()
    proto, _ = h.accept()
    h.link.send(numbered(0))
    proto.connectionLost(failure.Failure(error.ConnectionLost()))
    h.clock.advance(1)
    proto2, transport2 = h.accept()
    assert bodies(transport2.value()) == [b"m0"]
    proto2.connectionLost(failure.Failure(error.ConnectionLost()))
    [bounce] = h.bounces
    assert (bounce["id"], bounce["type"], bounce.error.firstChildElement().name) == (
        "m0", "error", "recipient-unavailable")
    assert "may or may not have arrived" in bounce.error.toXml()
