"""InboundStream security: STARTTLS, SASL EXTERNAL, XEP-0344 and the policy, without sockets."""

import base64
import dataclasses

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from s2sgate.auth.certs import PeerCertificate
from s2sgate.auth.dialback import NS_DB, NS_DB_FEATURE
from s2sgate.auth.requirements import NS_SASL, NS_TLS
from s2sgate.config import HostPolicy
from s2sgate.xmpp.parser import NS_STREAMS
from tests.s2sfakes import (
    LOCAL,
    MUC,
    REMOTE,
    VALID,
    Output,
    inbound,
    makeConfig,
    makeGateway,
    stanza,
)

OTHER = "other.test"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


# fakes


def valid(domain):
    return PeerCertificate("valid", f"certificate is valid for {domain}")


def selfSigned():
    return PeerCertificate("self-signed", "self-signed certificate")


class FakeTLS:
    """The gateway's tls: certificates we hold, and the verdict on each peer domain."""

    def __init__(self, verdicts=None, ours=(LOCAL, MUC), covers=None):
        self.verdicts = dict(verdicts or {})
        self.ours = set(ours)
        self.covers = set(ours if covers is None else covers)
        self.verdictCalls = []   # (conn, domain)

    def hasCertificateFor(self, domain):
        return domain in self.ours

    def ourCertificateCovers(self, domain):
        return domain in self.covers

    def serverCreator(self, domain):
        return ("server", domain)

    def clientCreator(self, remote, local, alpn=False):
        return ("client", remote, local)

    def peerVerdict(self, conn, domain, dane=None):
        self.verdictCalls.append((conn, domain))
        return self.verdicts.get(domain) or PeerCertificate(
            "name-mismatch", f"certificate is not valid for {domain}: it names DNS:elsewhere.test")

    def describe(self, conn):
        return {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}


class TLSTransport(StringTransport):
    """A StringTransport that records startTLS and has a handle for the verdicts."""

    def __init__(self):
        StringTransport.__init__(self)
        self.tlsStarts = []
        self.handle = object()

    def startTLS(self, creator):
        self.tlsStarts.append(creator)

    def getHandle(self):
        return self.handle


@implementer(ISSLTransport)
class DirectTLSTransport(TLSTransport):
    """
    A connection that is TLS from its first byte (XEP-0368).  Like
    Twisted's TLS protocol on a TCP connection it is an L{ITCPTransport}
    too, so it has the TCP methods a stream calls.
    """

    noDelay = False

    def setTcpNoDelay(self, enabled):
        self.noDelay = enabled


def tlsGateway(mode="required", secure_auth=False, secure_domains=(), insecure_domains=(),
               denied=(), disabled=(), limits=None, **tls):
    base = makeConfig(limits=limits or {})
    s2s = dataclasses.replace(base.s2s, use_starttls=mode, secure_auth=secure_auth,
                              secure_domains=tuple(secure_domains),
                              insecure_domains=tuple(insecure_domains),
                              host_policy=tuple(HostPolicy(d, "deny") for d in denied),
                              disabled_domains=tuple(disabled))
    return makeGateway(dataclasses.replace(base, s2s=s2s), tls=FakeTLS(**tls))


def header(to=LOCAL, sender=REMOTE):
    attrs = "".join(f" {k}='{v}'" for k, v in (("from", sender), ("to", to)) if v)
    return (f"<stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
            f"xmlns:db='{NS_DB}' version='1.0'{attrs}>").encode()


STARTTLS = f"<starttls xmlns='{NS_TLS}'/>".encode()


def auth(content="="):
    return f"<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>{content}</auth>".encode()


def dbResult(sender=REMOTE, to=LOCAL, key="abc"):
    return f"<db:result from='{sender}' to='{to}'>{key}</db:result>".encode()


def fresh(transport):
    """An Output for what is written from now on (after a stream restart)."""
    out = Output(transport)
    out._seen = len(transport.value())
    return out


