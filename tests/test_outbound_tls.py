"""OutboundStream security: STARTTLS, downgrade refusal, certificate policy, SASL EXTERNAL."""

from zope.interface import implementer

from s2sgate.auth.dialback import NS_DB
from s2sgate.auth.requirements import NS_SASL, NS_TLS
from s2sgate.features.dialback import DialbackVerify
from s2sgate.interfaces import IConnector
from s2sgate.net.connector import ConnectFailed, Connection
from s2sgate.net.resolver import Target
from s2sgate.s2s.negotiation import InitiatingStream
from s2sgate.s2s.outbound import OutboundPool
from s2sgate.xmpp.parser import NS_STREAMS
from tests.s2sfakes import LOCAL, REMOTE, Output
from tests.test_inbound_tls import (
    DirectTLSTransport,
    TLSTransport,
    fresh,
    selfSigned,
    tlsGateway,
    valid,
)


def peerHeader(streamId="peer-1"):
    return (f"<stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
            f"xmlns:db='{NS_DB}' from='{REMOTE}' to='{LOCAL}' id='{streamId}' "
            f"version='1.0'>").encode()


DIALBACK = "<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>"
STARTTLS = f"<starttls xmlns='{NS_TLS}'><required/></starttls>"
EXTERNAL = f"<mechanisms xmlns='{NS_SASL}'><mechanism>EXTERNAL</mechanism></mechanisms>"
PROCEED = f"<proceed xmlns='{NS_TLS}'/>".encode()
SUCCESS = f"<success xmlns='{NS_SASL}'/>".encode()
SASL_FAILURE = f"<failure xmlns='{NS_SASL}'><not-authorized/><text>no</text></failure>".encode()


def features(*parts):
    return ("<stream:features>" + "".join(parts) + "</stream:features>").encode()


def newStream(mode="required", verify=None, transport=None, **kw):
    gw = tlsGateway(mode=mode, **kw)
    pool = OutboundPool(gw.clock, gw.current, None, gw.sessions, gw.router.bounce,
                        gw.router.fromRemote)
    if verify:
        runtime = gw.runtime
        steps = [s(runtime) for s in runtime.verifySteps] + [DialbackVerify(*verify)]
        stream = InitiatingStream(gw.clock, LOCAL, REMOTE, steps,
                                  requirements=runtime.requirements, tls=runtime.tls,
                                  limits=runtime.limits)
    else:
        stream = pool.newStream(LOCAL, REMOTE, gw.runtime)
    transport = transport or TLSTransport()
    stream.makeConnection(transport)
    out = Output(transport)
    results = []
    stream.ready.addBoth(results.append)
    return gw, pool, stream, out, results


def afterProceed(**kw):
    """STARTTLS accepted; returns the Output of the restarted stream (before the handshake)."""
    gw, pool, stream, out, results = newStream(**kw)
    stream.dataReceived(peerHeader() + features(STARTTLS, DIALBACK))
    out = fresh(out.transport)
    stream.dataReceived(PROCEED)
    return gw, pool, stream, out, results


def secured(offered=(EXTERNAL, DIALBACK), **kw):
    """TLS done, the peer's post-TLS header and features received."""
    gw, pool, stream, out, results = afterProceed(**kw)
    stream.handshakeCompleted()
    stream.dataReceived(peerHeader("peer-2") + features(*offered))
    return gw, pool, stream, out, results


def failure(results):
    [f] = results
    assert f.check(ConnectFailed)
    return f.value


# STARTTLS


def test_sends_starttls_when_offered_and_tls_enabled():
    gw, pool, stream, out, results = newStream(mode="optional")
    stream.dataReceived(peerHeader() + features(f"<starttls xmlns='{NS_TLS}'/>", DIALBACK))
    assert len(out.named("starttls", NS_TLS)) == 1
    assert out.named("result", NS_DB) == []


def test_does_not_send_starttls_under_false():
    gw, pool, stream, out, results = newStream(mode="false")
    stream.dataReceived(peerHeader() + features(f"<starttls xmlns='{NS_TLS}'/>", DIALBACK))
    assert out.named("starttls", NS_TLS) == []
    assert len(out.named("result", NS_DB)) == 1


