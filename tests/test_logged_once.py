"""
What the docs promise of the log: each authenticated pair says once how its stream
is secured (inbound too, STARTTLS or direct TLS), and each state change of the
component link is logged once, not at every retry.
"""

import pytest
from twisted.logger import globalLogPublisher

from tests.s2sfakes import LOCAL, REMOTE
from tests.test_component import Harness
from tests.test_inbound_tls import auth, secured, valid
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