def opened(sender=REMOTE, to=LOCAL, **kw):
    gw = tlsGateway(**kw)
    stream = inbound(gw)
    transport = TLSTransport()
    stream.makeConnection(transport)
    out = Output(transport)
    stream.dataReceived(header(to=to, sender=sender))
    return gw, stream, out


def secured(sender=REMOTE, **kw):
    """STARTTLS done and the stream restarted: returns (gw, stream, out after the restart)."""
    gw, stream, out = opened(sender=sender, **kw)
    stream.dataReceived(STARTTLS)
    stream.handshakeCompleted()
    out = fresh(out.transport)
    stream.dataReceived(header(sender=sender))
    return gw, stream, out


def features(out):
    [f] = out.named("features", NS_STREAMS)
    return {(c.uri, c.name): c for c in f.elements()}


def mechanisms(out):
    """The mechanisms offered, as a peer reads them: each C{<mechanism/>} child."""
    m = features(out).get((NS_SASL, "mechanisms"))
    return [] if m is None else [str(c).strip() for c in m.elements(NS_SASL, "mechanism")]


def saslFailure(out):
    [failure] = out.named("failure", NS_SASL)
    names = [c.name for c in failure.elements()]
    return next(n for n in names if n != "text"), next(
        (str(c) for c in failure.elements() if c.name == "text"), None)


def dbResults(out):
    return out.named("result", NS_DB)


def dbErrorOf(result):
    [error] = [e for e in result.elements() if e.name == "error"]
    condition = next(c.name for c in error.elements() if c.uri == NS_STANZAS and c.name != "text")
    text = next((str(c) for c in error.elements() if c.name == "text"), None)
    return condition, text


# features before TLS


def test_starttls_offered_with_required_under_required():
    gw, stream, out = opened(mode="required")
    starttls = features(out)[(NS_TLS, "starttls")]
    assert [(c.uri, c.name) for c in starttls.elements()] == [(NS_TLS, "required")]


def test_starttls_offered_without_required_under_optional():
    gw, stream, out = opened(mode="optional")
    starttls = features(out)[(NS_TLS, "starttls")]
    assert list(starttls.elements()) == []


def test_starttls_required_under_optional_for_a_secure_domain():
    gw, stream, out = opened(mode="optional", secure_domains=[REMOTE])
    starttls = features(out)[(NS_TLS, "starttls")]
    assert [c.name for c in starttls.elements()] == ["required"]


def test_starttls_not_offered_under_false():
    gw, stream, out = opened(mode="false")
    assert (NS_TLS, "starttls") not in features(out)


def test_starttls_not_offered_without_a_certificate_for_the_streams_domain():
    gw, stream, out = opened(mode="optional", ours=(MUC,))
    assert (NS_TLS, "starttls") not in features(out)


def test_starttls_offered_for_the_domain_we_hold_a_certificate_for():
    gw, stream, out = opened(mode="optional", to=MUC, ours=(MUC,))
    assert (NS_TLS, "starttls") in features(out)


def test_no_authentication_offered_before_tls_under_required():
    gw, stream, out = opened(mode="required")
    offered = features(out)
    assert (NS_DB_FEATURE, "dialback") not in offered
    assert (NS_SASL, "mechanisms") not in offered


def test_dialback_offered_before_tls_under_optional_but_no_sasl():
    gw, stream, out = opened(mode="optional")
    offered = features(out)
    assert (NS_DB_FEATURE, "dialback") in offered
    assert (NS_SASL, "mechanisms") not in offered
    assert gw.tls.verdictCalls == []


# the STARTTLS exchange


def test_starttls_answers_proceed_and_starts_tls_with_the_creator_for_to():
    gw, stream, out = opened(mode="required", to=MUC)
    stream.dataReceived(STARTTLS)
    assert len(out.named("proceed", NS_TLS)) == 1
    assert out.transport.tlsStarts == [("server", MUC)]
    assert not stream.secure          # only once the handshake completes
    stream.handshakeCompleted()
    assert stream.secure