def test_peer_requiring_starttls_under_false_fails():
    gw, pool, stream, out, results = newStream(mode="false")
    stream.dataReceived(peerHeader() + features(STARTTLS, DIALBACK))
    e = failure(results)
    assert (e.condition, "STARTTLS" in e.text) == ("remote-server-not-found", True)
    assert out.named("result", NS_DB) == []


def test_peer_without_starttls_under_required_fails_without_sending_plaintext():
    gw, pool, stream, out, results = newStream(mode="required")
    before = out.transport.value()
    stream.dataReceived(peerHeader() + features(DIALBACK))
    e = failure(results)
    assert e.condition == "remote-server-not-found"
    assert "STARTTLS" in e.text
    assert out.named("result", NS_DB) == []
    assert b"db:result" not in out.transport.value()
    assert out.transport.value()[len(before):] == b"</stream:stream>"
    assert (e.attempts[-1].step, e.attempts[-1].ok) == ("tls", False)


def test_peer_without_starttls_to_a_secure_domain_under_optional_fails():
    gw, pool, stream, out, results = newStream(mode="optional", secure_domains=[REMOTE])
    stream.dataReceived(peerHeader() + features(DIALBACK))
    assert "STARTTLS" in failure(results).text
    assert out.named("result", NS_DB) == []


def test_peer_without_starttls_under_optional_gets_dialback_in_plaintext():
    gw, pool, stream, out, results = newStream(mode="optional")
    stream.dataReceived(peerHeader() + features(DIALBACK))
    assert len(out.named("result", NS_DB)) == 1
    assert results == []


def test_pre_1_0_peer_under_required_fails_without_dialback():
    gw, pool, stream, out, results = newStream(mode="required")
    stream.dataReceived(peerHeader().replace(b" version='1.0'", b""))
    e = failure(results)
    assert (e.condition, "TLS is required" in e.text) == ("remote-server-not-found", True)
    assert out.named("result", NS_DB) == []


def test_proceed_starts_tls_with_the_client_creator_and_sends_a_new_header():
    gw, pool, stream, out, results = afterProceed()
    assert out.transport.tlsStarts == [("client", REMOTE, LOCAL)]
    assert stream.secure
    out.update()
    assert (out.header["from"], out.header["to"], out.header["version"]) == (LOCAL, REMOTE, "1.0")


def test_starttls_failure_fails_the_attempt():
    gw, pool, stream, out, results = newStream()
    stream.dataReceived(peerHeader() + features(STARTTLS, DIALBACK))
    stream.dataReceived(f"<failure xmlns='{NS_TLS}'/>".encode())
    e = failure(results)
    assert (e.condition, "refused STARTTLS" in e.text) == ("remote-server-not-found", True)
    assert out.transport.tlsStarts == []
    assert out.named("result", NS_DB) == []


# the certificate after the handshake


def test_untrusted_certificate_under_required_trusted_fails_naming_the_reason():
    gw, pool, stream, out, results = afterProceed(mode="required_trusted",
                                                  verdicts={REMOTE: selfSigned()})
    stream.handshakeCompleted()
    e = failure(results)
    assert e.condition == "remote-server-not-found"
    assert "self-signed certificate" in e.text
    assert REMOTE in e.text
    last = e.attempts[-1]
    assert (last.step, last.ok) == ("tls", False)
    assert "self-signed" in last.error
    assert out.update().ended


def test_untrusted_certificate_under_required_trusted_sends_no_dialback_key_afterwards():
    # The peer's header and features may arrive right after the handshake:
    # nothing that authenticates us may go to a server we just refused.
    gw, pool, stream, out, results = afterProceed(mode="required_trusted",
                                                  verdicts={REMOTE: selfSigned()})
    stream.handshakeCompleted()
    stream.dataReceived(peerHeader("peer-2") + features(DIALBACK))
    assert out.transport.value().endswith(b"</stream:stream>")
    assert b"db:result" not in out.transport.value()


def test_untrusted_certificate_under_required_trusted_sends_no_sasl_auth_afterwards():
    gw, pool, stream, out, results = afterProceed(mode="required_trusted",
                                                  verdicts={REMOTE: selfSigned()})
    stream.handshakeCompleted()
    stream.dataReceived(peerHeader("peer-2") + features(EXTERNAL, DIALBACK))
    assert out.transport.value().endswith(b"</stream:stream>")
    assert b"<auth" not in out.transport.value()


