"""
Bidirectional s2s streams (XEP-0288): the initiating step, the receiving
offer, the pair checks on a bidi outbound stream and the session table's
view of a bidi inbound stream, then two gateways federating in memory.
"""

from types import SimpleNamespace

from s2sgate.features.bidi import Bidi
from s2sgate.xmpp.features import StreamFeatures
from s2sgate.xmpp.namespaces import NS_BIDI, NS_BIDI_FEATURE, NS_DB, NS_STREAMS
from s2sgate.xmpp.rawstanza import RawStanza
from tests.s2sfakes import LOCAL, MUC, REMOTE, VALID, Output, connect, inbound, makeGateway, stanza
from tests.test_inbound import dbResult, header
from tests.test_outbound import FakeConnector, dbAnswer, local, makePool, peerHeader
from tests.test_plugin_feature import MemoryNetwork, message, site
from tests.test_sessions import Stream

BIDI_FEATURES = (b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/>"
                 b"</dialback><bidi xmlns='urn:xmpp:features:bidi'/></stream:features>")
PLAIN_FEATURES = (b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/>"
                  b"</dialback></stream:features>")
BIDI = f"<bidi xmlns='{NS_BIDI}'/>".encode()


def outbound(features=BIDI_FEATURES, **s2s):
    """An outbound stream LOCAL -> REMOTE, features received, dialback answered valid."""
    gw, pool, connector = makePool(**s2s)
    stream = pool.newStream(LOCAL, REMOTE, gw.runtime)
    out = Output(connect(stream))
    stream.dataReceived(peerHeader() + features)
    written = [(e.uri, e.name) for e in out.update().elements]
    stream.dataReceived(dbAnswer("valid"))
    assert stream.authMethod == "dialback"
    pool.sessions.authenticated(stream, LOCAL, REMOTE)
    return gw, pool, stream, out, written


def fromPeer(sender=f"juliet@{REMOTE}/balcony", to=f"romeo@{LOCAL}", body="back"):
    return stanza(sender=sender, to=to, body=body).toXml().encode()


# the initiating side


def test_bidi_is_requested_when_offered_before_dialback_starts():
    _, _, stream, _, written = outbound()
    assert written == [(NS_BIDI, "bidi"), (NS_DB, "result")]
    assert stream.bidi


def test_bidi_is_not_requested_when_not_offered():
    _, _, stream, _, written = outbound(features=PLAIN_FEATURES)
    assert written == [(NS_DB, "result")]
    assert not stream.bidi


def test_bidi_is_not_requested_when_switched_off():
    _, _, stream, _, written = outbound(bidi=False)
    assert written == [(NS_DB, "result")]
    assert not stream.bidi


def test_bidi_is_not_requested_on_plaintext_a_peer_must_not_carry_stanzas_on():
    gw = makeGateway()
    step = Bidi(gw.runtime)
    features = StreamFeatures.parse(_element(BIDI_FEATURES))
    plaintext = SimpleNamespace(bidi=False, secure=False, remote=REMOTE,
                                requirements=SimpleNamespace(mustEncrypt=lambda remote: True))
    assert not step.applies(plaintext, features)
    secured = SimpleNamespace(bidi=False, secure=True, remote=REMOTE,
                              requirements=plaintext.requirements)
    assert step.applies(secured, features)


def _element(data):
    from s2sgate.xmpp.parser import StreamParser
    elements = []
    parser = StreamParser(lambda h: None, elements.append, lambda: None)
    parser.feed(peerHeader() + data)
    return elements[0]


def test_a_bidi_outbound_stream_delivers_the_peers_stanza_to_us():
    gw, _, stream, out, _ = outbound()
    stream.dataReceived(fromPeer())
    [delivered] = gw.router.delivered
    assert (delivered["from"], delivered["to"], str(delivered.body)) == (
        f"juliet@{REMOTE}/balcony", f"romeo@{LOCAL}", "back")
    assert stream.stanzasIn == 1 and out.streamError() is None


def test_a_bidi_outbound_stream_hands_the_peers_stanza_on_as_the_bytes_it_sent():
    gw, _, stream, out, _ = outbound()
    data = fromPeer()
    stream.dataReceived(data)
    [stanza] = gw.router.local.stanzas
    assert stanza.data == data


def test_a_bidi_outbound_stream_refuses_a_sender_not_authenticated_on_it():
    gw, _, stream, out, _ = outbound()
    stream.dataReceived(fromPeer(sender="mallory@other.test"))
    assert out.streamError() == "invalid-from"
    assert gw.router.delivered == []


def test_a_bidi_outbound_stream_refuses_a_local_domain_of_another_pair():
    # The stream authenticated (LOCAL, REMOTE): REMOTE may write to LOCAL only.
    gw, _, stream, out, _ = outbound()
    stream.dataReceived(fromPeer(to=f"room@{MUC}"))
    assert out.streamError() == "invalid-from"
    assert gw.router.delivered == []