def test_plaintext_sent_after_starttls_in_the_same_packet_is_ignored():
    gw, stream, out = opened(mode="required")
    stream.dataReceived(STARTTLS + dbResult())
    assert len(out.named("proceed", NS_TLS)) == 1
    assert gw.verifier.requests == []
    assert out.streamError() is None


def test_starttls_when_not_offered_is_a_failure_and_closes():
    gw, stream, out = opened(mode="false")
    stream.dataReceived(STARTTLS)
    assert out.named("proceed", NS_TLS) == []
    assert len(out.named("failure", NS_TLS)) == 1
    assert out.transport.tlsStarts == []
    assert out.update().ended


def test_handshake_completed_records_the_tls_description():
    gw, stream, out = opened(mode="required")
    stream.dataReceived(STARTTLS)
    stream.handshakeCompleted()
    assert stream.tlsInfo["version"] == "TLSv1.3"


def test_handshake_completed_describes_the_connection_s_own_handle():
    # The real TLSContexts.describe reads version and cipher off the
    # pyOpenSSL connection it is given: it must be this stream's.
    gw, stream, out = opened(mode="required")
    described = []

    def describe(conn):
        described.append(conn)
        return {"version": "TLSv1.2"}

    gw.runtime.tls.describe = describe
    stream.dataReceived(STARTTLS)
    stream.handshakeCompleted()
    assert described == [out.transport.handle]
    assert stream.tlsInfo == {"version": "TLSv1.2"}


def test_restarted_stream_offers_no_starttls_and_offers_dialback():
    gw, stream, out = secured(mode="required")
    offered = features(out)
    assert (NS_TLS, "starttls") not in offered
    assert (NS_DB_FEATURE, "dialback") in offered


def test_second_starttls_after_tls_is_a_failure():
    gw, stream, out = secured(mode="required")
    stream.dataReceived(STARTTLS)
    assert len(out.named("failure", NS_TLS)) == 1
    assert len(out.transport.tlsStarts) == 1


def test_second_starttls_before_the_handshake_completed_is_a_failure():
    # The offer does not count on the transport holding data back until the
    # handshake is done: one <proceed/> per stream, whatever arrives.
    gw, stream, out = opened(mode="required")
    stream.dataReceived(STARTTLS)
    out = fresh(out.transport)
    stream.dataReceived(header() + STARTTLS)
    assert (NS_TLS, "starttls") not in features(out)
    assert (out.named("proceed", NS_TLS), len(out.named("failure", NS_TLS))) == ([], 1)
    assert len(out.transport.tlsStarts) == 1
    assert out.update().ended


# the policy before TLS


def test_dialback_before_tls_under_required_is_a_policy_violation():
    gw, stream, out = opened(mode="required")
    stream.dataReceived(dbResult())
    assert out.streamError() == "policy-violation"
    assert gw.verifier.requests == []
    assert stream.pairs == set()


def test_dialback_verify_before_tls_under_required_is_a_policy_violation():
    gw, stream, out = opened(mode="required")
    stream.dataReceived(f"<db:verify from='{REMOTE}' to='{LOCAL}' id='x'>k</db:verify>".encode())
    assert out.streamError() == "policy-violation"
    assert dbResults(out) == [] and out.named("verify", NS_DB) == []


def test_dialback_before_tls_from_a_secure_domain_under_optional_is_a_policy_violation():
    gw, stream, out = opened(mode="optional", secure_domains=[REMOTE])
    stream.dataReceived(dbResult())
    assert out.streamError() == "policy-violation"
    assert gw.verifier.requests == []


def test_a_stanza_before_tls_from_a_secure_domain_under_optional_is_a_policy_violation():
    # The header's domain must encrypt even though the gateway's default
    # does not: the refusal says so, not that the pair is unknown.
    gw, stream, out = opened(mode="optional", secure_domains=[REMOTE])
    stream.dataReceived(stanza().toXml().encode())
    assert out.streamError() == "policy-violation"
    assert gw.router.delivered == []

