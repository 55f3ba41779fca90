# -*- test-case-name: tests.test_outbound_tls,tests.test_inbound_tls -*-
"""
SASL EXTERNAL for s2s (XEP-0178), both sides: the TLS certificate
authenticates the domain, no connection back to the peer is needed.
"""

import base64
import binascii

from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.interfaces import IOffer, IStep
from s2sgate.s2s.negotiation import Authenticated, Skip
from s2sgate.xmpp.domain import InvalidDomain, normalize
from s2sgate.xmpp.namespaces import NS_SASL

log = Logger()


@implementer(IStep)
class SaslExternal:
    """Ask for EXTERNAL when offered over TLS and our certificate covers our domain."""

    name = "auth"

    def __init__(self, runtime=None):
        self.tried = False

    def applies(self, stream, features):
        return (features is not None and stream.secure and not self.tried
                and features.offersMechanism("EXTERNAL") and stream.tls is not None
                and stream.tls.ourCertificateCovers(stream.local))

    async def run(self, stream, features):
        self.tried = True
        auth = domish.Element((NS_SASL, "auth"))
        auth["mechanism"] = "EXTERNAL"
        auth.addContent("=")
        stream.send(auth)
        answer = await stream.expect(lambda e: e.uri == NS_SASL)
        if answer.name == "success":
            stream.restart()
            return Authenticated("sasl-external", afterRestart=True)
        reason = ", ".join(c.name if c.name != "text" else str(c) for c in answer.elements())
        log.info("{remote} refused SASL EXTERNAL for {local} ({reason}); trying dialback",
                 remote=stream.remote, local=stream.local, reason=reason,
                 event="outbound.sasl_failed")
        return Skip()


@implementer(IOffer)
class SaslExternalOffer:
    """Offer EXTERNAL to a peer whose certificate is valid for the domain it names."""

    # One per stream: no instance dict.
    __slots__ = ("done",)

    def __init__(self, runtime):
        # Built with the runtime as every offer is; the stream has all it asks.
        self.done = False

    def advertise(self, stream, features):
        if self.done or stream.verifyOnly or not stream.mayAuthenticate():
            return
        certificate = stream.certificateFor(stream.remoteHeader)
        if certificate is not None and certificate.status == "valid":
            mechanisms = features.addElement((NS_SASL, "mechanisms"))
            mechanisms.addElement("mechanism", content="EXTERNAL")

    def streamClosed(self, stream):
        pass

    def handlers(self):
        return {(NS_SASL, None): self.sasl}

    def sasl(self, stream, element):
        if element.name != "auth" or self.done:
            stream.streamError("policy-violation", "unexpected SASL element")
            return
        if element.getAttribute("mechanism") != "EXTERNAL":
            self._failure(stream, "invalid-mechanism", "only EXTERNAL is offered")
            return
        text = str(element).strip()
        remote = stream.remoteHeader
        if text and text != "=":
            try:
                remote = normalize(base64.b64decode(text, validate=True).decode("utf-8"))
            except (binascii.Error, UnicodeDecodeError, InvalidDomain):
                self._failure(stream, "incorrect-encoding",
                              "the authorization identity is not a domain")
                return
        if remote is None:
            self._failure(stream, "not-authorized", "no identity: send 'from' in the stream header")
            return
        if not stream.claim(remote):
            self._failure(stream, "not-authorized", "too many domains claimed on one stream",
                          remote)
            return
        certificate = stream.certificateFor(remote)
        if certificate is None or certificate.status != "valid":
            reason = certificate.reason if certificate is not None else "no TLS"
            self._failure(stream, "not-authorized", reason, remote)
            return
        if not stream.allowedByPolicy(remote, stream.local):
            return
        stream.send(domish.Element((NS_SASL, "success")))
        self.done = True
        stream.authenticated(remote, stream.local, "sasl-external")
        stream.expectRestart()

    def _failure(self, stream, condition, text, remote=None):
        """Every SASL failure is a refused claim: bounded per stream, rate-limited in the log."""
        def failure(text):
            element = domish.Element((NS_SASL, "failure"))
            element.addElement(condition)
            element.addElement("text", content=text)
            return element

        stream.refuseClaim(remote or stream.remoteHeader, stream.local, f"SASL EXTERNAL: {text}",
                           lambda why: failure(text), event="inbound.sasl_failed")