def test_a_bidi_outbound_stream_refuses_a_recipient_we_do_not_serve():
    gw, _, stream, out, _ = outbound()
    stream.dataReceived(fromPeer(to="someone@elsewhere.test"))
    assert out.streamError() == "host-unknown"
    assert gw.router.delivered == []


def test_a_stanza_on_an_outbound_stream_without_bidi_is_a_stream_error():
    gw, _, stream, out, _ = outbound(features=PLAIN_FEATURES)
    stream.dataReceived(fromPeer())
    assert out.streamError() == "unsupported-stanza-type"
    assert gw.router.delivered == []


def test_the_peers_stanzas_on_a_bidi_outbound_stream_stop_being_read_under_back_pressure():
    _, pool, stream, _, _ = outbound()
    assert pool.sessions.pauseInbound() == 1
    assert stream.transport.producerState == "paused"
    pool.sessions.resumeInbound()
    assert stream.transport.producerState == "producing"


# the receiving side


def opened(**s2s):
    gw = makeGateway(**s2s)
    stream = inbound(gw)
    out = Output(connect(stream))
    stream.dataReceived(header())
    return gw, stream, out


def features(out):
    [f] = out.named("features", NS_STREAMS)[-1:]
    return [(c.uri, c.name) for c in f.elements()]


def afterRestart(out):
    """What the stream writes from now on: a new header first (RFC 6120 4.3.3)."""
    fresh = Output(out.transport)
    fresh._seen = len(out.transport.value())
    return fresh


def bidiInbound(**s2s):
    """An inbound stream REMOTE -> LOCAL that asked for bidi, dialback verified."""
    gw, stream, out = opened(**s2s)
    stream.dataReceived(BIDI + dbResult())
    gw.verifier.requests[-1][-1].callback(VALID)
    return gw, stream, out


def test_bidi_is_offered_before_authentication():
    _, _, out = opened()
    assert (NS_BIDI_FEATURE, "bidi") in features(out)


def test_bidi_is_not_offered_when_switched_off():
    _, _, out = opened(bidi=False)
    assert (NS_BIDI_FEATURE, "bidi") not in features(out)


def test_bidi_is_not_offered_on_a_restarted_stream_once_authenticated():
    gw, stream, out = bidiInbound()
    stream.expectRestart()
    out = afterRestart(out)
    stream.dataReceived(header())
    assert (NS_BIDI_FEATURE, "bidi") not in features(out)


def test_a_bidi_request_after_authentication_is_a_policy_violation():
    gw, stream, out = opened()
    stream.dataReceived(dbResult())
    gw.verifier.requests[-1][-1].callback(VALID)
    stream.dataReceived(BIDI)
    assert out.streamError() == "policy-violation"
    assert not stream.bidi


def test_a_bidi_request_when_switched_off_is_refused():
    _, stream, out = opened(bidi=False)
    stream.dataReceived(BIDI)
    assert out.streamError() == "unsupported-stanza-type"


def test_a_bidi_inbound_stream_carries_our_stanzas_for_its_pair():
    gw, stream, out = bidiInbound()
    assert gw.sessions.outgoing(LOCAL, REMOTE) is stream
    # The pair the peer authenticated, reversed; no other local domain.
    assert gw.sessions.outgoing(MUC, REMOTE) is None


def test_an_inbound_stream_without_bidi_never_carries_our_stanzas():
    gw, stream, out = opened()
    stream.dataReceived(dbResult())
    gw.verifier.requests[-1][-1].callback(VALID)
    assert gw.sessions.outgoing(LOCAL, REMOTE) is None


def test_the_outbound_link_writes_on_the_bidi_inbound_stream_without_connecting():
    gw, stream, out = bidiInbound()
    connector = FakeConnector()
    from s2sgate.s2s.outbound import OutboundPool
    pool = OutboundPool(gw.clock, gw.current, connector, gw.sessions, gw.router.bounce,
                        gw.router.fromRemote)
    pool.send(LOCAL, REMOTE, local("over your stream"))
    [sent] = out.named("message")
    assert (sent["from"], sent["to"], str(sent.body)) == (
        f"alice@{LOCAL}/pc", f"bob@{REMOTE}", "over your stream")
    assert connector.calls == [] and stream.stanzasOut == 1


def test_our_own_outbound_stream_is_preferred_to_a_bidi_inbound_one():
    gw, stream, _ = bidiInbound()
    own = Stream(direction="out", pairs={(LOCAL, REMOTE)}, closing=False, bidi=False)
    gw.sessions.authenticated(own, LOCAL, REMOTE)
    assert gw.sessions.outgoing(LOCAL, REMOTE) is own
    gw.sessions.untrack(own)
    assert gw.sessions.outgoing(LOCAL, REMOTE) is stream