def test_a_pre_1_0_header_from_a_secure_domain_under_optional_is_a_policy_violation():
    # No features to offer STARTTLS in: the domain's requirement ends the stream.
    gw = tlsGateway(mode="optional", secure_domains=[REMOTE])
    stream = inbound(gw)
    transport = TLSTransport()
    stream.makeConnection(transport)
    out = Output(transport)
    stream.dataReceived(f"<stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
                        f"xmlns:db='{NS_DB}' from='{REMOTE}' to='{LOCAL}'>".encode())
    assert out.streamError() == "policy-violation"

def test_dialback_before_tls_with_an_unnormalized_secure_domain_is_still_refused():
    # The early check sees 'REMOTE.test'; the dialback check after
    # normalization must still demand a certificate.
    gw, stream, out = opened(mode="optional", secure_domains=[REMOTE])
    stream.dataReceived(dbResult(sender=REMOTE.upper()))
    assert gw.verifier.requests == []
    assert stream.pairs == set()
    [error] = dbResults(out)
    assert dbErrorOf(error)[0] == "not-authorized"


def test_dialback_before_tls_under_optional_is_verified():
    gw, stream, out = opened(mode="optional")
    stream.dataReceived(dbResult())
    assert len(gw.verifier.requests) == 1


def test_stanza_before_tls_under_required_is_refused_and_not_delivered():
    gw, stream, out = opened(mode="required")
    stream.dataReceived(stanza().toXml().encode())
    assert out.streamError() is not None
    assert out.update().ended
    assert gw.router.delivered == []


def test_sasl_before_tls_is_not_authorized():
    gw, stream, out = opened(mode="optional", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth())
    assert saslFailure(out) == ("not-authorized", "no TLS")
    assert stream.pairs == set()


def test_pre_1_0_header_under_required_without_tls_is_a_policy_violation():
    gw = tlsGateway(mode="required")
    stream = inbound(gw)
    transport = TLSTransport()
    stream.makeConnection(transport)
    out = Output(transport)
    stream.dataReceived(header().replace(b" version='1.0'", b""))
    assert out.streamError() == "policy-violation"


# SASL EXTERNAL


def test_features_after_tls_offer_external_for_a_valid_certificate():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    assert mechanisms(out) == ["EXTERNAL"]
    assert gw.tls.verdictCalls == [(out.transport.handle, REMOTE)]


def test_features_after_tls_offer_no_external_for_an_untrusted_certificate():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: selfSigned()})
    assert mechanisms(out) == []
    assert (NS_DB_FEATURE, "dialback") in features(out)


def test_features_after_tls_offer_no_external_for_a_name_mismatch():
    gw, stream, out = secured(mode="required")   # default verdict: name-mismatch
    assert mechanisms(out) == []


def test_features_after_tls_offer_no_external_without_a_from_in_the_header():
    gw, stream, out = secured(sender=None, mode="required", verdicts={REMOTE: valid(REMOTE)})
    assert mechanisms(out) == []
    assert gw.tls.verdictCalls == []


def test_external_with_empty_authzid_succeeds_and_authenticates_the_pair():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth("="))
    assert len(out.named("success", NS_SASL)) == 1
    assert stream.pairs == {(REMOTE, LOCAL)}
    assert stream.authMethod == "sasl-external"
    assert gw.verifier.requests == []


def test_external_success_restarts_the_stream_without_mechanisms():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth("="))
    out = fresh(out.transport)
    stream.dataReceived(header())
    assert mechanisms(out) == []
    assert out.header["id"] == stream.streamId


def test_stanza_after_external_is_delivered():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth("="))
    stream.dataReceived(header())
    stream.dataReceived(stanza().toXml().encode())
    assert len(gw.router.delivered) == 1


