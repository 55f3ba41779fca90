# -*- test-case-name: tests.test_outbound -*-
"""
Outbound s2s: one authenticated stream per (local domain, remote domain).

L{OutboundLink} owns the queue and the retry state of one pair;
L{OutboundStream} owns the protocol state of one connection.  A stream is
negotiated as a list of steps (today: dialback; STARTTLS and SASL EXTERNAL
slot in before it) and reports back through a Deferred that fires with the
authenticated stream or fails with a L{ConnectFailed} that carries the
condition and text for the bounces.
"""

import collections

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.net.connector import Attempt, ConnectFailed, connect
from s2sgate.ops.metrics import NullMetrics
from s2sgate.auth.dialback import NS_DB, dbElement, dbErrorReason
from s2sgate.auth.requirements import NS_SASL, NS_TLS, SecurityPolicy
from s2sgate.xmpp.stream import XmlStream
from s2sgate.xmpp.parser import NS_STREAMS



@implementer(IHandshakeListener)
class OutboundStream(XmlStream):
    """
    One connection we opened to a remote server, either to carry stanzas
    for one domain pair (C{mode='result'}) or to ask the remote server's
    authoritative side to check a dialback key (C{mode='verify'}).

    Negotiation: STARTTLS (unless direct TLS already wraps the stream),
    then SASL EXTERNAL when offered and our certificate covers the local
    domain, else dialback; what the policy demands is checked at each step.
    """

    extraNamespaces = (("db", NS_DB),)

    def __init__(self, pool, local, remote, mode="result", verify=None):
        s = pool.config.s2s
        XmlStream.__init__(self, pool.clock, maxStanzaBytes=s.stanza_size_limit,
                           idleTimeout=s.idle_timeout)
        self.pool = pool
        self.security = pool.security
        self.local = local
        self.remote = remote
        self.mode = mode
        self.verifyRequest = verify   # (streamId, key)
        self.streamId = None
        self.state = "connecting"
        self.authMethod = None
        self.secure = False
        self.directTLS = False
        self.tlsInfo = {}
        self.certificate = None
        self.saslTried = False
        self.saslDone = False
        self.features = None
        self.since = pool.clock.seconds()
        self.stanzasOut = 0
        self.peerAddress = None
        self.ready = defer.Deferred()
        self.failure = None
        self.trace = []          # Attempt per step, for the diagnostic log
        self._negotiationCall = None
        self.metrics = pool.metrics
        self.batch = getattr(pool, "batch", None)

    def describe(self):
        return f"outbound {self.local} -> {self.remote}"

    def _step(self, step, detail, ok=True):
        self.trace.append(Attempt(step, self.remote, detail, ok=ok))

    def _currentStep(self):
        return {"starttls": "tls", "sasl": "auth", "dialback": "auth",
                "verifying": "auth"}.get(self.state, "stream")

    def connectionMade(self):
        XmlStream.connectionMade(self)
        if ISSLTransport.providedBy(self.transport):
            self.secure = self.directTLS = True
        try:
            peer = self.transport.getPeer()
            self.peerAddress = f"{peer.host}:{peer.port}"
        except Exception:
            self.peerAddress = None
        self._step("connect", f"connected to {self.peerAddress}"
                   + (" (direct TLS)" if self.directTLS else ""))
        self._negotiationCall = self.clock.callLater(
            self.pool.config.s2s.negotiation_timeout, self._negotiationTimedOut)
        self._sendHeader()

    def _sendHeader(self):
        self.state = "header"
        self.sendHeader({"from": self.local, "to": self.remote, "version": "1.0"})

    def handshakeCompleted(self):
        conn = self.transport.getHandle()
        self.tlsInfo = self.pool.tls.describe(conn)
        self.certificate = self.pool.tls.peerVerdict(conn, self.remote)
        refused = self.security.mustBeTrusted(self.remote) and self.certificate.status != "valid"
        self._step("tls", f"{self.tlsInfo.get('version')} {self.tlsInfo.get('cipher')}; "
                   f"certificate {self.certificate.status}: {self.certificate.reason}",
                   ok=not refused)
        if refused:
            self.log.warn("refusing {remote}: {reason}", remote=self.remote,
                          reason=self.certificate.reason, local=self.local,
                          event="outbound.certificate_refused")
            self._fail("remote-server-not-found",
                       f"{self.remote} failed the certificate check: {self.certificate.reason}")
            self.closeStream()

    def errorHeaderAttrs(self):
        return {"from": self.local, "to": self.remote, "version": "1.0"}

    def streamStarted(self, header):
        if self.closing:
            return   # our closing tag is out (e.g. a refused certificate): say nothing more
        self.streamId = header.getAttribute("id")
        if not self.streamId:
            self._fail("remote-server-not-found", "the remote server sent no stream id")
            self.streamError("invalid-xml", "a stream header needs an id")
            return
        if header.getAttribute("version", "0.0") >= "1.0":
            self.state = "features"
        elif not self.secure and self.security.mustEncrypt(self.remote):
            self._fail("remote-server-not-found",
                       f"{self.remote} speaks pre-1.0 XMPP without STARTTLS; TLS is required")
            self.closeStream()
        else:
            # Pre-1.0 servers send no features: dialback right away.
            self._dialback()

    def elementReceived(self, element):
        if self.closing:
            return   # nothing may answer a peer we are leaving (no key to a refused server)
        key = (element.uri, element.name)
        if self.state == "features" and key == (NS_STREAMS, "features"):
            self._features(element)
        elif self.state == "starttls" and element.uri == NS_TLS:
            self._starttlsAnswer(element)
        elif self.state == "sasl" and element.uri == NS_SASL:
            self._saslAnswer(element)
        elif key == (NS_DB, "result") and self.state == "dialback":
            self._dialbackResult(element)
        elif key == (NS_DB, "verify") and self.state == "verifying":
            self._verifyResult(element)
        else:
            self.log.debug("{stream}: ignored <{name}/> in state {state}",
                           stream=self.describe(), name=element.name, state=self.state)

    def _features(self, features):
        self.features = features
        starttls = required = sasl = False
        for f in features.elements():
            if (f.uri, f.name) == (NS_TLS, "starttls"):
                starttls = True
                required = any(c.name == "required" for c in f.elements())
            elif (f.uri, f.name) == (NS_SASL, "mechanisms"):
                sasl = any(str(m).strip() == "EXTERNAL" for m in f.elements())
        if self.saslDone:
            self._established("sasl-external")
            return
        if not self.secure:
            if starttls and self.security.tlsEnabled and self.pool.tls is not None:
                self.state = "starttls"
                self.send(domish.Element((NS_TLS, "starttls")))
                return
            if self.security.mustEncrypt(self.remote):
                # A peer (or someone in between) that leaves STARTTLS out
                # cannot talk us into plaintext.
                self._fail("remote-server-not-found",
                           f"{self.remote} does not offer STARTTLS, and this server requires TLS",
                           step="tls")
                self.closeStream()
                return
            if starttls and required:
                self._fail("remote-server-not-found",
                           f"{self.remote} requires STARTTLS, which use_starttls = \"false\" forbids")
                self.closeStream()
                return
        if (self.mode == "result" and sasl and not self.saslTried and self.secure
                and self.pool.tls.ourCertificateCovers(self.local)):
            self.saslTried = True
            self.state = "sasl"
            auth = domish.Element((NS_SASL, "auth"))
            auth["mechanism"] = "EXTERNAL"
            auth.addContent("=")
            self.send(auth)
            return
        self._dialback()

    def _starttlsAnswer(self, element):
        if element.name != "proceed":
            self._fail("remote-server-not-found", f"{self.remote} refused STARTTLS")
            self.closeStream()
            return
        self.flushPending()   # <proceed/> / <starttls/> must go out in plaintext
        self.transport.startTLS(self.pool.tls.clientCreator(self.remote, self.local))
        self.secure = True
        self.parser.reset()
        self._sendHeader()

    def _saslAnswer(self, element):
        if element.name == "success":
            self.saslDone = True
            self.parser.reset()
            self._sendHeader()
            return
        reason = ", ".join(c.name if c.name != "text" else str(c) for c in element.elements())
        self.log.info("{remote} refused SASL EXTERNAL for {local} ({reason}); trying dialback",
                      remote=self.remote, local=self.local, reason=reason,
                      event="outbound.sasl_failed")
        self._dialback()

    def _dialback(self):
        if self.mode == "verify":
            streamId, key = self.verifyRequest
            self.state = "verifying"
            self.send(dbElement("verify", self.local, self.remote, key=key, streamId=streamId))
            return
        self.state = "dialback"
        key = self.pool.keys.generate(self.remote, self.local, self.streamId)
        self.send(dbElement("result", self.local, self.remote, key=key))

    def _dialbackResult(self, element):
        if element.getAttribute("from") != self.remote or element.getAttribute("to") != self.local:
            return
        kind = element.getAttribute("type")
        if kind == "valid":
            self._established("dialback")
        elif kind == "error":
            self._fail("remote-server-not-found",
                       f"{self.remote} refused dialback: {dbErrorReason(element)}")
            self.closeStream()
        else:
            self._fail("remote-server-not-found",
                       f"{self.remote} could not verify our dialback key (type={kind})")
            self.closeStream()

    def _established(self, method):
        self._step("auth", f"authenticated with {method}")
        self.state = "ready"
        self.authMethod = method
        self._cancelNegotiationTimer()
        self.log.info("outbound stream {local} -> {remote} authenticated ({method}; {security})",
                      local=self.local, remote=self.remote, method=method,
                      security=self.securitySummary(), event="outbound.established")
        d, self.ready = self.ready, None
        if d is not None:
            d.callback(self)

    def securitySummary(self):
        if not self.secure:
            return "no TLS"
        parts = ["direct TLS" if self.directTLS else "STARTTLS",
                 self.tlsInfo.get("version", ""), self.tlsInfo.get("cipher", "")]
        if self.certificate is not None:
            parts.append(f"certificate {self.certificate.status}")
        return " ".join(p for p in parts if p)

    def _verifyResult(self, element):
        kind = element.getAttribute("type")
        if kind == "error":
            kind = "error:" + dbErrorReason(element)
        self._cancelNegotiationTimer()
        d, self.ready = self.ready, None
        if d is not None:
            d.callback(kind)
        self.closeStream()

    def _negotiationTimedOut(self):
        self._negotiationCall = None
        self._fail("remote-server-timeout",
                   f"{self.remote} did not complete stream negotiation in time")
        self.streamError("connection-timeout", "negotiation took too long")

    def _cancelNegotiationTimer(self):
        if self._negotiationCall is not None and self._negotiationCall.active():
            self._negotiationCall.cancel()
        self._negotiationCall = None

    def _fail(self, condition, text, step=None):
        if self.ready is not None:
            if not self.trace or self.trace[-1].ok:
                self._step(step or self._currentStep(), text, ok=False)
            d, self.ready = self.ready, None
            d.errback(ConnectFailed(condition, text, list(self.trace)))

    def streamErrorReceived(self, condition, text):
        XmlStream.streamErrorReceived(self, condition, text)
        self._fail("remote-server-not-found",
                   f"{self.remote} closed the stream: {condition}" + (f" ({text})" if text else ""))

    def streamClosed(self, reason):
        self._cancelNegotiationTimer()
        self._fail("remote-server-not-found", f"{self.remote} closed the connection during negotiation")
        self.pool.streamClosed(self)


