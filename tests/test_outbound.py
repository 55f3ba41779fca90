from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from s2sgate.auth.dialback import NS_DB
from s2sgate.features.dialback import DialbackVerify, Verdict
from s2sgate.interfaces import IConnector
from s2sgate.net.connector import Attempt, ConnectFailed, Connection
from s2sgate.s2s.negotiation import InitiatingStream
from s2sgate.s2s.outbound import OutboundPool
from s2sgate.xmpp.parser import NS_STREAMS
from s2sgate.xmpp.rawstanza import RawStanza
from s2sgate.xmpp.stanzas import NS_STANZA_ERRORS
from tests.s2sfakes import LOCAL, REMOTE, Output, connect, makeGateway, stanza

PEER_ID = "peer-stream-1"


def peerHeader(streamId=PEER_ID, version="1.0"):
    attrs = f" id='{streamId}'" if streamId else ""
    if version:
        attrs += f" version='{version}'"
    return (f"<stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
            f"xmlns:db='{NS_DB}' from='{REMOTE}' to='{LOCAL}'{attrs}>").encode()


FEATURES = (b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/>"
            b"</dialback></stream:features>")


def dbAnswer(kind, name="result", extra="", inner=""):
    return f"<db:{name} from='{REMOTE}' to='{LOCAL}' type='{kind}'{extra}>{inner}</db:{name}>".encode()


@implementer(IConnector)
class FakeConnector:
    """Records each call, returns a Deferred the test fires (with a Connection)."""

    def __init__(self):
        self.calls = []

    def connect(self, domain, factory, directTLS=None):
        call = SimpleNamespace(domain=domain, factory=factory, directTLS=directTLS,
                               d=defer.Deferred())
        self.calls.append(call)
        return call.d


def makePool(connector=None, **s2s):
    gw = makeGateway(**s2s)
    connector = connector if connector is not None else FakeConnector()
    pool = OutboundPool(gw.clock, gw.current, connector, gw.sessions, gw.router.bounce,
                        gw.router.fromRemote)
    return gw, pool, connector


def newStream(**s2s):
    gw, pool, connector = makePool(**s2s)
    stream = pool.newStream(LOCAL, REMOTE, gw.runtime)
    out = Output(connect(stream))
    results = []
    stream.ready.addBoth(results.append)
    return gw, pool, stream, out, results


def newVerifyLeg(streamId="their-id", key="their-key", **s2s):
    """A verify leg's stream as the Verifier builds it: its step keeps the verdict."""
    gw = makeGateway(**s2s)
    step = DialbackVerify(streamId, key)
    stream = InitiatingStream(gw.clock, LOCAL, REMOTE,
                              [s(gw.runtime) for s in gw.runtime.verifySteps] + [step],
                              requirements=gw.runtime.requirements, limits=gw.runtime.limits)
    out = Output(connect(stream))
    results = []
    stream.ready.addBoth(results.append)
    return gw, step, stream, out, results


def succeed(call, answer=b"valid"):
    """Complete connection attempt C{call}: connect, negotiate, dialback valid."""
    stream = call.factory.buildProtocol(None)
    out = Output(connect(stream))
    call.d.callback(Connection(stream, None, None))
    stream.dataReceived(peerHeader() + FEATURES)
    stream.dataReceived(dbAnswer(answer.decode()))
    return stream, out


def failWith(call, condition="remote-server-not-found", text="no such host"):
    call.d.errback(ConnectFailed(condition, text, [Attempt("dns", REMOTE, text)]))


def local(body="1", kind=None):
    e = stanza(sender=f"alice@{LOCAL}/pc", to=f"bob@{REMOTE}", body=body)
    if kind:
        e["type"] = kind
    return RawStanza.fromElement(e)


def errorOf(bounce):
    error = bounce.error
    children = {c.name: str(c) for c in error.elements() if c.uri == NS_STANZA_ERRORS}
    condition = next(n for n in children if n != "text")
    return condition, children.get("text")


# OutboundStream


def test_stream_sends_header_with_from_to_version_and_db_namespace():
    gw, pool, stream, out, results = newStream()
    data = out.transport.value()
    assert f'xmlns:db="{NS_DB}"'.encode() in data
    out.update()
    assert (out.header["from"], out.header["to"], out.header["version"]) == (LOCAL, REMOTE, "1.0")
    assert out.header.defaultUri == "jabber:server"