def test_external_with_an_authzid_the_certificate_covers_succeeds_for_that_domain():
    gw, stream, out = secured(mode="required", verdicts={OTHER: valid(OTHER)})
    stream.dataReceived(auth(base64.b64encode(OTHER.encode()).decode()))
    assert len(out.named("success", NS_SASL)) == 1
    assert stream.pairs == {(OTHER, LOCAL)}


def test_external_with_an_authzid_the_certificate_does_not_cover_is_not_authorized():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth(base64.b64encode(OTHER.encode()).decode()))
    condition, text = saslFailure(out)
    assert condition == "not-authorized"
    assert OTHER in text
    assert out.named("success", NS_SASL) == []
    assert stream.pairs == set()
    assert (out.transport.handle, OTHER) in gw.tls.verdictCalls


def test_external_with_invalid_base64_is_incorrect_encoding():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth("not*base64!"))
    assert saslFailure(out)[0] == "incorrect-encoding"
    assert stream.pairs == set()


def test_external_with_a_character_outside_base64_inside_the_authzid_is_incorrect_encoding():
    # Without validation the '*' would be dropped and the rest read as the domain.
    gw, stream, out = secured(mode="required", verdicts={OTHER: valid(OTHER)})
    encoded = base64.b64encode(OTHER.encode()).decode()
    stream.dataReceived(auth(encoded[:4] + "*" + encoded[4:]))
    assert saslFailure(out)[0] == "incorrect-encoding"
    assert stream.pairs == set()


def test_external_with_an_authzid_that_is_not_a_domain_is_incorrect_encoding():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth(base64.b64encode(b"bad domain!").decode()))
    assert saslFailure(out)[0] == "incorrect-encoding"
    assert stream.pairs == set()


def test_external_with_an_untrusted_certificate_is_not_authorized_with_the_reason():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: selfSigned()})
    stream.dataReceived(auth("="))
    assert saslFailure(out) == ("not-authorized", "self-signed certificate")
    assert stream.pairs == set()


def test_external_without_a_from_or_authzid_is_not_authorized():
    gw, stream, out = secured(sender=None, mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth("="))
    assert saslFailure(out)[0] == "not-authorized"
    assert stream.pairs == set()


def test_sasl_mechanism_other_than_external_is_invalid_mechanism():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>AGEAYg==</auth>".encode())
    assert saslFailure(out)[0] == "invalid-mechanism"
    assert stream.pairs == set()


def test_second_sasl_auth_after_success_is_a_policy_violation():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth("="))
    out = fresh(out.transport)
    stream.dataReceived(header())
    stream.dataReceived(auth("="))
    assert out.streamError() == "policy-violation"


def test_external_for_a_blocked_domain_is_a_policy_violation():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)},
                              denied=[REMOTE])
    stream.dataReceived(auth("="))
    assert out.streamError() == "policy-violation"
    assert out.named("success", NS_SASL) == []
    assert stream.pairs == set()


def test_external_to_a_local_domain_with_federation_switched_off_is_a_policy_violation():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)},
                              disabled=[LOCAL])
    stream.dataReceived(auth("="))
    assert out.streamError() == "policy-violation"
    assert out.named("success", NS_SASL) == []
    assert stream.pairs == set()


# XEP-0344 and dialback after TLS


def test_db_result_for_a_domain_the_certificate_covers_is_valid_at_once():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(dbResult())
    [result] = dbResults(out)
    assert (result["type"], result["from"], result["to"]) == ("valid", LOCAL, REMOTE)
    assert gw.verifier.requests == []
    assert stream.pairs == {(REMOTE, LOCAL)}
    assert stream.authMethod == "dialback-without-dialback"


def test_a_further_pair_on_a_sasl_stream_is_valid_at_once_when_the_certificate_covers_it():
    # A peer multiplexing (XEP-0220) after SASL EXTERNAL: XEP-0344, no verify leg.
    gw, stream, out = secured(mode="required",
                              verdicts={REMOTE: valid(REMOTE), OTHER: valid(OTHER)})
    stream.dataReceived(auth("="))
    out = fresh(out.transport)
    stream.dataReceived(header())
    stream.dataReceived(dbResult(sender=OTHER, to=MUC))
    [result] = dbResults(out)
    assert (result["type"], result["from"], result["to"]) == ("valid", MUC, OTHER)
    assert gw.verifier.requests == []
    assert stream.pairs == {(REMOTE, LOCAL), (OTHER, MUC)}
    assert out.streamError() is None


