"""The initiating side's engine: steps in order, outcomes, restarts, bounds (no sockets)."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.auth.certs import PeerCertificate
from s2sgate.auth.requirements import Requirements
from s2sgate.interfaces import INegotiationObserver, IStep
from s2sgate.net.connector import ConnectFailed
from s2sgate.ops.metrics import Metrics
from s2sgate.s2s.negotiation import (
    MAX_WAITING_ELEMENTS,
    Authenticated,
    Failed,
    InitiatingStream,
    Restart,
    Skip,
    StreamLimits,
)
from s2sgate.xmpp.namespaces import NS_STREAMS
from s2sgate.xmpp.stream import WriteBatch
from tests.s2sfakes import LOCAL, REMOTE, Output, makeConfig
from tests.test_inbound_tls import DirectTLSTransport, FakeTLS, TLSTransport

HEADER = (f"<stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
          f"from='{REMOTE}' to='{LOCAL}' id='s1' version='1.0'>").encode()
FEATURES = b"<stream:features><x xmlns='urn:example'/></stream:features>"


@implementer(IStep)
class Scripted:
    """A step that records each run and ends with a fixed outcome."""

    def __init__(self, name, outcome, applies=True, restart=False, waitFor=None,
                 handshake=False, before=None):
        self.name = name
        self.outcome = outcome
        self._applies = applies
        self.restart = restart
        self.waitFor = waitFor
        self.handshake = handshake
        self.before = before
        self.runs = []

    def applies(self, stream, features):
        return features is not None and self._applies

    async def run(self, stream, features):
        self.runs.append(features)
        if self.before is not None:
            self.before(stream)
        if self.handshake:
            await stream.handshake()
        if self.waitFor is not None:
            await stream.expect(lambda e: e.name == self.waitFor)
        if self.restart:
            stream.restart()
        return self.outcome


@implementer(INegotiationObserver)
class Recorder:
    """What an observer (C{s2sgate check}) hears of the stream, in order."""

    def __init__(self):
        self.events = []

    def headerReceived(self, header):
        self.events.append(("header", header.getAttribute("id")))

    def featuresReceived(self, features):
        self.events.append(("features", type(features).__name__))

    def tlsStarted(self, direct):
        self.events.append(("tlsStarted", direct))

    def tlsEstablished(self, connection):
        self.events.append(("tlsEstablished", connection))

    def streamErrorReceived(self, condition, text):
        self.events.append(("errorReceived", condition, text))

    def streamErrorSent(self, condition, text):
        self.events.append(("errorSent", condition, text))

    def streamEnded(self):
        self.events.append(("ended",))

    def connectionLost(self, reason):
        self.events.append(("lost", reason.type))


class RecordingTLS(FakeTLS):
    """FakeTLS that also records the connection each description was asked of."""

    def __init__(self, verdicts):
        super().__init__(verdicts)
        self.described = []

    def describe(self, conn):
        self.described.append(conn)
        return super().describe(conn)


@implementer(IStep)
class AfterAuth:
    """An after-authentication step that records what it is given."""

    name = "after"

    def __init__(self, outcome):
        self.outcome = outcome
        self.seen = []

    def applies(self, stream, features):
        self.seen.append(("applies", stream, features))
        return True

    async def run(self, stream, features):
        self.seen.append(("run", stream, features))
        return self.outcome


def negotiate(*steps, observer=None, tls=None, afterAuth=(), transport=None,
              limits=StreamLimits(negotiationTimeout=30), **kwargs):
    clock = task.Clock()
    stream = InitiatingStream(clock, LOCAL, REMOTE, steps,
                              requirements=Requirements(makeConfig().s2s),
                              limits=limits, observer=observer,
                              tls=tls, afterAuth=afterAuth, **kwargs)
    transport = transport or TLSTransport()
    stream.makeConnection(transport)
    out = Output(transport)
    results = []
    stream.ready.addBoth(results.append)
    return clock, stream, out, results


def lose(stream):
    stream.connectionLost(Failure(ConnectionDone("closed")))


def test_steps_run_in_order_and_skip_hands_the_same_features_on():
    first = Scripted("a", Skip())
    second = Scripted("b", Authenticated("made-up"))
    _, stream, _, results = negotiate(first, second)
    stream.dataReceived(HEADER + FEATURES)
    assert results == [stream] and stream.authMethod == "made-up"
    assert len(first.runs) == 1 and first.runs[0] is second.runs[0]


def test_a_step_that_does_not_apply_is_not_run():
    unused = Scripted("a", Failed("remote-server-not-found", "must not run"), applies=False)
    _, stream, _, results = negotiate(unused, Scripted("b", Authenticated("m")))
    stream.dataReceived(HEADER + FEATURES)
    assert unused.runs == [] and results == [stream]


def test_restart_sends_a_new_header_and_the_next_features_start_a_new_round():
    tls = Scripted("tls", Restart(), restart=True)
    auth = Scripted("auth", Authenticated("m"))
    _, stream, out, results = negotiate(tls, auth)
    stream.dataReceived(HEADER + FEATURES)
    assert out.transport.value().count(b"<stream:stream") == 2
    assert auth.runs == [] and results == []
    tls._applies = False
    stream.dataReceived(HEADER.replace(b"s1", b"s2") + FEATURES)
    assert results == [stream] and stream.streamId == "s2"


def test_authenticated_after_restart_is_ready_on_the_next_features():
    sasl = Scripted("auth", Authenticated("sasl", afterRestart=True), restart=True)
    _, stream, _, results = negotiate(sasl)
    stream.dataReceived(HEADER + FEATURES)
    assert results == []
    stream.dataReceived(HEADER + FEATURES)
    assert results == [stream] and stream.authMethod == "sasl" and len(sasl.runs) == 1


def test_failed_fails_ready_with_condition_text_and_step_and_closes():
    later = Scripted("b", Authenticated("m"))
    _, stream, out, results = negotiate(Scripted("tls", Failed("remote-server-timeout", "slow")),
                                        later)
    stream.dataReceived(HEADER + FEATURES)
    [failure] = results
    assert failure.check(ConnectFailed)
    assert (failure.value.condition, failure.value.text) == ("remote-server-timeout", "slow")
    assert (failure.value.attempts[-1].step, failure.value.attempts[-1].ok) == ("tls", False)
    assert later.runs == [] and out.update().ended


def test_a_round_no_step_ends_fails_the_attempt():
    _, stream, _, results = negotiate(Scripted("a", Skip()))
    stream.dataReceived(HEADER + FEATURES)
    [failure] = results
    assert "no way to authenticate" in failure.value.text
    assert failure.value.condition == "remote-server-not-found"


def test_elements_sent_before_a_step_expects_them_are_kept():
    step = Scripted("a", Authenticated("m"), waitFor="early")
    _, stream, _, results = negotiate(step)
    stream.dataReceived(HEADER + b"<early xmlns='jabber:server'/>" + FEATURES)
    assert results == [stream]


def test_a_peer_flooding_the_negotiation_gets_policy_violation():
    _, stream, out, results = negotiate(Scripted("a", Authenticated("m"), waitFor="never"))
    stream.dataReceived(HEADER)
    stream.dataReceived(b"<junk xmlns='jabber:server'/>" * (MAX_WAITING_ELEMENTS + 1))
    assert out.streamError() == "policy-violation"
    assert results[0].check(ConnectFailed)
    assert results[0].value.condition == "remote-server-not-found"


def test_pre_1_0_peer_runs_the_steps_on_no_features():
    step = Scripted("a", Authenticated("m"))
    _, stream, _, results = negotiate(step)
    stream.dataReceived(HEADER.replace(b" version='1.0'", b""))
    assert results == [stream] and step.runs[0].legacy


@settings(deadline=None)
@given(st.lists(st.sampled_from(["skip", "absent"]), max_size=6), st.booleans())
def test_the_first_step_that_ends_the_round_decides(before, restartFirst):
    steps = [Scripted(f"s{i}", Skip(), applies=kind == "skip") for i, kind in enumerate(before)]
    final = Scripted("final", Authenticated("m"))
    _, stream, _, results = negotiate(*steps, final)
    stream.dataReceived(HEADER + FEATURES)
    assert results == [stream]
    assert [len(s.runs) for s in steps] == [1 if k == "skip" else 0 for k in before]
    assert len(final.runs) == 1


def test_negotiation_timeout_is_remote_server_timeout():
    clock, stream, out, results = negotiate(Scripted("a", Authenticated("m")))
    clock.advance(30)
    assert results[0].value.condition == "remote-server-timeout"
    assert out.streamError() == "connection-timeout"


def test_element_class_is_domish():
    # Steps build plain domish elements; the stream serialises them in its scope.
    _, stream, out, _ = negotiate(Scripted("a", Authenticated("m")))
    stream.send(domish.Element(("jabber:server", "presence")))
    assert b"<presence/>" in out.transport.value()


def test_failed_names_its_own_diagnostic_step():
    _, stream, _, results = negotiate(
        Scripted("tls", Failed("remote-server-not-found", "bad", step="certificate")))
    stream.dataReceived(HEADER + FEATURES)
    assert results[0].value.attempts[-1].step == "certificate"


def test_a_failure_the_step_recorded_itself_is_not_recorded_twice():
    step = Scripted("tls", Failed("remote-server-not-found", "bad"),
                    before=lambda s: s.record("certificate", "untrusted", ok=False))
    _, stream, _, results = negotiate(step)
    stream.dataReceived(HEADER + FEATURES)
    failed = [(a.step, a.error) for a in results[0].value.attempts if not a.ok]
    assert failed == [("certificate", "untrusted")]


def test_the_stream_closed_after_the_negotiation_timeout_ends_cleanly():
    observer = Recorder()
    clock, stream, _, results = negotiate(Scripted("a", Authenticated("m")), observer=observer)
    clock.advance(30)
    lose(stream)
    assert observer.events[-1] == ("lost", ConnectionDone)
    assert results[0].value.condition == "remote-server-timeout"


def test_the_tls_contexts_judge_the_connection_s_own_handle():
    verdict = PeerCertificate("valid", "certificate is valid for remote.test")
    tls = RecordingTLS({REMOTE: verdict})
    _, stream, out, _ = negotiate(Scripted("a", Authenticated("m")), tls=tls)
    stream.handshakeCompleted()
    handle = out.transport.handle
    assert tls.verdictCalls == [(handle, REMOTE)] and tls.described == [handle]
    assert stream.certificate is verdict and stream.tlsInfo["version"] == "TLSv1.3"


def test_the_observer_hears_tls_start_and_the_established_connection():
    observer = Recorder()
    _, stream, out, _ = negotiate(Scripted("a", Authenticated("m")), observer=observer,
                                  tls=FakeTLS())
    stream.startTLS(("client", REMOTE, LOCAL))
    stream.handshakeCompleted()
    assert observer.events == [("tlsStarted", False), ("tlsEstablished", out.transport.handle)]


def test_a_step_asking_for_the_handshake_after_it_completed_goes_on_at_once():
    _, stream, _, results = negotiate(Scripted("tls", Authenticated("m"), handshake=True),
                                      tls=FakeTLS())
    stream.handshakeCompleted()
    stream.dataReceived(HEADER + FEATURES)
    assert results == [stream]


def test_a_connection_lost_during_negotiation_fails_with_remote_server_not_found():
    _, stream, _, results = negotiate(Scripted("a", Authenticated("m")))
    stream.dataReceived(HEADER)
    lose(stream)
    assert results[0].value.condition == "remote-server-not-found"
    assert results[0].value.text == "remote.test closed the connection during negotiation"


def test_a_connection_lost_while_steps_wait_for_the_peer_ends_them_quietly():
    waiting = Scripted("a", Authenticated("m"), waitFor="never")
    shaking = Scripted("tls", Authenticated("m"), handshake=True)
    for step in (waiting, shaking):
        _, stream, _, results = negotiate(step, tls=FakeTLS())
        stream.dataReceived(HEADER + FEATURES)
        lose(stream)
        assert results[0].value.condition == "remote-server-not-found"


def test_the_observer_hears_the_connection_lost_with_its_reason():
    observer = Recorder()
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m")), observer=observer)
    lose(stream)
    assert observer.events == [("lost", ConnectionDone)]


STREAM_ERROR = (b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no thanks</text>"
                b"</stream:error>")


def test_a_stream_error_from_the_peer_fails_the_attempt_naming_it():
    _, stream, _, results = negotiate(Scripted("a", Authenticated("m"), waitFor="never"))
    stream.dataReceived(HEADER + FEATURES + STREAM_ERROR)
    assert results[0].value.condition == "remote-server-not-found"
    assert results[0].value.text == "remote.test closed the stream: not-authorized (no thanks)"


def test_the_stream_keeps_the_peer_s_stream_error():
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m"), waitFor="never"))
    stream.dataReceived(HEADER + FEATURES + STREAM_ERROR)
    assert stream.peerError == ("not-authorized", "no thanks")


def test_the_observer_hears_stream_errors_received_and_sent():
    observer = Recorder()
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m"), waitFor="never"),
                                observer=observer)
    stream.dataReceived(HEADER + FEATURES + STREAM_ERROR)
    _, other, _, _ = negotiate(Scripted("a", Authenticated("m"), waitFor="never"),
                               observer=observer)
    other.streamError("policy-violation", "too much")
    assert [e for e in observer.events if e[0].startswith("error")] == [
        ("errorReceived", "not-authorized", "no thanks"),
        ("errorSent", "policy-violation", "too much")]


def test_the_peer_closing_its_stream_during_negotiation_ends_ours():
    observer = Recorder()
    _, stream, out, _ = negotiate(Scripted("a", Authenticated("m"), waitFor="never"),
                                  observer=observer)
    stream.dataReceived(HEADER + FEATURES + b"</stream:stream>")
    assert observer.events[-1] == ("ended",)
    assert out.update().ended and out.transport.disconnecting


def test_an_element_on_an_established_stream_without_acks_is_ignored():
    _, stream, out, results = negotiate(Scripted("a", Authenticated("m")))
    stream.dataReceived(HEADER + FEATURES + b"<r xmlns='urn:xmpp:sm:3'/>")
    assert results == [stream] and not stream.closing
    assert out.streamError() is None


def test_features_that_arrive_while_a_step_waits_for_an_element_start_the_next_round():
    tls = Scripted("tls", Restart(), waitFor="proceed")
    auth = Scripted("auth", Authenticated("m"))
    _, stream, _, results = negotiate(tls, auth)
    stream.dataReceived(HEADER + FEATURES)
    tls._applies = False
    stream.dataReceived(FEATURES + b"<proceed xmlns='jabber:server'/>")
    assert results == [stream] and len(auth.runs) == 1


def test_a_failure_between_steps_is_recorded_under_stream():
    tls = Scripted("tls", Restart(), restart=True)
    _, stream, _, results = negotiate(tls)
    stream.dataReceived(HEADER + FEATURES)
    lose(stream)
    assert results[0].value.attempts[-1].step == "stream"


def test_after_authentication_steps_see_this_stream_and_the_features_in_force():
    after = AfterAuth(Skip())
    _, stream, _, results = negotiate(Scripted("a", Authenticated("m")), afterAuth=[after])
    stream.dataReceived(HEADER + FEATURES)
    assert results == [stream]
    [(_, s1, f1), (_, s2, f2)] = after.seen
    assert s1 is s2 is stream and f1 is f2 and f1 is not None


def test_an_after_authentication_step_that_fails_leaves_the_stream_unauthenticated():
    after = AfterAuth(Failed("remote-server-not-found", "acks refused"))
    _, stream, _, results = negotiate(Scripted("a", Authenticated("m")), afterAuth=[after])
    stream.dataReceived(HEADER + FEATURES)
    assert results[0].value.text == "acks refused"
    assert stream.authMethod is None and stream.pairs == set()


def test_the_observer_hears_the_header_and_the_parsed_features():
    observer = Recorder()
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m")), observer=observer)
    stream.dataReceived(HEADER + FEATURES)
    assert observer.events == [("header", "s1"), ("features", "StreamFeatures")]


def test_security_summary_of_a_plaintext_stream_says_no_tls():
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m")))
    assert stream.securitySummary() == "no TLS"


def test_security_summary_names_starttls_version_cipher_and_certificate():
    tls = FakeTLS({REMOTE: PeerCertificate("valid", "fine")})
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m")), tls=tls)
    stream.startTLS(("client", REMOTE, LOCAL))
    stream.handshakeCompleted()
    assert stream.securitySummary() == ("STARTTLS TLSv1.3 TLS_AES_256_GCM_SHA384 "
                                        "certificate valid")


def test_security_summary_names_direct_tls_and_dane():
    class Described(FakeTLS):
        def describe(self, conn):
            return {}   # no version or cipher known

    tls = Described({REMOTE: PeerCertificate("valid", "fine", dane="dane-ee")})
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m")), tls=tls,
                                transport=DirectTLSTransport())
    stream.handshakeCompleted()
    assert stream.securitySummary() == "direct TLS certificate valid (DANE dane-ee)"


def test_an_element_over_the_stanza_size_limit_is_a_policy_violation():
    _, stream, out, results = negotiate(Scripted("a", Authenticated("m"), waitFor="never"),
                                        limits=StreamLimits(stanzaBytes=10000))
    stream.dataReceived(HEADER + FEATURES)
    stream.dataReceived(b"<big xmlns='jabber:server'>" + b"x" * 10000 + b"</big>")
    assert out.streamError() == "policy-violation"


def test_an_established_stream_idle_for_the_idle_timeout_is_closed():
    clock, stream, out, results = negotiate(
        Scripted("a", Authenticated("m")), limits=StreamLimits(idleTimeout=5))
    stream.dataReceived(HEADER + FEATURES)
    assert results == [stream]
    clock.advance(5)
    assert out.update().ended


def test_the_stream_counts_the_bytes_it_reads_in_the_gateway_s_metrics():
    metrics = Metrics()
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m")), metrics=metrics)
    stream.dataReceived(HEADER)
    assert metrics.registry.get_sample_value("s2sgate_bytes_total",
                                             {"direction": "in"}) == len(HEADER)


def test_the_stream_holds_its_writes_while_the_gateway_s_write_batch_is_open():
    batch = WriteBatch()
    _, stream, out, _ = negotiate(Scripted("a", Authenticated("m")), batch=batch)
    written = out.transport.value()
    batch.enter()
    stream.send(domish.Element(("jabber:server", "presence")))
    assert out.transport.value() == written
    batch.exit()
    assert out.transport.value() == written + b"<presence/>"


def test_a_header_without_an_id_is_invalid_xml_and_fails_the_attempt():
    _, stream, out, results = negotiate(Scripted("a", Authenticated("m")))
    stream.dataReceived(HEADER.replace(b" id='s1'", b""))
    assert out.streamError() == "invalid-xml"
    assert results[0].value.condition == "remote-server-not-found"


def test_the_stream_keeps_the_peer_s_header():
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m")))
    stream.dataReceived(HEADER)
    assert stream.peerHeader.getAttribute("from") == REMOTE


def test_security_summary_while_the_handshake_is_under_way():
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m")), tls=FakeTLS())
    stream.startTLS(("client", REMOTE, LOCAL))
    assert stream.securitySummary() == "STARTTLS"


def test_the_observer_hears_a_direct_tls_connection_as_tls_started_direct():
    observer = Recorder()
    negotiate(Scripted("a", Authenticated("m")), observer=observer,
              transport=DirectTLSTransport())
    assert observer.events == [("tlsStarted", True)]


def test_a_failure_before_any_step_ran_is_recorded_under_stream():
    _, stream, _, results = negotiate(Scripted("a", Authenticated("m")))
    lose(stream)
    assert results[0].value.attempts[-1].step == "stream"


def test_the_trace_names_the_peer_address_and_the_remote_domain():
    _, stream, _, results = negotiate(Scripted("a", Failed("remote-server-not-found", "no")))
    stream.dataReceived(HEADER + FEATURES)
    peer = stream.transport.getPeer()
    assert stream.peerAddress == f"{peer.host}:{peer.port}"
    attempts = results[0].value.attempts
    assert attempts[0].error == f"connected to {peer.host}:{peer.port}"
    assert {a.target for a in attempts} == {REMOTE}


def test_a_step_that_raises_fails_the_attempt_and_closes_the_stream():
    def broken(stream):
        raise RuntimeError("a bug in a step")

    _, stream, out, results = negotiate(Scripted("a", Authenticated("m"), before=broken))
    stream.dataReceived(HEADER + FEATURES)
    assert results[0].value.condition == "remote-server-not-found"
    assert results[0].value.text == "internal error negotiating with remote.test"
    assert out.update().ended


def test_a_step_that_waits_on_a_stream_we_are_closing_ends_quietly():
    """No internal error: the attempt fails once the connection goes."""
    step = Scripted("a", Authenticated("m"), waitFor="x", before=lambda s: s.closeStream())
    _, stream, _, results = negotiate(step)
    stream.dataReceived(HEADER + FEATURES)
    assert results == []
    lose(stream)
    assert results[0].value.text == "remote.test closed the connection during negotiation"


def test_the_observer_hears_the_empty_features_of_a_pre_1_0_peer():
    observer = Recorder()
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m")), observer=observer)
    stream.dataReceived(HEADER.replace(b" version='1.0'", b""))
    assert observer.events == [("header", "s1"), ("features", "StreamFeatures")]


DIALBACK_FEATURES = b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>"


def test_a_peer_that_offers_no_dialback_has_not_offered_it():
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m")))
    stream.dataReceived(HEADER + FEATURES)
    assert stream.dialbackOffered is False


def test_a_dialback_offer_is_remembered_after_a_restart_without_it():
    """Multiplexing may ask such a peer for another pair's <db:result/>."""
    tls = Scripted("tls", Restart(), restart=True)
    _, stream, _, results = negotiate(tls, Scripted("auth", Authenticated("m")))
    stream.dataReceived(HEADER + DIALBACK_FEATURES)
    tls._applies = False
    stream.dataReceived(HEADER.replace(b"s1", b"s2") + FEATURES)
    assert results == [stream] and stream.dialbackOffered is True


def test_a_pre_1_0_peer_counts_as_offering_dialback():
    _, stream, _, _ = negotiate(Scripted("a", Authenticated("m")))
    stream.dataReceived(HEADER.replace(b" version='1.0'", b""))
    assert stream.dialbackOffered is True