def test_name_mismatch_under_secure_auth_fails():
    gw, pool, stream, out, results = afterProceed(mode="required", secure_auth=True)
    stream.handshakeCompleted()
    assert "not valid for remote.test" in failure(results).text


def test_untrusted_certificate_under_required_is_accepted_for_dialback():
    gw, pool, stream, out, results = secured(offered=(DIALBACK,), mode="required",
                                             verdicts={REMOTE: selfSigned()})
    assert results == []
    assert len(out.named("result", NS_DB)) == 1
    assert stream.trace[-1].step == "tls" and stream.trace[-1].ok


def test_untrusted_certificate_of_an_insecure_domain_under_required_trusted_is_accepted():
    gw, pool, stream, out, results = secured(offered=(DIALBACK,), mode="required_trusted",
                                             insecure_domains=[REMOTE],
                                             verdicts={REMOTE: selfSigned()})
    assert results == []
    assert len(out.named("result", NS_DB)) == 1


def test_valid_certificate_trace_records_the_tls_step():
    gw, pool, stream, out, results = afterProceed(mode="required_trusted",
                                                  verdicts={REMOTE: valid(REMOTE)})
    stream.handshakeCompleted()
    assert results == []
    assert [a.step for a in stream.trace] == ["connect", "tls"]
    assert stream.trace[-1].ok
    assert "TLSv1.3" in stream.trace[-1].error
    assert stream.certificate.status == "valid"


def test_refused_certificate_is_one_failed_tls_step_in_the_trace():
    # s2sgate failures shows the steps: the handshake must not read as a
    # TLS step that went well followed by one that failed.
    gw, pool, stream, out, results = afterProceed(mode="required_trusted",
                                                  verdicts={REMOTE: selfSigned()})
    stream.handshakeCompleted()
    assert [(a.step, a.ok) for a in failure(results).attempts] == [("connect", True),
                                                                    ("tls", False)]


def test_accepted_certificate_trace_names_its_status_and_reason():
    gw, pool, stream, out, results = secured(offered=(DIALBACK,), mode="required",
                                             verdicts={REMOTE: selfSigned()})
    assert stream.trace[-1].error == ("TLSv1.3 TLS_AES_256_GCM_SHA384; "
                                      "certificate self-signed: self-signed certificate")


# direct TLS (XEP-0368): TLS from the first byte, no STARTTLS


def directStream(**kw):
    return newStream(transport=DirectTLSTransport(), **kw)


def test_direct_tls_judges_the_certificate_as_soon_as_the_handshake_completes():
    gw, pool, stream, out, results = directStream(mode="required_trusted",
                                                  verdicts={REMOTE: selfSigned()})
    stream.handshakeCompleted()
    e = failure(results)
    assert (e.condition, "self-signed" in e.text) == ("remote-server-not-found", True)
    assert (e.attempts[-1].step, e.attempts[-1].ok) == ("tls", False)


def test_direct_tls_with_a_valid_certificate_goes_on_to_sasl_external():
    gw, pool, stream, out, results = directStream(verdicts={REMOTE: valid(REMOTE)})
    stream.handshakeCompleted()
    stream.dataReceived(peerHeader() + features(EXTERNAL, DIALBACK))
    assert results == []
    assert out.transport.tlsStarts == []
    assert len(out.named("auth", NS_SASL)) == 1
    assert [(a.step, a.ok) for a in stream.trace] == [("connect", True), ("tls", True)]


# SASL EXTERNAL


def test_sends_external_when_offered_and_our_certificate_covers_local():
    gw, pool, stream, out, results = secured(verdicts={REMOTE: valid(REMOTE)})
    [auth] = out.named("auth", NS_SASL)
    assert auth["mechanism"] == "EXTERNAL"
    assert str(auth) == "="
    assert out.named("result", NS_DB) == []