def test_db_result_for_another_domain_the_certificate_covers_is_valid_at_once():
    gw, stream, out = secured(mode="required", verdicts={OTHER: valid(OTHER)})
    stream.dataReceived(dbResult(sender=OTHER))
    [result] = dbResults(out)
    assert result["type"] == "valid"
    assert stream.pairs == {(OTHER, LOCAL)}
    assert gw.verifier.requests == []


def test_db_result_with_a_name_mismatch_falls_back_to_dialback_without_secure_auth():
    gw, stream, out = secured(mode="required")
    stream.dataReceived(dbResult())
    assert dbResults(out) == []
    [(local, remote, streamId, key, d)] = gw.verifier.requests
    assert (local, remote, streamId, key) == (LOCAL, REMOTE, stream.streamId, "abc")
    d.callback(VALID)
    assert stream.authMethod == "dialback"


def test_db_result_with_an_untrusted_certificate_under_secure_auth_is_not_authorized():
    gw, stream, out = secured(mode="required", secure_auth=True,
                              verdicts={REMOTE: selfSigned()})
    stream.dataReceived(dbResult())
    [result] = dbResults(out)
    assert (result["type"], result["from"], result["to"]) == ("error", LOCAL, REMOTE)
    condition, text = dbErrorOf(result)
    assert condition == "not-authorized"
    assert "self-signed certificate" in text and REMOTE in text
    assert gw.verifier.requests == []
    assert stream.pairs == set()
    assert not out.update().ended   # the stream stays open for other domains


def test_db_result_with_a_name_mismatch_under_required_trusted_is_not_authorized():
    gw, stream, out = secured(mode="required_trusted")
    stream.dataReceived(dbResult())
    [result] = dbResults(out)
    condition, text = dbErrorOf(result)
    assert condition == "not-authorized"
    assert "not valid for remote.test" in text
    assert gw.verifier.requests == []


def test_db_result_for_a_secure_domain_with_an_untrusted_certificate_is_not_authorized():
    gw, stream, out = secured(mode="optional", secure_domains=[REMOTE],
                              verdicts={REMOTE: selfSigned()})
    stream.dataReceived(dbResult())
    [result] = dbResults(out)
    assert dbErrorOf(result)[0] == "not-authorized"
    assert gw.verifier.requests == []


def test_insecure_domain_may_use_dialback_with_an_untrusted_certificate_under_secure_auth():
    gw, stream, out = secured(mode="required", secure_auth=True, insecure_domains=[REMOTE],
                              verdicts={REMOTE: selfSigned()})
    stream.dataReceived(dbResult())
    assert dbResults(out) == []
    [request] = gw.verifier.requests
    request[-1].callback(VALID)
    assert stream.pairs == {(REMOTE, LOCAL)}
    assert stream.authMethod == "dialback"


def test_insecure_domain_may_use_dialback_without_tls_under_optional_secure_auth():
    gw, stream, out = opened(mode="optional", secure_auth=True, insecure_domains=[REMOTE])
    assert (NS_DB_FEATURE, "dialback") in features(out)
    stream.dataReceived(dbResult())
    assert len(gw.verifier.requests) == 1


def test_other_domain_without_tls_under_optional_secure_auth_is_a_policy_violation():
    gw, stream, out = opened(mode="optional", secure_auth=True, insecure_domains=[OTHER])
    stream.dataReceived(dbResult())
    assert out.streamError() == "policy-violation"
    assert gw.verifier.requests == []


