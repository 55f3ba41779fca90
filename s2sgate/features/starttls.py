# -*- test-case-name: tests.test_outbound_tls,tests.test_inbound_tls -*-
"""
STARTTLS (RFC 6120 §5) and direct TLS (XEP-0368), both sides.

Initiating: L{DirectTLS} judges the certificate of a connection that was
TLS from the first byte; L{StartTLS} upgrades a plaintext stream when the
peer offers it, and refuses to go on in plaintext when the requirements
demand TLS (a peer, or someone in between, that leaves STARTTLS out cannot
talk us into plaintext).  Receiving: L{StartTLSOffer}.
"""

from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.interfaces import IOffer, IStep
from s2sgate.s2s.negotiation import Failed, Restart, Skip
from s2sgate.xmpp.namespaces import NS_TLS

log = Logger()


def judgeCertificate(stream):
    """
    After the TLS handshake: record the TLS step and refuse a peer whose
    certificate the requirements demand be valid.  Returns a L{Failed} or None.
    """
    certificate = stream.certificate
    info = stream.tlsInfo
    requirements = stream.requirements
    refused = (requirements.mustBeTrusted(stream.remote)
               and (certificate is None or certificate.status != "valid"))
    status = certificate.status if certificate is not None else "none"
    reason = certificate.reason if certificate is not None else "no certificate"
    if certificate is not None and certificate.status == "dane-mismatch":
        refused = True      # RFC 7673: a mismatch under authenticated TLSA is fatal
    elif requirements.daneRequired(stream.remote) and (
            certificate is None or certificate.dane is None):
        refused = True
        reason = (f"no DNSSEC-authenticated TLSA records for {stream.remote}'s target, "
                  f"and DANE is required for it ({reason})")
    stream.record("tls", f"{info.get('version')} {info.get('cipher')}; "
                  f"certificate {status}: {reason}", ok=not refused)
    if not refused:
        return None
    log.warn("refusing {remote}: {reason}", remote=stream.remote, reason=reason,
             local=stream.local, event="outbound.certificate_refused")
    return Failed("remote-server-not-found",
                  f"{stream.remote} failed the certificate check: {reason}", step="tls")


@implementer(IStep)
class DirectTLS:
    """A direct TLS connection: judge the certificate once the handshake is done."""

    name = "tls"

    def __init__(self, runtime=None):
        pass

    def applies(self, stream, features):
        return features is None and stream.directTLS

    async def run(self, stream, features):
        await stream.handshake()
        return judgeCertificate(stream) or Skip()


@implementer(IStep)
class StartTLS:
    """Upgrade to TLS when offered; enforce C{use_starttls} / C{secure_domains}."""

    name = "tls"

    def __init__(self, runtime=None):
        pass

    def applies(self, stream, features):
        return features is not None and not stream.secure

    async def run(self, stream, features):
        requirements, remote = stream.requirements, stream.remote
        if features.starttls and requirements.tlsEnabled and stream.tls is not None:
            stream.send(domish.Element((NS_TLS, "starttls")))
            answer = await stream.expect(lambda e: e.uri == NS_TLS)
            if answer.name != "proceed":
                return Failed("remote-server-not-found", f"{remote} refused STARTTLS")
            stream.startTLS(stream.tls.clientCreator(remote, stream.local))
            stream.restart()
            await stream.handshake()
            return judgeCertificate(stream) or Restart()
        if requirements.mustEncrypt(remote):
            if features.legacy:
                return Failed("remote-server-not-found",
                              f"{remote} speaks pre-1.0 XMPP without STARTTLS; TLS is required")
            return Failed("remote-server-not-found",
                          f"{remote} does not offer STARTTLS, and this server requires TLS")
        if features.starttls and features.starttlsRequired:
            return Failed("remote-server-not-found",
                          f"{remote} requires STARTTLS, which use_starttls = \"false\" forbids")
        return Skip()


@implementer(IOffer)
class StartTLSOffer:
    """Offer STARTTLS while the stream is plaintext and we hold a certificate for it."""

    # One per stream: no instance dict.
    __slots__ = ("runtime", "started")

    def __init__(self, runtime):
        self.runtime = runtime
        self.started = False

    def offered(self, stream):
        tls = self.runtime.tls
        return (not stream.secure and not self.started and self.runtime.requirements.tlsEnabled
                and tls is not None and tls.hasCertificateFor(stream.local))

    def advertise(self, stream, features):
        if self.offered(stream):
            starttls = features.addElement((NS_TLS, "starttls"))
            if self.runtime.requirements.mustEncrypt(stream.remoteHeader):
                starttls.addElement("required")

    def streamClosed(self, stream):
        pass

    def handlers(self):
        return {(NS_TLS, "starttls"): self.starttls}

    def starttls(self, stream, element):
        if not self.offered(stream):
            stream.send(domish.Element((NS_TLS, "failure")))
            stream.closeStream()
            return
        stream.send(domish.Element((NS_TLS, "proceed")))
        # Secure only once the handshake completes (handshakeCompleted);
        # plaintext that followed <starttls/> is dropped with the old parser.
        self.started = True
        stream.startTLS(self.runtime.tls.serverCreator(stream.local))