def test_external_success_restarts_and_is_ready_after_the_features():
    gw, pool, stream, out, results = secured(verdicts={REMOTE: valid(REMOTE)})
    out = fresh(out.transport)
    stream.dataReceived(SUCCESS)
    out.update()
    assert out.header is not None and out.header["to"] == REMOTE
    assert results == []
    stream.dataReceived(peerHeader("peer-3") + features(DIALBACK))
    assert results == [stream]
    assert stream.authMethod == "sasl-external"
    assert out.named("result", NS_DB) == []
    assert (stream.trace[-1].step, stream.trace[-1].ok) == ("auth", True)


def test_external_failure_falls_back_to_dialback():
    gw, pool, stream, out, results = secured(verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(SASL_FAILURE)
    [result] = out.named("result", NS_DB)
    assert str(result) == gw.keys.generate(REMOTE, LOCAL, "peer-2")
    assert results == []
    stream.dataReceived(f"<db:result from='{REMOTE}' to='{LOCAL}' type='valid'/>".encode())
    assert results == [stream]
    assert stream.authMethod == "dialback"


def test_external_not_sent_when_our_certificate_does_not_cover_local():
    gw, pool, stream, out, results = secured(verdicts={REMOTE: valid(REMOTE)}, covers=())
    assert out.named("auth", NS_SASL) == []
    assert len(out.named("result", NS_DB)) == 1


def test_external_not_sent_when_not_offered():
    gw, pool, stream, out, results = secured(offered=(DIALBACK,), verdicts={REMOTE: valid(REMOTE)})
    assert out.named("auth", NS_SASL) == []
    assert len(out.named("result", NS_DB)) == 1


def test_external_not_sent_without_tls():
    gw, pool, stream, out, results = newStream(mode="optional")
    stream.dataReceived(peerHeader() + features(EXTERNAL, DIALBACK))
    assert out.named("auth", NS_SASL) == []
    assert len(out.named("result", NS_DB)) == 1


def test_external_not_used_for_a_verify_stream():
    gw, pool, stream, out, results = secured(verify=("in-1", "key"),
                                             verdicts={REMOTE: valid(REMOTE)})
    assert out.named("auth", NS_SASL) == []
    [verify] = out.named("verify", NS_DB)
    assert (verify["id"], str(verify)) == ("in-1", "key")


def test_security_summary_after_external():
    gw, pool, stream, out, results = secured(verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(SUCCESS)
    stream.dataReceived(peerHeader("peer-3") + features(DIALBACK))
    assert stream.securitySummary() == "STARTTLS TLSv1.3 TLS_AES_256_GCM_SHA384 certificate valid"


def _fallbackPool(directTLSFails):
    """A pool whose connector 'connects' in memory: direct TLS targets fail after connecting."""
    from twisted.internet.testing import StringTransport

    gw = tlsGateway(mode="required")
    calls = []

    @implementer(IConnector)
    class MemoryConnector:
        async def connect(self, domain, factory, directTLS=None):
            stream = factory.buildProtocol(None)
            stream.makeConnection(StringTransport())
            calls.append("direct" if directTLS is not None else "starttls")
            target = Target(domain, 5270 if directTLS else 5269, directTLS is not None)
            if directTLS is not None:
                stream.directTLS = True
                if directTLSFails:
                    stream.fail("remote-server-not-found",
                                "certificate for remote.test has expired")
                    return Connection(stream, target, None)
            stream.established("dialback")
            return Connection(stream, target, None)

    pool = OutboundPool(gw.clock, gw.current, MemoryConnector(), gw.sessions, gw.router.bounce,
                        gw.router.fromRemote)
    return pool, calls


def test_a_failed_direct_tls_target_falls_back_to_the_starttls_targets():
    from twisted.internet import defer

    pool, calls = _fallbackPool(directTLSFails=True)
    results = []
    defer.ensureDeferred(pool.open(LOCAL, REMOTE)).addBoth(results.append)
    assert calls == ["direct", "starttls"]
    assert results[0].authMethod == "dialback" and not results[0].directTLS


def test_a_working_direct_tls_target_is_used_without_a_second_connection():
    from twisted.internet import defer

    pool, calls = _fallbackPool(directTLSFails=False)
    results = []
    defer.ensureDeferred(pool.open(LOCAL, REMOTE)).addBoth(results.append)
    assert calls == ["direct"]
    assert results[0].directTLS