def test_stream_sends_db_result_with_the_key_for_the_peer_stream_id_after_features():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader())
    assert out.named("result", NS_DB) == []
    stream.dataReceived(FEATURES)
    [result] = out.named("result", NS_DB)
    assert (result["from"], result["to"]) == (LOCAL, REMOTE)
    assert str(result) == gw.keys.generate(REMOTE, LOCAL, PEER_ID)
    assert b"<db:result" in out.transport.value()


def test_pre_1_0_peer_gets_db_result_right_after_its_header():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader(version=None))
    [result] = out.named("result", NS_DB)
    assert str(result) == gw.keys.generate(REMOTE, LOCAL, PEER_ID)


def test_peer_header_without_id_fails_ready():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader(streamId=None))
    [failure] = results
    assert failure.check(ConnectFailed)
    assert out.streamError() == "invalid-xml"


def test_db_result_valid_fires_ready_with_the_stream():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader() + FEATURES + dbAnswer("valid"))
    assert results == [stream]
    assert stream.authMethod == "dialback"


def test_db_result_valid_from_another_pair_is_ignored():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader() + FEATURES)
    stream.dataReceived(f"<db:result from='other.test' to='{LOCAL}' type='valid'/>".encode())
    assert results == []


def test_db_result_invalid_fails_ready_with_connect_failed():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader() + FEATURES + dbAnswer("invalid"))
    [failure] = results
    assert failure.check(ConnectFailed)
    assert failure.value.condition == "remote-server-not-found"
    assert out.update().ended


def test_db_result_error_fails_ready_with_the_reason_in_the_text():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader() + FEATURES + dbAnswer(
        "error", inner=f"<error type='cancel'><item-not-found xmlns='{NS_STANZA_ERRORS}'/></error>"))
    [failure] = results
    assert failure.check(ConnectFailed)
    assert "item-not-found" in failure.value.text


def test_db_result_error_fails_ready_with_remote_server_not_found():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader() + FEATURES + dbAnswer(
        "error", inner=f"<error type='cancel'><item-not-found xmlns='{NS_STANZA_ERRORS}'/></error>"))
    [failure] = results
    assert failure.value.condition == "remote-server-not-found"


def test_db_result_invalid_says_the_peer_did_not_verify_our_key():
    # The peer's verdict, not an internal error of ours.
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader() + FEATURES + dbAnswer("invalid"))
    [failure] = results
    assert "could not verify our dialback key (type=invalid)" in failure.value.text


def test_negotiation_timeout_fails_ready_with_remote_server_timeout():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader() + FEATURES)
    gw.clock.advance(gw.config.s2s.negotiation_timeout)
    [failure] = results
    assert failure.check(ConnectFailed)
    assert failure.value.condition == "remote-server-timeout"
    assert out.streamError() == "connection-timeout"


def test_no_negotiation_timeout_once_ready():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader() + FEATURES + dbAnswer("valid"))
    gw.clock.advance(gw.config.s2s.negotiation_timeout)
    assert out.streamError() is None


def test_stream_error_from_peer_fails_ready():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader() + b"<stream:error><host-unknown "
                        b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
    [failure] = results
    assert "host-unknown" in failure.value.text


def test_connection_lost_during_negotiation_fails_ready():
    gw, pool, stream, out, results = newStream()
    stream.connectionLost(Failure(Exception("reset")))
    [failure] = results
    assert failure.check(ConnectFailed)


def test_required_starttls_with_use_starttls_false_fails_ready():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader() + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:"
                        b"xmpp-tls'><required/></starttls></stream:features>")
    [failure] = results
    assert "STARTTLS" in failure.value.text
    assert out.named("result", NS_DB) == []


def test_verify_leg_sends_db_verify_with_id_and_key():
    gw, step, stream, out, results = newVerifyLeg()
    stream.dataReceived(peerHeader() + FEATURES)
    [verify] = out.named("verify", NS_DB)
    assert (verify["from"], verify["to"], verify["id"], str(verify)) == (
        LOCAL, REMOTE, "their-id", "their-key")
    assert out.named("result", NS_DB) == []


