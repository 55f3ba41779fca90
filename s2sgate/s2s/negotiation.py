# -*- test-case-name: tests.test_negotiation -*-
"""
The initiating side's negotiation engine: a stream we opened runs an
ordered list of steps (L{IStep}) once when it connects and after each
C{<stream:features/>} it receives.

Each step says whether it applies and, when run, ends with an outcome:
L{Skip} (let the next step look at the same features), L{Restart} (the
stream changed under TLS or SASL: a new header and new features follow),
L{Authenticated}, L{Finished} (a stream whose only job is done, the
dialback verify leg) or L{Failed} (with the condition and text that the
bounces carry).  Preference is the order of the list.

Once a step authenticates the pair, the I{after-authentication} steps run
on the features then in force (the new ones after a SASL restart, the same
ones after dialback), before the stream is handed out: features of the
established stream, such as stream management, negotiate there.  Such a
step may return L{Track} to give the stream a delivery tracker, which
then sees every stanza written and every element received.

This is the shape of Twisted's C{xmlstream} initializers, with the one
difference that a step may skip, so that policy (what the requirements
object demands of this peer) lives in the step that knows the feature.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from zope.interface import implementer

from s2sgate.interfaces import IDeliveryTracker, INegotiationObserver, IOutcome
from s2sgate.net.connector import Attempt, ConnectFailed
from s2sgate.s2s.streamlog import logStreamEnd
from s2sgate.timers import cancel
from s2sgate.xmpp.features import StreamFeatures
from s2sgate.xmpp.namespaces import NS_DB, NS_STREAMS
from s2sgate.xmpp.stream import XmlStream

# Elements a peer may send during negotiation before a step reads them.
MAX_WAITING_ELEMENTS = 100

# Stream errors by which a peer says it will not accept us (our certificate).
PEER_REFUSALS = ("not-authorized", "policy-violation")


# outcomes


@implementer(IOutcome)
@dataclass(frozen=True)
class Skip:
    """The step did nothing that changes the stream: try the next one."""

    def apply(self, negotiation):
        return False


@implementer(IOutcome)
@dataclass(frozen=True)
class Restart:
    """
    The step restarted the stream (L{InitiatingStream.restart}, after TLS):
    the peer's new features start the next round.
    """

    def apply(self, negotiation):
        return True


@implementer(IOutcome)
@dataclass(frozen=True)
class Authenticated:
    """
    The pair is authenticated by C{method}; with C{afterRestart} (SASL: the
    step restarted the stream) it is ready once the peer's new features arrive.
    """

    method: str
    afterRestart: bool = False

    def apply(self, negotiation):
        negotiation.authenticated(self.method, self.afterRestart)
        return True


@implementer(IOutcome)
@dataclass(frozen=True)
class Track:
    """
    An after-authentication step gave the stream a delivery tracker
    (L{IDeliveryTracker}): it counts what is written and reads the acks.
    """

    tracker: object

    def apply(self, negotiation):
        negotiation.track(self.tracker)
        return False


@implementer(IOutcome)
@dataclass(frozen=True)
class Finished:
    """The stream did what it was opened for (a dialback verify): close it."""

    def apply(self, negotiation):
        negotiation.finished()
        return True


@implementer(IOutcome)
@dataclass(frozen=True)
class Failed:
    """
    Negotiation cannot go on: C{condition} and C{text} are what each queued
    stanza's bounce carries; C{step} names the diagnostic step.
    """

    condition: str
    text: str
    step: str | None = None

    def apply(self, negotiation):
        negotiation.fail(self.condition, self.text, step=self.step)
        negotiation.closeStream()
        return True


@implementer(IDeliveryTracker)
class Untracked:
    """A stream without acks: the gateway knows what it wrote, not what arrived."""

    enabled = False
    acked = None
    unacked = None
    __slots__ = ("sent",)

    def __init__(self):
        self.sent = 0

    def stanzaSent(self, element, resent=False):
        self.sent += 1

    def elementReceived(self, element):
        return False

    def drained(self):
        return defer.succeed(None)

    def unacknowledged(self):
        return []

    def release(self):
        return []

    def streamGone(self):
        pass


class _Gone(Exception):
    """The stream ended while a step waited for the peer."""


@implementer(INegotiationObserver)
class NullObserver:
    def headerReceived(self, header):
        pass

    def featuresReceived(self, features):
        pass

    def tlsStarted(self, direct):
        pass

    def tlsEstablished(self, connection):
        pass

    def streamErrorReceived(self, condition, text):
        pass

    def streamErrorSent(self, condition, text):
        pass

    def streamEnded(self):
        pass

    def connectionLost(self, reason):
        pass


@dataclass(frozen=True)
class StreamLimits:
    """The bounds of one stream (from C{[s2s]})."""

    stanzaBytes: int = 524288
    idleTimeout: float | None = None
    negotiationTimeout: float = 60

    @classmethod
    def fromConfig(cls, s2s):
        return cls(s2s.stanza_size_limit, s2s.idle_timeout, s2s.negotiation_timeout)


@implementer(IHandshakeListener)
class InitiatingStream(XmlStream):
    """
    A stream we opened from C{local} to C{remote}, negotiated by C{steps}.

    C{ready} fires with the stream once a step authenticates it or finishes
    its job, or fails with L{ConnectFailed}.  Everything the steps learn
    (TLS, certificate, stream id) is kept here: one stream, one place.

    @param steps: L{IStep}s, fresh for this stream, in order of preference.
    @param afterAuth: L{IStep}s run once the pair is authenticated.
    @param requirements: what policy demands (L{s2sgate.auth.requirements}).
    @param tls: the L{TLSContexts}, or None without TLS.
    """

    direction = "out"
    extraNamespaces = (("db", NS_DB),)

    def __init__(self, clock, local, remote, steps, *, requirements, tls=None,
                 limits=StreamLimits(), observer=None, batch=None, metrics=None, afterAuth=()):
        XmlStream.__init__(self, clock, maxStanzaBytes=limits.stanzaBytes,
                           idleTimeout=limits.idleTimeout, batch=batch, metrics=metrics)
        self.local = local
        self.remote = remote
        self.steps = list(steps)
        self.afterAuth = list(afterAuth)
        self.delivery = Untracked()
        self.requirements = requirements
        self.tls = tls
        self.limits = limits
        self.observer = observer if observer is not None else NullObserver()
        self.streamId = None
        self.peerHeader = None
        self.peerError = None    # (condition, text) of a stream error the peer sent
        self.authMethod = None
        self.secure = False
        self.directTLS = False
        self.tlsInfo = {}
        self.certificate = None
        self.dane = None         # the target's authenticated TLSASet (useDANE)
        self.since = clock.seconds()
        self.stanzasIn = 0
        self.stanzasOut = 0
        self.bidi = False        # we asked for a bidirectional stream (XEP-0288)
        # The peer spoke of dialback during negotiation (offered it, or is
        # pre-1.0): a later <db:result/> for another pair is not foreign to it.
        self.dialbackOffered = False
        self.peerAddress = None
        self.ready = defer.Deferred()
        self.trace = []          # Attempt per step, for the diagnostic log
        self._authenticatedBy = None
        self._awaitingRestart = False
        self._currentStep = "stream"
        self._features = collections.deque()
        self._elements = collections.deque()
        self._waiting = None     # (deferred, wantsFeatures)
        self._handshakes = []
        self._handshakeDone = False
        self._negotiationCall = None

    @property
    def pairs(self):
        return {(self.local, self.remote)} if self.authMethod else set()

    def describe(self):
        return f"outbound {self.local} -> {self.remote}"

    def useDANE(self, tlsa):
        """
        The connection was found through DNSSEC-authenticated SRV and TLSA
        answers: judge the certificate by C{tlsa} (RFC 7673). Called by
        L{dial} when the connection is made, before the peer's handshake.
        """
        self.dane = tlsa

    def record(self, step, detail, ok=True):
        """Add a line to the diagnostic log of this attempt."""
        self.trace.append(Attempt(step, self.remote, detail, ok=ok))

    # connection

    def connectionMade(self):
        XmlStream.connectionMade(self)
        if ISSLTransport.providedBy(self.transport):
            self.secure = self.directTLS = True
            self.observer.tlsStarted(direct=True)
        try:
            peer = self.transport.getPeer()
            self.peerAddress = f"{peer.host}:{peer.port}"
        except Exception:
            self.peerAddress = None
        self.record("connect", f"connected to {self.peerAddress}"
                    + (" (direct TLS)" if self.directTLS else ""))
        self._negotiationCall = self.clock.callLater(self.limits.negotiationTimeout,
                                                     self._negotiationTimedOut)
        self._sendHeader()
        defer.ensureDeferred(self._negotiate())

    def _sendHeader(self):
        self.sendHeader(self.errorHeaderAttrs())

    def errorHeaderAttrs(self):
        """Our header, the same whether it opens the stream or carries an error."""
        return {"from": self.local, "to": self.remote, "version": "1.0"}

    def handshakeCompleted(self):
        self.secure = True
        conn = self.transport.getHandle()
        if self.tls is not None:
            self.tlsInfo = self.tls.describe(conn)
            self.certificate = self.tls.peerVerdict(conn, self.remote, dane=self.dane)
        self.observer.tlsEstablished(conn)
        self._handshakeDone = True
        waiting, self._handshakes = self._handshakes, []
        for d in waiting:
            d.callback(None)

    # what steps use

    def handshake(self):
        """A Deferred that fires once the TLS handshake completed."""
        if self._handshakeDone:
            return defer.succeed(None)
        d = defer.Deferred()
        self._handshakes.append(d)
        return d

    async def expect(self, match):
        """The next element C{match(element)} accepts; others are ignored."""
        while True:
            element = await self._next(wantsFeatures=False)
            if match(element):
                return element
            self.log.debug("{stream}: ignored <{name}/> during {step}", stream=self.describe(),
                           name=element.name, step=self._currentStep)

    def startTLS(self, creator):
        """Switch the connection to TLS (after C{<proceed/>}) and restart the stream."""
        self.flushPending()   # what is queued must go out in plaintext
        self.transport.startTLS(creator)
        self.observer.tlsStarted(direct=False)
        self.secure = True

    def requestBidi(self, element):
        """
        Ask for a bidirectional stream (XEP-0288): once authenticated, the
        peer may send us its stanzas on it too.
        """
        self.bidi = True
        self.send(element)

    def restart(self):
        """A new stream: reset the parser and send a new header (RFC 6120 4.3.3)."""
        self._elements.clear()
        self.parser.reset()
        self._sendHeader()

    def authenticated(self, method, afterRestart=False):
        """A step authenticated the pair (SASL: once the restarted stream's features come)."""
        self._authenticatedBy = method
        self._awaitingRestart = afterRestart

    def track(self, tracker):
        """The established stream's L{IDeliveryTracker} (from an after-auth step)."""
        self.delivery = tracker

    def established(self, method):
        self.record("auth", f"authenticated with {method}")
        self.authMethod = method
        self._cancelNegotiationTimer()
        self.log.info("outbound stream {local} -> {remote} authenticated ({method}; {security})",
                      local=self.local, remote=self.remote, method=method,
                      security=self.securitySummary(), stream=self.streamId,
                      direction="outbound", event="outbound.established")
        self._fire()

    def finished(self):
        self._cancelNegotiationTimer()
        self._fire()
        self.closeStream()

    def fail(self, condition, text, step=None):
        if self.ready is None:
            return
        if not self.trace or self.trace[-1].ok:
            self.record(step or self._currentStep, text, ok=False)
        d, self.ready = self.ready, None
        d.errback(ConnectFailed(condition, text, list(self.trace)))

    def _fire(self):
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
            if self.certificate.dane is not None:
                parts.append(f"(DANE {self.certificate.dane})")
        return " ".join(p for p in parts if p)

    # the engine

    async def _negotiate(self):
        try:
            await self._rounds()
        except _Gone:
            pass
        except Exception:
            self.log.failure("negotiation with {remote} failed", remote=self.remote)
            self.fail("remote-server-not-found", f"internal error negotiating with {self.remote}")
            self.closeStream()

    async def _rounds(self):
        features = None   # the first round: connected, nothing received yet
        while self.ready is not None and not self.closing:
            if self._authenticatedBy is not None and not self._awaitingRestart:
                await self._afterAuthentication(features)
                return
            await self._round(features)
            if self.ready is None or self.closing:
                return
            if self._authenticatedBy is not None and not self._awaitingRestart:
                continue   # authenticated on these features (dialback)
            features = await self._next(wantsFeatures=True)
            self._awaitingRestart = False

    async def _runStep(self, step, features):
        """
        Run one step and apply its outcome (under the step's name, for the
        trace): the outcome's answer, or None when the stream ended meanwhile.
        """
        self._currentStep = step.name
        try:
            outcome = await step.run(self, features)
            if self.closing or self.ready is None:
                return None
            ended = outcome.apply(self)
            return None if self.closing or self.ready is None else ended
        finally:
            self._currentStep = "stream"

    async def _afterAuthentication(self, features):
        for step in self.afterAuth:
            if step.applies(self, features) and await self._runStep(step, features) is None:
                return
        self.established(self._authenticatedBy)

    async def _round(self, features):
        for step in self.steps:
            if not step.applies(self, features):
                continue
            if await self._runStep(step, features) is not False:
                return   # the round is over (or the stream is)
        if features is not None:
            self.fail("remote-server-not-found",
                      f"no way to authenticate to {self.remote} was left to try")
            self.closeStream()

    def _next(self, wantsFeatures):
        queue = self._features if wantsFeatures else self._elements
        if queue:
            return defer.succeed(queue.popleft())
        if self.closed or self.closing:
            return defer.fail(_Gone())
        d = defer.Deferred()
        self._waiting = (d, wantsFeatures)
        return d

    def _deliver(self, item, isFeatures):
        waiting = self._waiting
        if waiting is not None and waiting[1] == isFeatures:
            self._waiting = None
            waiting[0].callback(item)
            return
        queue = self._features if isFeatures else self._elements
        if len(queue) >= MAX_WAITING_ELEMENTS:
            self.fail("remote-server-not-found", f"{self.remote} flooded the negotiation")
            self.streamError("policy-violation", "too many elements during negotiation")
            return
        queue.append(item)

    # XmlStream events

    def streamStarted(self, header):
        if self.closing:
            return   # our closing tag is out (e.g. a refused certificate): say nothing more
        self.streamId = header.getAttribute("id")
        self.peerHeader = header
        self.observer.headerReceived(header)
        if not self.streamId:
            self.fail("remote-server-not-found", "the remote server sent no stream id")
            self.streamError("invalid-xml", "a stream header needs an id")
            return
        if header.getAttribute("version", "0.0") < "1.0":
            # Pre-1.0 servers send no features: the steps run on none.
            features = StreamFeatures.none()
            self.dialbackOffered = True
            self.observer.featuresReceived(features)
            self._deliver(features, True)

    def elementReceived(self, element):
        if self.closing:
            return   # nothing may answer a peer we are leaving (no key to a refused server)
        if self.authMethod is not None:
            if not self.delivery.elementReceived(element):
                self.authenticatedElement(element)
            return
        if (element.uri, element.name) == (NS_STREAMS, "features"):
            features = StreamFeatures.parse(element)
            self.dialbackOffered = self.dialbackOffered or features.dialback
            self.observer.featuresReceived(features)
            self._deliver(features, True)
            return
        self._deliver(element, False)

    def authenticatedElement(self, element):
        """For subclasses: an element the peer sent once the stream is established."""
        self.log.debug("{stream}: ignored <{name}/> on the established stream",
                       stream=self.describe(), name=element.name)

    def _negotiationTimedOut(self):
        self._negotiationCall = None
        self.fail("remote-server-timeout",
                  f"{self.remote} did not complete stream negotiation in time")
        self.streamError("connection-timeout", "negotiation took too long")

    def _cancelNegotiationTimer(self):
        cancel(self._negotiationCall)
        self._negotiationCall = None

    def streamErrorReceived(self, condition, text):
        XmlStream.streamErrorReceived(self, condition, text)
        self.peerError = (condition, text)
        self.observer.streamErrorReceived(condition, text)
        self.fail("remote-server-not-found",
                  f"{self.remote} closed the stream: {condition}" + (f" ({text})" if text else ""))

    def streamErrorSent(self, condition, text):
        self.observer.streamErrorSent(condition, text)

    def streamEnded(self):
        self.observer.streamEnded()
        XmlStream.streamEnded(self)

    def streamClosed(self, reason):
        self.observer.connectionLost(reason)
        self._cancelNegotiationTimer()
        self.fail("remote-server-not-found",
                  f"{self.remote} closed the connection during negotiation")
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting[0].errback(_Gone())
        handshakes, self._handshakes = self._handshakes, []
        for d in handshakes:
            d.errback(_Gone())
        self.delivery.streamGone()
        self.streamGone()

    def streamGone(self):
        """
        For subclasses: the connection is gone.  Here: the end line; a
        subclass that knows the fate of unacknowledged stanzas logs it
        itself, with that fate (L{logEnd}).
        """
        self.logEnd()

    def logEnd(self, fate=None, **delivery):
        """The end line of an authenticated stream (L{logStreamEnd}); none otherwise."""
        if self.authMethod:
            logStreamEnd(self, remote=self.remote, pairs=sorted(self.pairs), stanzasIn=0,
                         stanzasOut=self.stanzasOut, security=self.securitySummary(),
                         now=self.clock.seconds(), fate=fate, **delivery)