def test_certificate_verdict_is_asked_once_per_domain():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth("="))
    stream.dataReceived(header())
    stream.dataReceived(dbResult(sender=REMOTE, to=MUC))
    assert gw.tls.verdictCalls == [(out.transport.handle, REMOTE)]
    assert stream.pairs == {(REMOTE, LOCAL), (REMOTE, MUC)}


# refused claims (issue 10, item 3)


def claimingPeer(**limits):
    """Authenticated once (SASL EXTERNAL for REMOTE) under secure_auth; more claims follow."""
    gw, stream, out = secured(mode="required", secure_auth=True,
                              verdicts={REMOTE: valid(REMOTE)}, limits=limits)
    stream.dataReceived(auth("="))
    out = fresh(out.transport)
    stream.dataReceived(header())
    assert stream.pairs == {(REMOTE, LOCAL)}
    return gw, stream, out


def test_refused_claims_under_secure_auth_end_the_stream_after_refused_claims():
    gw, stream, out = claimingPeer()
    for i in range(10):
        stream.dataReceived(dbResult(sender=f"victim{i}.test"))
    assert [dbErrorOf(r)[0] for r in dbResults(out)] == ["not-authorized"] * 3
    assert out.streamError() == "policy-violation"
    checked = [d for _, d in gw.tls.verdictCalls if d.startswith("victim")]
    assert checked == ["victim0.test", "victim1.test", "victim2.test"]


def test_the_number_of_refused_claims_is_a_config_key():
    gw, stream, out = claimingPeer(refused_claims=5)
    for i in range(5):
        stream.dataReceived(dbResult(sender=f"victim{i}.test"))
    assert len(dbResults(out)) == 5 and out.streamError() == "policy-violation"


def test_repeated_sasl_failures_are_refused_claims_too():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: selfSigned()})
    for i in range(5):
        stream.dataReceived(auth(base64.b64encode(f"victim{i}.test".encode()).decode()))
    assert len(out.named("failure", NS_SASL)) == 3
    assert out.streamError() == "policy-violation"


def test_a_stream_may_claim_at_most_claims_per_stream_domains():
    domains = [f"d{i}.test" for i in range(5)]
    gw, stream, out = secured(mode="required", verdicts={d: valid(d) for d in domains},
                              limits={"claims_per_stream": 3, "refused_claims": 10})
    for d in domains:
        stream.dataReceived(dbResult(sender=d))
    results = dbResults(out)
    assert [r["type"] for r in results] == ["valid"] * 3 + ["error"] * 2
    assert {dbErrorOf(r)[0] for r in results[3:]} == {"policy-violation"}
    assert stream.pairs == {(d, LOCAL) for d in domains[:3]}
    assert {d for _, d in gw.tls.verdictCalls} <= {REMOTE, *domains[:3]}


def test_external_for_a_domain_over_claims_per_stream_is_not_authorized():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE), OTHER: valid(OTHER)},
                              limits={"claims_per_stream": 1})
    stream.dataReceived(dbResult(sender=OTHER))
    stream.dataReceived(auth("="))
    assert saslFailure(out)[0] == "not-authorized"
    assert out.named("success", NS_SASL) == []
    assert stream.pairs == {(OTHER, LOCAL)}


def test_the_domain_sasl_authenticated_is_claimed_once_for_every_local_domain():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)},
                              limits={"claims_per_stream": 1})
    stream.dataReceived(auth("="))
    out = fresh(out.transport)
    stream.dataReceived(header())
    stream.dataReceived(dbResult(to=MUC))
    [result] = dbResults(out)
    assert result["type"] == "valid"
    assert stream.pairs == {(REMOTE, LOCAL), (REMOTE, MUC)}


def test_the_certificate_cache_of_a_stream_is_bounded_by_its_claims():
    gw, stream, out = secured(mode="required",
                              limits={"claims_per_stream": 4, "refused_claims": 1000})
    for i in range(50):
        stream.certificateFor(f"d{i}.test")
    assert len(stream.certificates) <= 4 + 1