@pytest.mark.parametrize("kind", ["valid", "invalid"])
def test_verify_leg_keeps_the_answer_as_its_verdict(kind):
    gw, step, stream, out, results = newVerifyLeg()
    stream.dataReceived(peerHeader() + FEATURES + dbAnswer(kind, name="verify", extra=" id='their-id'"))
    assert results == [stream]
    assert step.verdict == Verdict(kind == "valid", kind)
    assert out.update().ended


def test_verify_leg_error_answer_carries_the_reason():
    gw, step, stream, out, results = newVerifyLeg()
    stream.dataReceived(peerHeader() + FEATURES + dbAnswer(
        "error", name="verify",
        inner=f"<error type='cancel'><item-not-found xmlns='{NS_STANZA_ERRORS}'/></error>"))
    assert step.verdict == Verdict(False, "error: item-not-found")


def test_pool_open_survives_negotiation_finishing_before_connect_returns():
    gw, pool, connector = makePool()
    streams = []
    defer.ensureDeferred(pool.open(LOCAL, REMOTE)).addBoth(streams.append)
    [call] = connector.calls
    stream = call.factory.buildProtocol(None)
    connect(stream)
    stream.dataReceived(peerHeader() + FEATURES + dbAnswer("valid"))
    call.d.callback(Connection(stream, None, None))
    assert streams == [stream]


# OutboundLink / OutboundPool


def test_one_attempt_in_flight_however_many_stanzas():
    gw, pool, connector = makePool()
    for i in range(5):
        pool.send(LOCAL, REMOTE, local(str(i)))
    assert len(connector.calls) == 1
    assert len(pool.links[(LOCAL, REMOTE)].queue) == 5


def test_each_pair_gets_its_own_link_and_attempt():
    gw, pool, connector = makePool()
    pool.send(LOCAL, REMOTE, local())
    pool.send(LOCAL, "other.test", local())
    assert [c.domain for c in connector.calls] == [REMOTE, "other.test"]


def test_success_flushes_the_queue_in_order():
    gw, pool, connector = makePool()
    for i in range(3):
        pool.send(LOCAL, REMOTE, local(str(i)))
    stream, out = succeed(connector.calls[0])
    bodies = [str(m.body) for m in out.named("message")]
    assert bodies == ["0", "1", "2"]
    assert not pool.links[(LOCAL, REMOTE)].queue
    assert gw.router.delivered == []
    assert pool.sent == 3


def test_stanzas_after_success_go_straight_to_the_stream():
    gw, pool, connector = makePool()
    pool.send(LOCAL, REMOTE, local("0"))
    stream, out = succeed(connector.calls[0])
    pool.send(LOCAL, REMOTE, local("1"))
    assert [str(m.body) for m in out.named("message")] == ["0", "1"]
    assert len(connector.calls) == 1


def test_sent_stanzas_are_not_serialised_with_a_repeated_default_namespace():
    gw, pool, connector = makePool()
    pool.send(LOCAL, REMOTE, local("0"))
    stream, out = succeed(connector.calls[0])
    assert b"<message from=" in out.transport.value()
    assert b"<message xmlns=" not in out.transport.value()


def test_queue_overflow_bounces_resource_constraint():
    gw, pool, connector = makePool(queue_limit=2)
    for i in range(3):
        pool.send(LOCAL, REMOTE, local(str(i)))
    [bounce] = gw.router.delivered
    assert errorOf(bounce)[0] == "resource-constraint"
    assert bounce["to"] == f"alice@{LOCAL}/pc"
    assert len(pool.links[(LOCAL, REMOTE)].queue) == 2


def test_failure_bounces_every_queued_stanza_with_condition_and_text():
    gw, pool, connector = makePool()
    for i in range(3):
        pool.send(LOCAL, REMOTE, local(str(i)))
    failWith(connector.calls[0], "remote-server-timeout", "nobody home")
    assert len(gw.router.delivered) == 3
    assert [errorOf(b) for b in gw.router.delivered] == [("remote-server-timeout", "nobody home")] * 3
    assert [str(b.body) for b in gw.router.delivered] == ["0", "1", "2"]


def test_failure_of_a_non_connect_failed_error_bounces_remote_server_not_found():
    gw, pool, connector = makePool()
    pool.send(LOCAL, REMOTE, local())
    connector.calls[0].d.errback(RuntimeError("boom"))
    [bounce] = gw.router.delivered
    assert errorOf(bounce)[0] == "remote-server-not-found"


