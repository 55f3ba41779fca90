"""
What the docs promise of the log: each authenticated pair says once how its stream
is secured (inbound too, STARTTLS or direct TLS), and each state change of the
component link is logged once, not at every retry.
"""

import pytest
from twisted.logger import globalLogPublisher

from tests.s2sfakes import LOCAL, REMOTE, VALID
from tests.test_component import Harness
from tests.test_inbound import authenticated
from tests.test_inbound_tls import auth, dbResult, header, secured, selfSigned, valid
from tests.test_outbound_tls import SUCCESS, peerHeader
from tests.test_outbound_tls import features as outboundFeatures
from tests.test_outbound_tls import secured as outboundSecured


@pytest.fixture
def events():
    """Every log event emitted during the test that carries an 'event' field."""
    seen = []

    def observe(e):
        if "event" in e:
            seen.append(e)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def named(events, name):
    return [e for e in events if e["event"] == name]


def test_an_inbound_starttls_pair_logs_once_how_it_is_secured(events):
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth("="))
    [line] = named(events, "inbound.established")
    assert (line["remote"], line["local"], line["method"], line["first"]) == (
        REMOTE, LOCAL, "sasl-external", True)
    assert line["security"] == "STARTTLS TLSv1.3 TLS_AES_256_GCM_SHA384 certificate valid"


def test_an_inbound_pair_without_tls_logs_once_that_it_has_none(events):
    gw, stream, out = authenticated()
    [line] = named(events, "inbound.established")
    assert (line["remote"], line["local"], line["method"]) == (REMOTE, LOCAL, "dialback")
    assert line["security"] == "no TLS"

def test_each_inbound_pair_logs_the_verdict_on_its_own_domains_certificate(events):
    other = "other.test"
    gw, stream, out = secured(mode="required",
                              verdicts={REMOTE: valid(REMOTE), other: selfSigned()})
    stream.dataReceived(auth("="))
    stream.dataReceived(header())
    stream.dataReceived(dbResult(sender=other))
    gw.verifier.requests[-1][-1].callback(VALID)
    lines = {e["remote"]: e["security"] for e in named(events, "inbound.established")}
    assert lines[REMOTE].endswith("certificate valid")
    assert lines[other].endswith("certificate self-signed")

def test_an_inbound_direct_tls_stream_says_direct_tls():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.directTLS = True     # what InboundFactory(directTLS=True) sets at construction
    stream.certificateFor(REMOTE)
    assert stream.securitySummary(REMOTE).startswith("direct TLS TLSv1.3")


def test_an_outbound_stream_logs_once_when_authenticated(events):
    gw, pool, stream, out, results = outboundSecured(verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(SUCCESS)
    stream.dataReceived(peerHeader("peer-3") + outboundFeatures())
    [line] = named(events, "outbound.established")
    assert (line["local"], line["remote"], line["method"]) == (LOCAL, REMOTE, "sasl-external")
    assert line["security"] == "STARTTLS TLSv1.3 TLS_AES_256_GCM_SHA384 certificate valid"


def test_each_component_link_state_change_is_logged_once(events):
    h = Harness()
    h.link.startService()
    for _ in range(4):                       # the c2s server is down: four retries
        h.refuse()
        h.clock.advance(h.clock.getDelayedCalls()[0].getTime() - h.clock.seconds())
    assert len(named(events, "component.network_failure")) == 1
    proto, transport = h.accept()
    assert len(named(events, "component.up")) == 1
    proto.connectionLost(None)
    assert len(named(events, "component.down")) == 1
    h.clock.advance(h.clock.getDelayedCalls()[0].getTime() - h.clock.seconds())
    h.refuse()                               # down again: a new state, logged again
    assert len(named(events, "component.network_failure")) == 2


# --- one line per stream end: closed or lost, with pairs, direction, security, counters ---


def _drop(stream):
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    stream.connectionLost(Failure(ConnectionLost("gone")))


def test_an_inbound_stream_closed_by_the_peer_logs_one_closed_line(events):
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth("="))
    stream.dataReceived(header(sender=REMOTE))      # the restart after SASL
    stream.dataReceived(b"</stream:stream>")
    _drop(stream)
    [line] = named(events, "stream.closed")
    assert not named(events, "stream.lost")
    assert (line["direction"], line["remote"], line["local"], line["reason"]) == (
        "inbound", REMOTE, LOCAL, "closed by the peer")
    assert line["pairs"] == [[REMOTE, LOCAL]] and line["method"] == "sasl-external"
    assert line["security"].startswith("STARTTLS TLSv1.3")
    assert line["stanzas_in"] == 0 and line["bytes_in"] > 0 and line["bytes_out"] > 0
    assert line["log_level"].name == "info"
    assert f"inbound stream {REMOTE} -> {LOCAL} closed by the peer after" in \
        line["log_format"].format(**line)


def test_an_inbound_stream_dropped_without_a_closing_tag_logs_lost(events):
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth("="))
    _drop(stream)
    [line] = named(events, "stream.lost")
    assert (line["direction"], line["reason"], line["log_level"].name) == ("inbound", None, "warn")
    assert "lost (connection dropped without a closing tag)" in line["log_format"].format(**line)


def test_an_unauthenticated_inbound_stream_logs_no_end_line(events):
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    _drop(stream)
    assert not named(events, "stream.lost") and not named(events, "stream.closed")


def test_an_outbound_stream_we_close_logs_closed_with_its_counters(events):
    gw, pool, stream, out, results = outboundSecured(verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(SUCCESS)
    stream.dataReceived(peerHeader("peer-3") + outboundFeatures())
    stream.closeStream()
    _drop(stream)
    [line] = named(events, "stream.closed")
    assert (line["direction"], line["local"], line["remote"], line["reason"]) == (
        "outbound", LOCAL, REMOTE, "closed by us")
    assert line["pairs"] == [[LOCAL, REMOTE]] and line["stanzas_out"] == 0
    assert {"seconds", "bytes_in", "bytes_out", "stream", "security"} <= set(line)


def test_an_outbound_stream_ended_by_a_stream_error_says_which(events):
    gw, pool, stream, out, results = outboundSecured(verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(SUCCESS)
    stream.dataReceived(peerHeader("peer-3") + outboundFeatures())
    stream.dataReceived(b"<stream:error><system-shutdown "
                        b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
    _drop(stream)
    [line] = named(events, "stream.closed")
    assert line["reason"] == "stream error system-shutdown received"


def test_established_lines_name_their_direction(events):
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth("="))
    gw2, pool, ostream, oout, results = outboundSecured(verdicts={REMOTE: valid(REMOTE)})
    ostream.dataReceived(SUCCESS)
    ostream.dataReceived(peerHeader("peer-3") + outboundFeatures())
    assert [e["direction"] for e in named(events, "inbound.established")] == ["inbound"]
    assert [e["direction"] for e in named(events, "outbound.established")] == ["outbound"]
