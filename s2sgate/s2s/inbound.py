# -*- test-case-name: tests.test_inbound -*-
"""
Inbound s2s: streams remote servers open to us.

One L{InboundStream} holds the state of one connection: the header checks,
STARTTLS, SASL EXTERNAL, the dialback pairs it has authenticated (receiving
role), the verify requests it answers (authoritative role), and the check
that every stanza's C{from}/C{to} domains are one of its authenticated pairs.
"""

import base64
import binascii

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.net.connector import ConnectFailed
from s2sgate.auth.dialback import NS_DB, NS_DB_FEATURE, dbElement, dbError
from s2sgate.xmpp.domain import InvalidDomain, domainOf, isUnambiguous, normalize, rawDomainOf
from s2sgate.auth.requirements import NS_SASL, NS_TLS
from s2sgate.xmpp.stanzas import STANZA_NAMES
from s2sgate.xmpp.stream import XmlStream, newStreamId
from s2sgate.xmpp.parser import NS_STREAMS

NS_LIMITS = "urn:xmpp:stream-limits:0"

# Each dialback request costs an outbound connection: bound them per stream.
MAX_PENDING_VERIFIES = 10


@implementer(IHandshakeListener)
class InboundStream(XmlStream):
    extraNamespaces = (("db", NS_DB),)

    def __init__(self, gateway, directTLS=False):
        s = gateway.config.s2s
        XmlStream.__init__(self, gateway.clock, maxStanzaBytes=s.stanza_size_limit,
                           idleTimeout=s.idle_timeout)
        self.gateway = gateway
        self.security = gateway.security
        self.directTLS = directTLS
        self.streamId = None
        self.local = None          # the domain in the header's 'to'
        self.remoteHeader = None   # the header's 'from', if any
        self.pairs = set()         # authenticated (remote, local)
        self.pending = {}          # (remote, local) -> Deferred of a verify
        self.authMethod = None
        self.secure = False
        self.tlsInfo = {}
        self.certificates = {}     # remote domain -> PeerCertificate
        self.stanzasIn = 0
        self.saslDone = False
        self.tlsStarted = False
        self.since = gateway.clock.seconds()
        self.batch = getattr(gateway, "batch", None)
        self.metrics = getattr(gateway, "metrics", None)
        self._negotiationCall = None

    def describe(self):
        return f"inbound {self.remoteHeader or '?'} -> {self.local or '?'} [{self.streamId}]"

    def connectionMade(self):
        XmlStream.connectionMade(self)
        if self.directTLS or ISSLTransport.providedBy(self.transport):
            self.secure = True
        self.gateway.inboundStreams.add(self)
        self._negotiationCall = self.clock.callLater(self.gateway.config.s2s.negotiation_timeout,
                                                     self._negotiationTimedOut)

    def handshakeCompleted(self):
        self.secure = True
        self.tlsInfo = self.gateway.tls.describe(self.transport.getHandle())

    def errorHeaderAttrs(self):
        attrs = {"id": self.streamId or newStreamId(), "version": "1.0"}
        if self.local:
            attrs["from"] = self.local
        return attrs

    # the stream header (again after each restart)

    def streamStarted(self, header):
        self.streamId = newStreamId()
        to = header.getAttribute("to")
        try:
            local = normalize(to) if to else None
        except InvalidDomain:
            local = None
        if local is None or not self.gateway.router.isLocal(local):
            self.streamError("host-unknown", f"this server does not serve {to!r}")
            return
        if self.local is not None and local != self.local:
            self.streamError("host-unknown", "the stream's 'to' changed on restart")
            return
        self.local = local
        sender = header.getAttribute("from")
        if sender:
            try:
                self.remoteHeader = normalize(sender)
            except InvalidDomain:
                self.streamError("invalid-from", f"{sender!r} is not a valid domain")
                return
        attrs = {"from": local, "id": self.streamId}
        version = header.getAttribute("version")
        if version and version >= "1.0":
            attrs["version"] = "1.0"
        if self.remoteHeader:
            attrs["to"] = self.remoteHeader
        self.sendHeader(attrs)
        if "version" in attrs:
            self.send(self.features())
        elif self.security.mustEncrypt(self.remoteHeader) and not self.secure:
            self.streamError("policy-violation", "this server requires TLS (STARTTLS)")

    def offersTLS(self):
        return (not self.secure and not self.tlsStarted and self.security.tlsEnabled
                and self.gateway.tls is not None and self.gateway.tls.hasCertificateFor(self.local))

    def certificateFor(self, remote):
        """The verdict on the peer's TLS certificate for C{remote} (cached per stream)."""
        if not self.secure or remote is None:
            return None
        if remote not in self.certificates:
            self.certificates[remote] = self.gateway.tls.peerVerdict(self.transport.getHandle(),
                                                                     remote)
        return self.certificates[remote]

    def features(self):
        f = domish.Element((NS_STREAMS, "features"))
        if self.offersTLS():
            tls = f.addElement((NS_TLS, "starttls"))
            if self.security.mustEncrypt(self.remoteHeader):
                tls.addElement("required")
        mayAuthenticate = self.secure or not self.security.mustEncrypt(self.remoteHeader)
        if mayAuthenticate and not self.saslDone:
            certificate = self.certificateFor(self.remoteHeader)
            if certificate is not None and certificate.status == "valid":
                mechanisms = f.addElement((NS_SASL, "mechanisms"))
                mechanisms.addElement("mechanism", content="EXTERNAL")
        if mayAuthenticate:
            db = f.addElement((NS_DB_FEATURE, "dialback"))
            db.addElement("errors")
        limits = f.addElement((NS_LIMITS, "limits"))
        limits.addElement("max-bytes", content=str(self.maxStanzaBytes))
        if self.idleTimeout:
            limits.addElement("idle-seconds", content=str(int(self.idleTimeout)))
        return f

    def elementReceived(self, element):
        uri = element.uri
        if uri == NS_DB:
            if not self.secure and self.security.mustEncrypt(element.getAttribute("from")):
                self.streamError("policy-violation", "this server requires TLS (STARTTLS) first")
                return
            if element.name == "result":
                self._dialbackResult(element)
            elif element.name == "verify":
                self._dialbackVerify(element)
            return
        if uri == NS_TLS and element.name == "starttls":
            self._starttls()
            return
        if uri == NS_SASL:
            self._sasl(element)
            return
        if element.name not in STANZA_NAMES or uri != "jabber:server":
            self.streamError("unsupported-stanza-type", f"<{element.name}/> is not a stanza")
            return
        if not self.secure and self.security.mustEncrypt(self.remoteHeader):
            self.streamError("policy-violation", "this server requires TLS (STARTTLS) first")
            return
        self._stanza(element)

    # STARTTLS

    def _starttls(self):
        if not self.offersTLS():
            self.send(domish.Element((NS_TLS, "failure")))
            self.closeStream()
            return
        self.send(domish.Element((NS_TLS, "proceed")))
        self.flushPending()   # <proceed/> must go out in plaintext
        self.transport.startTLS(self.gateway.tls.serverCreator(self.local))
        # Secure only once the handshake completes (handshakeCompleted);
        # plaintext that followed <starttls/> is dropped with the old parser.
        self.tlsStarted = True
        self.parser.reset()

    # SASL EXTERNAL (XEP-0178)

    def _sasl(self, element):
        if element.name != "auth" or self.saslDone:
            self.streamError("policy-violation", "unexpected SASL element")
            return
        if element.getAttribute("mechanism") != "EXTERNAL":
            self._saslFailure("invalid-mechanism", "only EXTERNAL is offered")
            return
        text = str(element).strip()
        remote = self.remoteHeader
        if text and text != "=":
            try:
                remote = normalize(base64.b64decode(text, validate=True).decode("utf-8"))
            except (binascii.Error, UnicodeDecodeError, InvalidDomain):
                self._saslFailure("incorrect-encoding", "the authorization identity is not a domain")
                return
        if remote is None:
            self._saslFailure("not-authorized", "no identity: send 'from' in the stream header")
            return
        certificate = self.certificateFor(remote)
        if certificate is None or certificate.status != "valid":
            reason = certificate.reason if certificate is not None else "no TLS"
            self._saslFailure("not-authorized", reason)
            return
        ok, _, text = self.gateway.policy.check(self.local, remote)
        if not ok:
            self.gateway.policy.refuse("inbound", self.local, remote, text)
            self.streamError("policy-violation", text)
            return
        self.send(domish.Element((NS_SASL, "success")))
        self.saslDone = True
        self._authenticated(remote, self.local, "sasl-external")
        self.parser.reset()

    def _saslFailure(self, condition, text):
        self.log.info("SASL EXTERNAL from {remote} refused: {text}", remote=self.remoteHeader,
                      text=text, stream=self.streamId, event="inbound.sasl_failed")
        failure = domish.Element((NS_SASL, "failure"))
        failure.addElement(condition)
        failure.addElement("text", content=text)
        self.send(failure)

    # dialback: receiving role

    def _dialbackParties(self, element):
        """
        The (sender, local recipient) domains of a dialback request, or None
        after answering a malformed or misaddressed one.
        """
        sender, to = element.getAttribute("from"), element.getAttribute("to")
        try:
            remote, local = normalize(sender), normalize(to)
        except (InvalidDomain, TypeError):
            self.streamError("improper-addressing", f"<db:{element.name}/> without valid from/to")
            return None
        if not self.gateway.router.isLocal(local):
            self.send(dbError(element.name, to, sender, "item-not-found",
                              f"this server does not serve {to}",
                              streamId=element.getAttribute("id")))
            return None
        return remote, local

    def _dialbackResult(self, element):
        if element.getAttribute("type"):
            return
        parties = self._dialbackParties(element)
        if parties is None:
            return
        remote, local = parties
        ok, _, text = self.gateway.policy.check(local, remote)
        if not ok:
            self.gateway.policy.refuse("inbound", local, remote, text)
            self.streamError("policy-violation", text)
            return
        if (remote, local) in self.pairs or (remote, local) in self.pending:
            return
        certificate = self.certificateFor(remote)
        allowed, why = self.security.dialbackAllowed(remote, certificate)
        if not allowed:
            self.log.warn("dialback from {remote} for {local} refused: {why}", remote=remote,
                          local=local, why=why, event="inbound.dialback_refused")
            self.send(dbError("result", local, remote, "not-authorized", why))
            return
        if certificate is not None and certificate.status == "valid":
            # XEP-0344 "dialback without dialback": the certificate already
            # proves the domain; no callback needed.
            self._authenticated(remote, local, "dialback-without-dialback")
            self.send(dbElement("result", local, remote, kind="valid"))
            return
        if len(self.pending) >= MAX_PENDING_VERIFIES:
            self.streamError("policy-violation",
                             f"more than {MAX_PENDING_VERIFIES} dialback requests at once")
            return
        key = str(element).strip()
        d = defer.ensureDeferred(self.gateway.pool.verify(local, remote, self.streamId, key))
        self.pending[(remote, local)] = d
        d.addBoth(self._verified, remote, local)

    def _verified(self, result, remote, local):
        self.pending.pop((remote, local), None)
        if self.closed:
            return
        if isinstance(result, str) and result == "valid":
            self._authenticated(remote, local, "dialback")
            self.send(dbElement("result", local, remote, kind="valid"))
            return
        if isinstance(result, str):
            self.log.warn("dialback key from {remote} for {local} not confirmed: {answer}",
                          remote=remote, local=local, answer=result, event="inbound.dialback_failed")
            self.send(dbElement("result", local, remote, kind="invalid"))
            return
        if result.check(defer.CancelledError):
            return
        if result.check(ConnectFailed):
            condition, text = result.value.condition, result.value.text
        else:
            condition, text = "remote-server-not-found", result.getErrorMessage()
        self.log.warn("cannot verify dialback from {remote} for {local}: {text}", remote=remote,
                      local=local, text=text, event="inbound.dialback_failed")
        self.send(dbError("result", local, remote, condition, text))

    def _authenticated(self, remote, local, method):
        self.pairs.add((remote, local))
        first = self.authMethod is None
        self.authMethod = self.authMethod or method
        self._cancelNegotiationTimer()
        self.log.info("inbound stream {remote} -> {local} authenticated ({method}; {security})",
                      remote=remote, local=local, method=method, security=self.securitySummary(remote),
                      stream=self.streamId, first=first, event="inbound.established")

    def securitySummary(self, remote=None):
        if not self.secure:
            return "no TLS"
        parts = [self.tlsInfo.get("version", "TLS"), self.tlsInfo.get("cipher", "")]
        certificate = self.certificates.get(remote or self.remoteHeader)
        if certificate is not None:
            parts.append(f"certificate {certificate.status}")
        return " ".join(p for p in parts if p)

    # dialback: authoritative role

    def _dialbackVerify(self, element):
        if element.getAttribute("type"):
            return
        parties = self._dialbackParties(element)
        if parties is None:
            return
        receiving, originating = parties
        streamId = element.getAttribute("id")
        valid = streamId and self.gateway.keys.check(receiving, originating, streamId, str(element))
        self.send(dbElement("verify", originating, receiving, streamId=streamId,
                            kind="valid" if valid else "invalid"))

    # stanzas

    def _stanza(self, element):
        sender, to = element.getAttribute("from"), element.getAttribute("to")
        if not sender or not to:
            self.streamError("improper-addressing", "stanzas on s2s streams need from and to")
            return
        try:
            remote = domainOf(sender)
        except InvalidDomain:
            self.streamError("invalid-from", f"{sender!r} is not a valid address")
            return
        try:
            local = domainOf(to)
        except InvalidDomain:
            self.streamError("improper-addressing", f"{to!r} is not a valid address")
            return
        if not self.gateway.router.isLocal(local):
            self.streamError("host-unknown", f"this server does not serve {local}")
            return
        for address in (sender, to):
            if not isUnambiguous(rawDomainOf(address)):
                self.streamError("invalid-from" if address is sender else "improper-addressing",
                                 f"{rawDomainOf(address)!r} names different domains under "
                                 "IDNA 2003 and IDNA 2008")
                return
        if (remote, local) not in self.pairs:
            self.streamError("invalid-from",
                             f"{remote} is not authenticated on this stream for {local}")
            return
        self.stanzasIn += 1
        self.gateway.router.fromRemote(element)

    # timers and teardown

    def _negotiationTimedOut(self):
        self._negotiationCall = None
        if not self.pairs:
            # Pending verifies do not extend it: a stream that cannot
            # authenticate in time goes, whatever it is waiting for.
            self.streamError("connection-timeout", "no authentication in time")

    def _cancelNegotiationTimer(self):
        if self._negotiationCall is not None and self._negotiationCall.active():
            self._negotiationCall.cancel()
        self._negotiationCall = None

    def streamClosed(self, reason):
        self._cancelNegotiationTimer()
        self.gateway.inboundStreams.discard(self)
        for d in list(self.pending.values()):
            d.cancel()


class InboundFactory(Factory):
    def __init__(self, gateway, directTLS=False):
        self.gateway = gateway
        self.directTLS = directTLS

    def buildProtocol(self, addr):
        p = InboundStream(self.gateway, directTLS=self.directTLS)
        p.factory = self
        host, port = getattr(addr, "host", None), getattr(addr, "port", None)
        p.peerAddress = f"{host}:{port}" if host else None
        return p