def securedWithMetrics(**kw):
    """A stream from a listener with metrics, STARTTLS done: (gw, stream, metrics)."""
    from twisted.internet.address import IPv4Address

    from s2sgate.ops.metrics import Metrics
    from s2sgate.s2s.inbound import InboundFactory

    gw = tlsGateway(mode="required", **kw)
    metrics = Metrics()
    factory = InboundFactory(gw.clock, gw.current, gw.router, gw.verifier, gw.sessions,
                             metrics=metrics)
    stream = factory.buildProtocol(IPv4Address("TCP", "127.0.3.9", 40000))
    stream.makeConnection(TLSTransport())
    stream.dataReceived(header() + STARTTLS)
    stream.handshakeCompleted()
    stream.dataReceived(header())
    return gw, stream, metrics


def limitHits(metrics, limit):
    return metrics.registry.get_sample_value("s2sgate_peer_limit_hits_total", {"limit": limit})


def test_a_stream_ended_for_its_refused_claims_is_counted_under_refused_claims():
    gw, stream, metrics = securedWithMetrics(secure_auth=True)
    for i in range(3):
        stream.dataReceived(dbResult(sender=f"victim{i}.test"))
    assert limitHits(metrics, "refused_claims") == 1


def test_each_claim_over_claims_per_stream_is_counted_under_claims_per_stream():
    domains = [f"d{i}.test" for i in range(5)]
    gw, stream, metrics = securedWithMetrics(verdicts={d: valid(d) for d in domains},
                                             limits={"claims_per_stream": 3,
                                                     "refused_claims": 10})
    for d in domains:
        stream.dataReceived(dbResult(sender=d))
    assert limitHits(metrics, "claims_per_stream") == 2


def test_the_refused_claim_line_is_rate_limited_across_streams():
    from twisted.internet.address import IPv4Address
    from twisted.logger import capturedLogs

    from s2sgate.s2s.inbound import InboundFactory

    gw = tlsGateway(mode="required", secure_auth=True)
    factory = InboundFactory(gw.clock, gw.current, gw.router, gw.verifier, gw.sessions)
    with capturedLogs() as events:
        for n in range(20):
            stream = factory.buildProtocol(IPv4Address("TCP", "127.0.3.9", 40000 + n))
            stream.makeConnection(TLSTransport())
            stream.dataReceived(header())
            stream.dataReceived(STARTTLS)
            stream.handshakeCompleted()
            stream.dataReceived(header())
            for i in range(3):
                stream.dataReceived(dbResult(sender=f"victim{i}.test"))
    refused = [e for e in events if e.get("event") == "inbound.claim_refused"]
    assert len(refused) == 10   # of 60 refusals: one window's burst
    gw.clock.advance(60)
    with capturedLogs() as events:
        stream = factory.buildProtocol(IPv4Address("TCP", "127.0.3.9", 40100))
        stream.makeConnection(TLSTransport())
        stream.dataReceived(header() + STARTTLS)
        stream.handshakeCompleted()
        stream.dataReceived(header() + dbResult(sender="victim0.test"))
    [line] = [e for e in events if e.get("event") == "inbound.claim_refused"]
    assert line["suppressed"] == 50


def test_restart_naming_another_local_domain_is_host_unknown_from_the_first():
    gw, stream, out = opened(mode="required")
    stream.dataReceived(STARTTLS)
    stream.handshakeCompleted()
    out = fresh(out.transport)
    stream.dataReceived(header(to=MUC))
    assert out.streamError() == "host-unknown"
    assert (out.header["from"], out.header["version"]) == (LOCAL, "1.0")


def test_stream_error_right_after_the_sasl_restart_opens_a_new_header_first():
    gw, stream, out = secured(mode="required", verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(auth("="))
    out = fresh(out.transport)
    stream.dataReceived(header(to=MUC))
    assert out.streamError() == "host-unknown"
    assert (out.header["from"], out.header["version"]) == (LOCAL, "1.0")
