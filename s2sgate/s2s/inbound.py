# -*- test-case-name: tests.test_inbound -*-
"""
Inbound s2s: streams remote servers open to us.

One L{InboundStream} holds the state of one connection: the header checks,
the pairs it has authenticated and the check that every stanza's
C{from}/C{to} domains are one of them.  What it offers (STARTTLS, SASL
EXTERNAL, dialback, limits) comes from the runtime's offers: each adds to
C{<stream:features/>} and handles its own elements through one
C{(namespace, name)} table.
"""

from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.s2s.addressing import checkedPair
from s2sgate.s2s.guard import LogLimiter
from s2sgate.s2s.negotiation import Untracked
from s2sgate.s2s.streamlog import logStreamEnd
from s2sgate.timers import cancel
from s2sgate.xmpp.domain import InvalidDomain, normalize
from s2sgate.xmpp.namespaces import NS_DB, NS_LIMITS, NS_SERVER, NS_STREAMS
from s2sgate.xmpp.stanzas import STANZA_NAMES
from s2sgate.xmpp.stream import XmlStream, newStreamId

__all__ = ["InboundFactory", "InboundStream", "NS_LIMITS"]


@implementer(IHandshakeListener)
class InboundStream(XmlStream):
    """
    @param runtime: the L{Runtime} this stream runs on (from start to end).
    @param router: delivers authenticated stanzas (C{fromRemote}).
    @param verifier: the dialback verify leg (L{s2sgate.s2s.verify.Verifier}).
    @param sessions: the L{SessionTable}.
    @param peerHost: the IP address the connection comes from (the bounds
        per address count it).
    @param peerLog: the L{LogLimiter} shared by the gateway's streams for
        the lines a peer can make us repeat.
    """

    direction = "in"
    extraNamespaces = (("db", NS_DB),)
    # Stanzas are routed from their bytes (RawStanza); only negotiation is parsed.
    stanzaNames = frozenset((NS_SERVER, name) for name in STANZA_NAMES)

    def __init__(self, clock, runtime, router, verifier, sessions, *, directTLS=False,
                 peerAddress=None, peerHost=None, peerLog=None, batch=None, metrics=None):
        XmlStream.__init__(self, clock, maxStanzaBytes=runtime.limits.stanzaBytes,
                           idleTimeout=runtime.limits.idleTimeout, batch=batch, metrics=metrics)
        self.runtime = runtime
        self.requirements = runtime.requirements
        self.router = router
        self.verifier = verifier
        self.sessions = sessions
        self.directTLS = directTLS
        self.peerAddress = peerAddress
        self.peerHost = peerHost
        self.peerLog = peerLog if peerLog is not None else LogLimiter(clock)
        self.limits = runtime.config.s2s.limits
        self.claimed = set()       # remote domains claimed (db:result, SASL authzid)
        self.refusedClaims = 0
        self.streamId = None
        self.local = None          # the domain in the header's 'to'
        self.verifyOnly = False    # no 'to': an older server's <db:verify/>-only stream
        self.remoteHeader = None   # the header's 'from', if any
        self.pairs = set()         # authenticated (remote, local)
        self.authMethod = None
        self.secure = False
        self.tlsInfo = {}
        self.certificates = {}     # remote domain -> PeerCertificate
        self.stanzasIn = 0
        self.stanzasOut = 0
        self.bidi = False          # the peer asked for a bidirectional stream (XEP-0288)
        self._restarting = False   # SASL succeeded: the peer's new header is due
        self._held = []            # our stanzas (bidi) written once that header came
        self.streamManagement = False   # acks on (XEP-0198, L{acknowledging})
        # What we write on it (bidi) is counted, not acknowledged: we do not ask.
        self.delivery = Untracked()
        self.since = clock.seconds()
        self.offers = runtime.offersForStream()
        self.offerIndex = runtime.offerIndex
        self._negotiationCall = None

    @property
    def peer(self):
        return self.remoteHeader or next((r for r, _ in self.pairs), None)

    def describe(self):
        return f"inbound {self.remoteHeader or '?'} -> {self.local or '?'} [{self.streamId}]"

    def connectionMade(self):
        XmlStream.connectionMade(self)
        if self.directTLS or ISSLTransport.providedBy(self.transport):
            self.secure = True
        if not self._admitted():
            return
        self.sessions.track(self)
        self._negotiationCall = self.clock.callLater(self.runtime.limits.negotiationTimeout,
                                                     self._negotiationTimedOut)

    def _admitted(self):
        """False, after a stream error, when this connection is over an unauthenticated bound."""
        limits, host = self.limits, self.peerHost
        if host is not None and self.sessions.unauthenticated(host) >= limits.unauthenticated_per_address:
            self._refuseConnection("unauthenticated_per_address", "policy-violation",
                                   "too many streams from your address are not authenticated")
            return False
        if self.sessions.unauthenticated() >= limits.unauthenticated_total:
            self._refuseConnection("unauthenticated_total", "resource-constraint",
                                   "too many streams are waiting to authenticate; try again later")
            return False
        return True

    def _refuseConnection(self, limit, condition, text):
        self.limitHit(limit)
        self.peerLog.warn("inbound connection from {peer} refused: {limit} reached",
                          "inbound.refused", peer=self.peerAddress, limit=limit)
        self.streamError(condition, text)
        # Not the usual grace period: the descriptor is what is scarce.
        self.transport.loseConnection()

    def limitHit(self, limit):
        """Count a peer reaching the bound C{limit} (its config key) for the metrics."""
        if self.metrics is not None:
            self.metrics.limitHit(limit)

    def handshakeCompleted(self):
        self.secure = True
        self.tlsInfo = self.runtime.tls.describe(self.transport.getHandle())

    def errorHeaderAttrs(self):
        attrs = {"id": self.streamId or newStreamId(), "version": "1.0"}
        if self.local:
            attrs["from"] = self.local
        return attrs

    # what offers use

    def startTLS(self, creator):
        self.flushPending()   # <proceed/> must go out in plaintext
        self.transport.startTLS(creator)
        self.restartStream()

    def restartStream(self):
        """
        After STARTTLS or SASL: a new stream on both sides, so our next
        header is due again (and a stream error before it opens one, RFC
        6120 4.9.1.1: the peer's parser was reset too).
        """
        self.parser.reset()
        self.headerSent = False

    def useBidi(self):
        """
        The peer asked for bidi (XEP-0288): once authenticated, this stream
        carries our stanzas to it too (the session table hands it out).
        """
        self.bidi = True

    def expectRestart(self):
        """SASL succeeded: the peer restarts the stream; nothing of ours may go before our new header."""
        self._restarting = True
        self.restartStream()

    def sendStanza(self, stanza, resent=False):
        """One of our stanzas to the peer, on a bidi stream (held over a SASL restart)."""
        self.stanzasOut += 1
        self.delivery.stanzaSent(stanza, resent)
        if self._restarting:
            self._held.append(stanza)
        else:
            XmlStream.sendStanza(self, stanza)

    def certificateFor(self, remote):
        """The verdict on the peer's TLS certificate for C{remote} (cached per stream)."""
        if not self.secure or remote is None:
            return None
        verdict = self.certificates.get(remote)
        if verdict is None:
            verdict = self.runtime.tls.peerVerdict(self.transport.getHandle(), remote)
            # Claims are bounded, so is the cache (the header's domain + claims).
            if len(self.certificates) <= self.limits.claims_per_stream:
                self.certificates[remote] = verdict
        return verdict

    def claim(self, remote):
        """
        Whether this stream may claim C{remote} (db:result, SASL authzid): a
        stream may name at most C{claims_per_stream} domains.
        """
        if remote in self.claimed:
            return True
        if len(self.claimed) >= self.limits.claims_per_stream:
            self.limitHit("claims_per_stream")
            return False
        self.claimed.add(remote)
        return True

    def refuseClaim(self, remote, local, why, answer, event="inbound.claim_refused"):
        """
        Refuse a claim: send C{answer(why)} and, after C{refused_claims}
        refusals, end the stream (policy-violation).  The log line is rate
        limited: a peer decides how often it is written.
        """
        self.refusedClaims += 1
        self.peerLog.warn("{peer} claimed {remote} for {local}, refused: {why}", event,
                          peer=self.peerAddress, remote=remote, local=local, why=why,
                          stream=self.streamId)
        self.send(answer(why))
        if self.refusedClaims >= self.limits.refused_claims:
            self.limitHit("refused_claims")
            self.streamError("policy-violation",
                             f"{self.refusedClaims} refused claims on one stream")

    def mayAuthenticate(self):
        """Whether authentication may happen now (TLS first when it is required)."""
        return self.secure or not self.requirements.mustEncrypt(self.remoteHeader)

    def requireTLS(self, remote):
        """False, after a stream error, when C{remote} may send nothing before TLS."""
        if not self.secure and self.requirements.mustEncrypt(remote):
            self.streamError("policy-violation", "this server requires TLS (STARTTLS) first")
            return False
        return True

    def allowedByPolicy(self, remote, local, refuse=None):
        """
        False, after a stream error, when the federation policy refuses the
        pair; with C{refuse}, after C{refuse(text)} instead (a further pair
        on an established stream: the pairs already on it keep their stream).
        """
        policy = self.runtime.policy
        ok, _, text = policy.check(local, remote)
        if not ok:
            policy.refuse("inbound", local, remote, text)
            if refuse is None:
                self.streamError("policy-violation", text)
            else:
                refuse(text)
        return ok

    def authenticated(self, remote, local, method):
        self.pairs.add((remote, local))
        first = self.authMethod is None
        self.authMethod = self.authMethod or method
        self._cancelNegotiationTimer()
        self.sessions.authenticated(self, remote, local)
        self.log.info("inbound stream {remote} -> {local} authenticated ({method}; {security})",
                      remote=remote, local=local, method=method,
                      security=self.securitySummary(remote), stream=self.streamId, first=first,
                      direction="inbound", event="inbound.established")

    def acknowledging(self):
        """Stream management is on: the peer may ask what this stream handled."""
        self.streamManagement = True

    def securitySummary(self, remote=None):
        if not self.secure:
            return "no TLS"
        parts = ["direct TLS" if self.directTLS else "STARTTLS",
                 self.tlsInfo.get("version", ""), self.tlsInfo.get("cipher", "")]
        certificate = self.certificates.get(remote or self.remoteHeader)
        if certificate is not None:
            parts.append(f"certificate {certificate.status}")
        return " ".join(p for p in parts if p)

    # the stream header (again after each restart)

    def streamStarted(self, header):
        self.streamId = newStreamId()
        to = header.getAttribute("to")
        if not to and self.local is None and not self.verifyOnly:
            # Older servers (Openfire among them) open the stream to our
            # authoritative side without 'to', only to send <db:verify/>.
            self.verifyOnly = True
        elif self.verifyOnly:
            self.streamError("host-unknown", "the stream's 'to' changed on restart")
            return
        else:
            try:
                local = normalize(to) if to else None
            except InvalidDomain:
                local = None
            if local is None or not self.runtime.isLocal(local):
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
        attrs = {"from": self.local, "id": self.streamId}
        version = header.getAttribute("version")
        if version and version >= "1.0":
            attrs["version"] = "1.0"
        if self.remoteHeader:
            attrs["to"] = self.remoteHeader
        self.sendHeader(attrs)
        if "version" in attrs:
            self.send(self.features())
            if self._restarting:
                self._restarting = False
                held, self._held = self._held, []
                for stanza in held:
                    XmlStream.sendStanza(self, stanza)
        elif self.requirements.mustEncrypt(self.remoteHeader) and not self.secure:
            self.streamError("policy-violation", "this server requires TLS (STARTTLS)")

    def features(self):
        f = domish.Element((NS_STREAMS, "features"))
        for offer in self.offers:
            offer.advertise(self, f)
        return f

    def elementReceived(self, element):
        if self.verifyOnly and (element.uri, element.name) != (NS_DB, "verify"):
            self.streamError("host-unknown", "this stream named no host in its header: "
                             "only <db:verify/> is accepted on it")
            return
        handler = self._handler(element.uri, element.name)
        if handler is not None:
            handler(self, element)
            return
        if element.name not in STANZA_NAMES or element.uri != NS_SERVER:
            self.streamError("unsupported-stanza-type", f"<{element.name}/> is not a stanza")
            return
        if self.requireTLS(self.remoteHeader):
            self._stanza(element)

    def stanzaReceived(self, stanza):
        if self.verifyOnly:
            self.streamError("host-unknown", "this stream named no host in its header: "
                             "only <db:verify/> is accepted on it")
            return
        handler = self._handler(stanza.uri, stanza.name)
        if handler is not None:
            handler(self, stanza.element())
            return
        if self.requireTLS(self.remoteHeader):
            self._stanza(stanza)

    def _handler(self, uri, name):
        """The offer's handler for an element, or None (a stanza)."""
        index = self.offerIndex
        key = (uri, name)
        i = index.get(key)
        if i is None:
            key = (uri, None)
            i = index.get(key)
            if i is None:
                return None
        return self.offers[i].handlers()[key]

    def stanzaAfterClose(self, stanza):
        # We closed (a shutdown, an idle stream): stanzas the peer sent
        # before it saw our closing tag are still delivered; negotiation is over.
        if self.requireTLS(self.remoteHeader):
            self._stanza(stanza)

    # stanzas

    def _stanza(self, stanza):
        """Check a L{RawStanza}'s addresses against the stream's pairs and route it."""
        if checkedPair(self, stanza, self.pairs, self.runtime.isLocal) is None:
            return
        self.stanzasIn += 1
        self.router.fromRemote(stanza)

    # timers and teardown

    def _negotiationTimedOut(self):
        self._negotiationCall = None
        if not self.pairs:
            # Pending verifies do not extend it: a stream that cannot
            # authenticate in time goes, whatever it is waiting for.
            self.streamError("connection-timeout", "no authentication in time")

    def _cancelNegotiationTimer(self):
        cancel(self._negotiationCall)
        self._negotiationCall = None

    def streamClosed(self, reason):
        self._cancelNegotiationTimer()
        if self.pairs:
            pairs = sorted(self.pairs)
            logStreamEnd(self, remote=self.peer, pairs=pairs, stanzasIn=self.stanzasIn,
                         stanzasOut=self.stanzasOut,
                         security=self.securitySummary(pairs[0][0]), now=self.clock.seconds(),
                         fate="stream management on" if self.streamManagement else None,
                         sm=self.streamManagement)
            if not self.endClean and self.metrics is not None:
                self.metrics.streamLost("in")
        self.sessions.untrack(self)
        for offer in self.offers:
            offer.streamClosed(self)


class InboundFactory(Factory):
    """
    Builds an L{InboundStream} per connection on the runtime current then.

    @param current: the L{Current} runtime.
    """

    def __init__(self, clock, current, router, verifier, sessions, *, directTLS=False,
                 peerLog=None, batch=None, metrics=None):
        self.clock = clock
        self.peerLog = peerLog if peerLog is not None else LogLimiter(clock)
        self.current = current
        self.router = router
        self.verifier = verifier
        self.sessions = sessions
        self.directTLS = directTLS
        self.batch = batch
        self.metrics = metrics

    def buildProtocol(self, addr):
        host, port = getattr(addr, "host", None), getattr(addr, "port", None)
        p = InboundStream(self.clock, self.current.runtime, self.router, self.verifier,
                          self.sessions, directTLS=self.directTLS,
                          peerAddress=f"{host}:{port}" if host else None, peerHost=host,
                          peerLog=self.peerLog,
                          batch=self.batch, metrics=self.metrics)
        p.factory = self
        return p