class OutboundLink:
    """Queue, connection attempt and backoff of one (local, remote) pair."""

    log = Logger()

    def __init__(self, pool, local, remote):
        self.pool = pool
        self.local = local
        self.remote = remote
        self.queue = collections.deque()
        self.stream = None
        self.attempt = None
        self.delay = 0
        self.retryAt = 0
        self._retryCall = None
        self.lastFailure = None
        self.failures = 0

    def send(self, element):
        if self.stream is not None and self.stream.closing:
            # Our closing tag is out: anything written now would be lost.
            self.stream = None
        if self.stream is not None:
            self.stream.send(element)
            self.pool.sent += 1
            self.stream.stanzasOut += 1
            return
        if len(self.queue) >= self.pool.config.s2s.queue_limit:
            self.pool.router.bounce(element, "resource-constraint",
                                    f"too many stanzas waiting for {self.remote}")
            return
        self.queue.append(element)
        self._maybeConnect()

    def _maybeConnect(self):
        if self.attempt is not None or self._retryCall is not None:
            return
        wait = self.retryAt - self.pool.clock.seconds()
        if wait > 0:
            # A failure happened recently: try again once the delay has
            # passed, rather than bouncing everything meanwhile.
            self._retryCall = self.pool.clock.callLater(wait, self._retry)
            return
        self._start()

    def _retry(self):
        self._retryCall = None
        if self.queue and self.stream is None and self.attempt is None:
            self._start()

    def _start(self):
        self.log.info("connecting {local} -> {remote}", local=self.local, remote=self.remote,
                      event="outbound.connecting")
        self.pool.metrics.attempt()
        self.attempt = defer.ensureDeferred(self.pool.open(self.local, self.remote))
        self.attempt.addCallbacks(self._established, self._failed)

    def _established(self, stream):
        self.attempt = None
        self.stream = stream
        self.delay = 0
        self.retryAt = 0
        self.failures = 0
        self.lastFailure = None
        stream.link = self
        while self.queue and self.stream is not None:
            self.stream.send(self.queue.popleft())
            self.pool.sent += 1
            stream.stanzasOut += 1

    def _failed(self, failure):
        self.attempt = None
        if failure.check(ConnectFailed):
            condition, text = failure.value.condition, failure.value.text
            attempts = failure.value.attempts
        else:
            condition, text, attempts = "remote-server-not-found", failure.getErrorMessage(), []
            self.log.failure("unexpected error connecting to {remote}", failure, remote=self.remote)
        self.failures += 1
        self.delay = min(max(self.delay * 2, 1), self.pool.config.s2s.max_retry_delay)
        self.retryAt = self.pool.clock.seconds() + self.delay
        self.lastFailure = (condition, text, attempts)
        failed = [a for a in attempts if not a.ok]
        self.pool.metrics.failure(failed[-1].step if failed else "unknown")
        self.pool.recordFailure(self.local, self.remote, condition, text, attempts)
        self.log.warn("cannot reach {remote} for {local}: {text}; bouncing {count} stanza(s), "
                      "next attempt allowed in {delay} s", remote=self.remote, local=self.local,
                      text=text, count=len(self.queue), delay=self.delay, condition=condition,
                      attempts=[f"{a.step} {a.target}: {a.error}" for a in attempts],
                      event="outbound.failed")
        queued, self.queue = self.queue, collections.deque()
        for element in queued:
            self.pool.router.bounce(element, condition, text)

    def streamClosed(self, stream):
        if self.stream is stream:
            self.stream = None
            if self.queue:
                self._maybeConnect()

    def close(self):
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None
        if self.attempt is not None:
            self.attempt.cancel()
        if self.stream is not None:
            self.stream.closeStream(wait=1)