def test_stanza_during_backoff_waits_without_bounce_or_new_attempt():
    gw, pool, connector = makePool()
    pool.send(LOCAL, REMOTE, local("0"))
    failWith(connector.calls[0])
    gw.router.delivered.clear()
    pool.send(LOCAL, REMOTE, local("1"))
    assert gw.router.delivered == []
    assert len(connector.calls) == 1
    assert len(pool.links[(LOCAL, REMOTE)].queue) == 1


def test_stanza_during_backoff_triggers_an_attempt_once_retry_at_has_passed():
    gw, pool, connector = makePool()
    pool.send(LOCAL, REMOTE, local("0"))
    failWith(connector.calls[0])
    link = pool.links[(LOCAL, REMOTE)]
    pool.send(LOCAL, REMOTE, local("1"))
    gw.clock.advance(link.retryAt - gw.clock.seconds() - 0.01)
    assert len(connector.calls) == 1
    gw.clock.advance(0.01)
    assert len(connector.calls) == 2
    stream, out = succeed(connector.calls[1])
    assert [str(m.body) for m in out.named("message")] == ["1"]


def test_only_one_retry_is_scheduled_during_backoff():
    gw, pool, connector = makePool()
    pool.send(LOCAL, REMOTE, local("0"))
    failWith(connector.calls[0])
    for i in range(3):
        pool.send(LOCAL, REMOTE, local(str(i)))
    gw.clock.advance(gw.config.s2s.max_retry_delay)
    assert len(connector.calls) == 2


def test_stanza_after_backoff_has_passed_connects_immediately():
    gw, pool, connector = makePool()
    pool.send(LOCAL, REMOTE, local("0"))
    failWith(connector.calls[0])
    gw.clock.advance(pool.links[(LOCAL, REMOTE)].delay)
    assert len(connector.calls) == 1   # nothing queued: no retry by itself
    pool.send(LOCAL, REMOTE, local("1"))
    assert len(connector.calls) == 2


def test_retry_delay_doubles_and_is_capped_by_max_retry_delay():
    gw, pool, connector = makePool(max_retry_delay=5)
    link = None
    delays = []
    for i in range(6):
        pool.send(LOCAL, REMOTE, local(str(i)))
        link = pool.links[(LOCAL, REMOTE)]
        if link.attempt is None:
            gw.clock.advance(link.retryAt - gw.clock.seconds())
        failWith(connector.calls[-1])
        delays.append(link.delay)
        assert link.retryAt == gw.clock.seconds() + link.delay
    assert delays == [1, 2, 4, 5, 5, 5]
    assert len(connector.calls) == 6
    assert link.failures == 6


def test_success_resets_the_backoff():
    gw, pool, connector = makePool()
    pool.send(LOCAL, REMOTE, local("0"))
    failWith(connector.calls[0])
    link = pool.links[(LOCAL, REMOTE)]
    pool.send(LOCAL, REMOTE, local("1"))
    gw.clock.advance(link.delay)
    succeed(connector.calls[1])
    assert (link.delay, link.retryAt, link.failures, link.lastFailure) == (0, 0, 0, None)


def test_closed_stream_reconnects_when_stanzas_are_queued():
    gw, pool, connector = makePool()
    pool.send(LOCAL, REMOTE, local("0"))
    stream, out = succeed(connector.calls[0])
    stream.connectionLost(Failure(Exception("gone")))
    link = pool.links[(LOCAL, REMOTE)]
    assert link.stream is None
    assert len(connector.calls) == 1
    pool.send(LOCAL, REMOTE, local("1"))
    assert len(connector.calls) == 2


def test_close_all_cancels_attempts_and_closes_streams():
    gw, pool, connector = makePool()
    pool.send(LOCAL, REMOTE, local("0"))
    pool.send(LOCAL, "other.test", local("1"))
    stream, out = succeed(connector.calls[0])
    pool.closeAll()
    assert out.update().ended
    assert connector.calls[1].d.called


@implementer(IConnector)
class FailingConnector:
    def connect(self, domain, factory, directTLS=None):
        return defer.fail(ConnectFailed("remote-server-not-found", "nope", []))


def test_idle_links_are_forgotten_once_the_table_is_full():
    gw, pool, _ = makePool(connector=FailingConnector())
    pool.maxLinks = 5
    for i in range(20):
        pool.send("home.test", f"r{i}.test", local(str(i)))
        gw.clock.advance(10)
    assert len(pool.links) <= 5