def test_a_closing_or_closed_bidi_inbound_stream_carries_nothing_more():
    gw, stream, _ = bidiInbound()
    stream.closeStream()
    assert gw.sessions.outgoing(LOCAL, REMOTE) is None
    stream.connectionLost(None)
    assert gw.sessions.outgoing(LOCAL, REMOTE) is None


def test_our_stanzas_wait_for_our_header_after_a_sasl_restart():
    gw, stream, out = bidiInbound()
    stream.expectRestart()
    out = afterRestart(out)
    stream.sendStanza(RawStanza.fromElement(
        stanza(sender=f"alice@{LOCAL}/pc", to=f"bob@{REMOTE}", body="held")))
    assert out.transport.value()[out._seen:] == b""
    stream.dataReceived(header())
    # The new header, the features, then what waited.
    assert [e.name for e in out.update().elements] == ["features", "message"]
    assert out.header is not None and str(out.elements[1].body) == "held"


def test_after_our_new_header_our_stanzas_go_out_at_once_again():
    gw, stream, out = bidiInbound()
    stream.expectRestart()
    out = afterRestart(out)
    stream.dataReceived(header())
    stream.sendStanza(_ours("after"))
    assert [e.name for e in out.update().elements] == ["features", "message"]

def test_sessions_show_a_bidi_stream():
    gw, stream, _ = bidiInbound()
    [info] = gw.sessions.describe()
    assert info["bidi"] is True and info["direction"] == "in"


def _ours(body):
    return RawStanza.fromElement(stanza(sender=f"alice@{LOCAL}/pc", to=f"bob@{REMOTE}", body=body))


def test_each_of_our_stanzas_on_a_bidi_inbound_stream_is_counted_in_the_session_table():
    gw, stream, _ = bidiInbound()
    for n in range(3):
        stream.sendStanza(_ours(f"#{n}"))
    [info] = gw.sessions.describe()
    assert info["stanzas_out"] == 3


def test_the_end_line_of_a_bidi_inbound_stream_counts_our_stanzas_on_it():
    from twisted.logger import globalLogPublisher
    gw, stream, _ = bidiInbound()
    stream.sendStanza(_ours("one"))
    stream.sendStanza(_ours("two"))
    lines = []
    globalLogPublisher.addObserver(lines.append)
    try:
        stream.connectionLost(None)
    finally:
        globalLogPublisher.removeObserver(lines.append)
    [line] = [e for e in lines if e.get("event") == "stream.lost"]
    assert (line["stanzas_in"], line["stanzas_out"]) == (0, 2)


# two gateways


def test_two_gateways_carry_both_directions_on_the_one_stream_the_first_opened():
    network = MemoryNetwork()
    a, clockA = site(network, "a.test")
    b, clockB = site(network, "b.test")
    a.link.fromLocal(message("alice@a.test/pc", "bob@b.test", "hello"))
    network.flush(clockA)
    assert [str(m.body) for m in b.link.delivered] == ["hello"]
    # The stream a.test opened, and the dialback verify leg b.test opened back.
    connections = len(network.pumps)
    b.link.fromLocal(message("bob@b.test/pc", "alice@a.test", "hello back"))
    network.flush(clockB)
    network.flush(clockA)
    [reply] = a.link.delivered
    assert (reply["from"], reply["to"], str(reply.body)) == (
        "bob@b.test/pc", "alice@a.test", "hello back")
    assert len(network.pumps) == connections
    [out] = [s for s in a.sessions() if s["direction"] == "out"]
    assert out["bidi"] and out["stanzas_in"] == 1 and out["stanzas_out"] == 1
    assert [s for s in b.sessions() if s["direction"] == "out"] == []
    [into] = [s for s in b.sessions() if s["direction"] == "in"]
    assert into["bidi"] and into["stanzas_out"] == 1


def test_without_bidi_the_reply_opens_a_stream_of_its_own():
    network = MemoryNetwork()
    a, clockA = site(network, "a.test")
    b, clockB = site(network, "b.test")
    a.link.fromLocal(message("alice@a.test/pc", "bob@b.test", "hello"))
    network.flush(clockA)
    b.current.swap(b.current.runtime.reloaded(_noBidi(b.config), None))
    a.current.swap(a.current.runtime.reloaded(_noBidi(a.config), None))
    a.pool.closeAll()
    network.flush(clockA)
    a.link.fromLocal(message("alice@a.test/pc", "bob@b.test", "hello again"))
    network.flush(clockA)
    b.link.fromLocal(message("bob@b.test/pc", "alice@a.test", "hello back"))
    network.flush(clockB)
    network.flush(clockA)
    assert [str(m.body) for m in a.link.delivered] == ["hello back"]
    assert [s["bidi"] for s in b.sessions() if s["direction"] == "out"] == [False]


def _noBidi(config):
    from dataclasses import replace
    return replace(config, s2s=replace(config.s2s, bidi=False))