class OutboundPool:
    """All outbound links, and dialback verify requests (receiving role)."""

    log = Logger()

    def __init__(self, config, clock, resolver, router, keys, connectFn=connect,
                 security=None, tls=None, metrics=None):
        self.config = config
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.failures = collections.deque(maxlen=50)
        self.security = security if security is not None else SecurityPolicy(config.s2s)
        self.tls = tls
        self.clock = clock
        self.resolver = resolver
        self.router = router
        self.keys = keys
        self.connectFn = connectFn
        self.links = {}
        self.maxLinks = 1000
        self.sent = 0

    def send(self, local, remote, element):
        self._link(local, remote).send(element)

    def _link(self, local, remote):
        link = self.links.get((local, remote))
        if link is None:
            if len(self.links) >= self.maxLinks:
                self.prune()
            link = self.links[(local, remote)] = OutboundLink(self, local, remote)
        return link

    def prune(self):
        """
        Forget links with nothing going on: no stream, nothing queued, no
        attempt, and their retry delay over.  Keeps the table bounded by
        the pairs that are really in use.
        """
        now = self.clock.seconds()
        for key, link in list(self.links.items()):
            if (link.stream is None and not link.queue and link.attempt is None
                    and link._retryCall is None and link.retryAt <= now):
                del self.links[key]

    async def open(self, local, remote, mode="result", verify=None):
        """
        Connect and negotiate; return the authenticated stream (or verify
        answer).  A direct TLS target that connects but then fails (TLS
        handshake, certificate, authentication) is not the end: the
        STARTTLS targets get their turn, as XEP-0368 asks.
        """
        directTLS = self.security.tlsEnabled and self.tls is not None
        try:
            return await self._open(local, remote, mode, verify, directTLS)
        except ConnectFailed as e:
            if not (directTLS and getattr(e, "directTLS", False)):
                raise
            self.log.info("direct TLS to {remote} failed ({text}); trying STARTTLS targets",
                          remote=remote, text=e.text, event="outbound.direct_tls_fallback")
            try:
                return await self._open(local, remote, mode, verify, False)
            except ConnectFailed as second:
                second.attempts = list(e.attempts) + list(second.attempts)
                raise second

    async def _open(self, local, remote, mode, verify, directTLS):
        holder = {}

        def build():
            stream = OutboundStream(self, local, remote, mode=mode, verify=verify)
            holder["stream"] = stream
            # Keep the Deferred itself: the stream drops its reference once
            # it fires, which may happen before connectFn returns.
            holder["ready"] = stream.ready
            return stream

        factory = Factory.forProtocol(build)
        kwargs = {}
        if directTLS:
            # XEP-0368: _xmpps-server targets first, TLS from the first byte.
            kwargs["direct_tls_factory"] = lambda target: self.tls.clientCreator(
                remote, local, alpn=True)
        kwargs["attempts"] = earlier = []
        result = await self.connectFn(self.clock, self.resolver, remote, factory,
                                      timeout=self.config.s2s.outgoing.connection_timeout,
                                      **kwargs)
        stream = holder.get("stream")
        if (stream is not None and isinstance(result, tuple) and len(result) == 3
                and result[1] is not None):
            # The diagnostic log starts with how the peer was found.
            _, target, address = result
            how = "direct TLS" if target.direct_tls else "STARTTLS/plain"
            stream.trace[:0] = list(earlier) + [Attempt(
                "dns", remote, f"{remote} -> {target.host}:{target.port} ({how}) -> {address}",
                ok=True)]
        try:
            return await holder["ready"]
        except ConnectFailed as e:
            e.directTLS = bool(stream is not None and stream.directTLS)
            raise

    async def verify(self, local, remote, streamId, key):
        """
        Ask C{remote}'s authoritative server whether C{key} is right for
        the stream C{streamId} it opened to C{local}: returns the answer's
        type ("valid", "invalid" or "error:…").
        """
        return await self.open(local, remote, mode="verify", verify=(streamId, key))

    def recordFailure(self, local, remote, condition, text, attempts):
        """Keep the step-by-step log of a failed attempt for operators."""
        self.failures.append({
            "time": self.clock.seconds(), "local": local, "remote": remote,
            "condition": condition, "text": text,
            "steps": [{"step": a.step, "target": a.target, "ok": a.ok, "detail": a.error}
                      for a in attempts],
        })

    async def connectNow(self, local, remote):
        """
        Open and authenticate the stream for (local, remote) now, before any
        stanza needs it; returns the stream (or raises L{ConnectFailed}).
        """
        link = self._link(local, remote)
        if link.stream is not None and not link.stream.closing:
            return link.stream
        if link.attempt is None:
            link._start()
        d = defer.Deferred()
        link.attempt.addBoth(lambda r: (d.callback(r) if not d.called else None, r)[1])
        await d
        if link.stream is None:
            condition, text, attempts = link.lastFailure
            raise ConnectFailed(condition, text, list(attempts))
        return link.stream

    def streamClosed(self, stream):
        link = getattr(stream, "link", None)
        if link is not None:
            link.streamClosed(stream)

    def closeAll(self):
        for link in list(self.links.values()):
            link.close()
