# -*- test-case-name: tests.test_outbound -*-
"""
Outbound s2s: an authenticated stream for each (local domain, remote domain).

L{OutboundLink} owns the queue and the retry state of one pair; the stream
itself is an L{InitiatingStream} negotiated by the runtime's steps and found
through the session table once authenticated.  A pair whose peer already
has a stream from another local domain of ours first asks to join it
(L{s2sgate.s2s.multiplex}): one connection then carries both.  Failures carry the condition
and text for the bounces (L{ConnectFailed}).
"""

import collections

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from s2sgate.interfaces import IOutbound
from s2sgate.net.connector import ConnectFailed
from s2sgate.ops.metrics import NullMetrics
from s2sgate.s2s.addressing import checkedPair
from s2sgate.s2s.dial import dial
from s2sgate.s2s.failures import FailureLog
from s2sgate.s2s.multiplex import ExtraPairs, Multiplexer, PeerMemory
from s2sgate.s2s.negotiation import InitiatingStream
from s2sgate.timers import cancel
from s2sgate.xmpp.domain import InvalidDomain, domainOf
from s2sgate.xmpp.namespaces import NS_SERVER
from s2sgate.xmpp.stanzas import STANZA_NAMES

# Seconds an idle stream waits for the acks of what it sent before closing.
IDLE_ACK_WAIT = 5


class OutboundStream(InitiatingStream):
    """
    An outbound stream that carries stanzas for one pair once authenticated;
    bidirectional (XEP-0288), it carries the peer's stanzas to us as well,
    routed from their bytes (L{RawStanza}) like an inbound stream's.

    Further local domains may join it once established (L{ExtraPairs},
    XEP-0220 multiplexing): it then carries their stanzas too.

    @param deliver: C{deliver(stanza)} for the peer's checked stanzas (the
        router's C{fromRemote}).
    @param isLocal: whether a domain is one of ours.
    @param extraPairs: the L{ExtraPairs} of this stream.
    """

    stanzaNames = frozenset((NS_SERVER, name) for name in STANZA_NAMES)

    def __init__(self, clock, local, remote, steps, *, onClosed, deliver, isLocal, extraPairs,
                 **kwargs):
        InitiatingStream.__init__(self, clock, local, remote, steps, **kwargs)
        self._onClosed = onClosed
        self._fromPeer = deliver
        self._isLocal = isLocal
        self.extraPairs = extraPairs

    @property
    def peer(self):
        return self.remote

    @property
    def pairs(self):
        if self.authMethod is None:
            return set()
        return {(self.local, self.remote)} | self.extraPairs.pairs

    @property
    def reversePairs(self):
        """The (remote, local) pairs whose stanzas may come to us on this stream."""
        return {(remote, local) for local, remote in self.pairs} if self.bidi else set()

    def sendStanza(self, stanza, resent=False):
        """Write a stanza and let the delivery tracker keep it until acknowledged."""
        self.stanzasOut += 1
        InitiatingStream.sendStanza(self, stanza)
        self.delivery.stanzaSent(stanza, resent)

    def stanzaReceived(self, stanza):
        # Before authentication a stanza is the negotiation's business (as a DOM).
        if self.authMethod is None:
            InitiatingStream.stanzaReceived(self, stanza)
            return
        if self.closing:
            return
        if not self.bidi:
            self.streamError("unsupported-stanza-type",
                             "this stream is not bidirectional (XEP-0288): "
                             "send your stanzas on a stream of your own")
            return
        if checkedPair(self, stanza, self.reversePairs, self._isLocal) is None:
            return
        self.stanzasIn += 1
        self._fromPeer(stanza)

    def authenticatedElement(self, element):
        # The peer's answers to our <db:result/> for further pairs.
        if not self.extraPairs.answered(self, element):
            InitiatingStream.authenticatedElement(self, element)

    def idleTimedOut(self):
        # Ask for the acks of what is still out before the closing tag:
        # a stanza unacknowledged at close would have to be re-sent.
        d = self.delivery.drained()
        d.addTimeout(IDLE_ACK_WAIT, self.clock)
        d.addBoth(lambda _: self.closeStream())

    def streamGone(self):
        self.extraPairs.streamGone(self)
        self._onClosed(self)


class OutboundLink:
    """Queue, connection attempt and backoff of one (local, remote) pair."""

    log = Logger()

    def __init__(self, pool, local, remote):
        self.pool = pool
        self.local = local
        self.remote = remote
        self.queue = collections.deque()
        self.resend = collections.deque()   # unacknowledged on a lost stream: once more
        self.attempt = None
        self.delay = 0
        self.retryAt = 0
        self._retryCall = None
        self.lastFailure = None
        self.failures = 0
        self.closed = False    # the gateway is stopping: no new connection

    @property
    def stream(self):
        """The authenticated stream of this pair, from the session table."""
        return self.pool.sessions.outgoing(self.local, self.remote)

    def idle(self, now):
        return (self.stream is None and not self.queue and not self.resend
                and self.attempt is None
                and self._retryCall is None and self.retryAt <= now)

    def send(self, element):
        stream = self.stream
        if stream is not None:
            self._write(stream, element)
            return
        if self.closed:
            self.pool.bounce(element, "remote-server-timeout", "the gateway is shutting down")
            return
        if len(self.queue) >= self.pool.limits.queueLimit:
            self.pool.bounce(element, "resource-constraint",
                             f"too many stanzas waiting for {self.remote}")
            return
        self.queue.append(element)
        self._maybeConnect()

    def _maybeConnect(self):
        if self.attempt is not None or self._retryCall is not None or self.closed:
            return
        wait = self.retryAt - self.pool.clock.seconds()
        if wait > 0:
            # A failure happened recently: try again once the delay has
            # passed, rather than bouncing everything meanwhile.
            self._retryCall = self.pool.clock.callLater(wait, self._retry)
            return
        self.start()

    def _write(self, stream, element, resent=False):
        stream.sendStanza(element, resent)
        self.pool.sent += 1

    def _retry(self):
        self._retryCall = None
        if (self.queue or self.resend) and self.stream is None and self.attempt is None:
            self.start()

    def start(self):
        self.attempt = defer.ensureDeferred(self.pool.open(self.local, self.remote))
        self.attempt.addCallbacks(self._established, self._failed)
        return self.attempt

    def _established(self, stream):
        self.attempt = None
        self.delay = 0
        self.retryAt = 0
        self.failures = 0
        self.lastFailure = None
        if self.resend:
            self.log.info("re-sending {count} stanza(s) to {remote} that the lost stream never "
                          "acknowledged", count=len(self.resend), remote=self.remote,
                          local=self.local, event="outbound.resent")
        while self.resend and not stream.closing and not stream.closed:
            self._write(stream, self.resend.popleft(), resent=True)
        while self.queue and not stream.closing and not stream.closed:
            self._write(stream, self.queue.popleft())
        return stream

    def _failed(self, failure):
        self.attempt = None
        if failure.check(defer.CancelledError):
            return None   # closed (the gateway is stopping): close() counted the queue
        if failure.check(ConnectFailed):
            condition, text = failure.value.condition, failure.value.text
            attempts = failure.value.attempts
        else:
            condition, text, attempts = "remote-server-not-found", failure.getErrorMessage(), []
            self.log.failure("unexpected error connecting to {remote}", failure, remote=self.remote)
        self.failures += 1
        self.delay = min(max(self.delay * 2, 1), self.pool.limits.maxRetryDelay)
        self.retryAt = self.pool.clock.seconds() + self.delay
        self.lastFailure = (condition, text, attempts)
        failed = [a for a in attempts if not a.ok]
        self.pool.metrics.failure(failed[-1].step if failed else "unknown")
        self.pool.recordFailure(self.local, self.remote, condition, text, attempts)
        self.log.warn("cannot reach {remote} for {local}: {text}; bouncing {count} stanza(s), "
                      "next attempt allowed in {delay} s", remote=self.remote, local=self.local,
                      text=text, count=len(self.queue) + len(self.resend), delay=self.delay,
                      condition=condition,
                      attempts=[f"{a.step} {a.target}: {a.error}" for a in attempts],
                      event="outbound.failed")
        queued = list(self.resend) + list(self.queue)
        self.resend, self.queue = collections.deque(), collections.deque()
        for element in queued:
            self.pool.bounce(element, condition, text)

    def streamClosed(self, stream, unacknowledged):
        """
        The pair's stream is gone: what it never acknowledged of this pair's
        (C{unacknowledged}) is re-sent once on the next stream or bounced
        (C{on_loss}); returns C{(resent, bounced)}.
        """
        resent = bounced = 0
        resend = self.pool.limits.onLoss == "resend" and not self.closed
        for element, wasResent in unacknowledged:
            if resend and not wasResent:
                self.resend.append(element)
                resent += 1
            else:
                again = " again" if wasResent else ""
                self.pool.bounce(element, "remote-server-timeout",
                                 f"the stream to {self.remote} was lost{again} before {self.remote} "
                                 "acknowledged this stanza; it may or may not have arrived")
                bounced += 1
        if self.queue or self.resend:
            self._maybeConnect()
        return resent, bounced

    def waiting(self):
        """Stanzas waiting for a stream, or a connection attempt under way."""
        return bool(self.queue) or bool(self.resend) or self.attempt is not None

    def busy(self):
        """Waiting, or stanzas written that the peer has not acknowledged yet."""
        stream = self.stream
        return self.waiting() or bool(stream is not None and stream.delivery.unacked)

    def bounceLeft(self, text):
        """
        Stop connecting; bounce what waits for a stream and what the stream
        has not had acknowledged (C{text}); returns how many.
        """
        cancel(self._retryCall)
        self._retryCall = None
        left = list(self.resend) + list(self.queue)
        self.resend.clear()
        self.queue.clear()
        if self.attempt is not None:
            self.attempt.cancel()
        for element in left:
            self.pool.bounce(element, "remote-server-timeout", text)
        stream = self.stream
        unacked = stream.delivery.release() if stream is not None else []
        for element, _ in unacked:
            self.pool.bounce(element, "remote-server-timeout",
                             f"{text}; {self.remote} had not acknowledged this stanza: it may "
                             "or may not have arrived")
        return len(left) + len(unacked)

    def close(self, wait=1, stopping=False):
        """
        Close the stream; returns how many queued stanzas could not be sent.
        C{stopping}: the gateway is, so nothing connects for this pair again.
        """
        self.closed = stopping
        cancel(self._retryCall)
        self._retryCall = None
        dropped = len(self.queue) + len(self.resend)
        self.queue, self.resend = collections.deque(), collections.deque()
        if self.attempt is not None:
            self.attempt.cancel()
        stream = self.stream
        if stream is not None:
            stream.closeStream(wait=wait)
        return dropped


class OutboundLimits:
    """The pool's bounds, read from the runtime at each use (reload applies at once)."""

    def __init__(self, current):
        self.current = current

    @property
    def queueLimit(self):
        return self.current.runtime.config.s2s.queue_limit

    @property
    def maxRetryDelay(self):
        return self.current.runtime.config.s2s.max_retry_delay

    @property
    def onLoss(self):
        return self.current.runtime.config.s2s.stream_management.on_loss


@implementer(IOutbound)
class OutboundPool:
    """
    All outbound links.

    @param current: the L{Current} runtime.
    @param connector: an L{IConnector}.
    @param sessions: the L{SessionTable}.
    @param bounce: C{bounce(element, condition, text)} for what cannot be sent.
    @param deliver: C{deliver(stanza)} for what a peer sends us on a bidi
        stream we opened.
    """

    log = Logger()
    maxLinks = 1000

    def __init__(self, clock, current, connector, sessions, bounce, deliver, *, batch=None,
                 metrics=None, failures=None):
        self.clock = clock
        self.current = current
        self.connector = connector
        self.sessions = sessions
        self.bounce = bounce
        self.deliver = deliver
        self.batch = batch
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.limits = OutboundLimits(current)
        self.failures = failures if failures is not None else FailureLog(clock)
        self.multiplexer = Multiplexer(sessions, current, PeerMemory(clock), self.failures,
                                       self.metrics)
        self.links = {}
        self.sent = 0

    def send(self, local, remote, element):
        self.link(local, remote).send(element)

    def link(self, local, remote):
        link = self.links.get((local, remote))
        if link is None:
            if len(self.links) >= self.maxLinks:
                self.prune()
            link = self.links[(local, remote)] = OutboundLink(self, local, remote)
        return link

    def queued(self, local, remote):
        link = self.links.get((local, remote))
        return len(link.queue) + len(link.resend) if link is not None else 0

    def prune(self):
        """
        Forget links with nothing going on: no stream, nothing queued, no
        attempt, and their retry delay over.  Keeps the table bounded by
        the pairs that are really in use.
        """
        now = self.clock.seconds()
        for key, link in list(self.links.items()):
            if link.idle(now):
                del self.links[key]

    def newStream(self, local, remote, runtime):
        return OutboundStream(self.clock, local, remote, runtime.stepsForStream(),
                              onClosed=self._streamClosed, deliver=self.deliver,
                              isLocal=runtime.isLocal, requirements=runtime.requirements,
                              afterAuth=runtime.afterAuthStepsForStream(),
                              tls=runtime.tls, limits=runtime.limits, batch=self.batch,
                              metrics=self.metrics,
                              extraPairs=ExtraPairs(self.clock, runtime.keys))

    async def open(self, local, remote):
        """
        Return the authenticated stream for the pair (in the session table):
        an established stream to the same peer when the peer takes the pair
        on it (L{Multiplexer}), a new one otherwise.
        """
        stream = await self.multiplexer.join(local, remote)
        if stream is None:
            self.log.info("connecting {local} -> {remote}", local=local, remote=remote,
                          event="outbound.connecting")
            self.metrics.attempt()
            runtime = self.current.runtime
            stream = await dial(self.connector, local, remote,
                                lambda: self.newStream(local, remote, runtime), runtime)
        self.sessions.authenticated(stream, local, remote)
        return stream

    def recordFailure(self, local, remote, condition, text, attempts):
        """Keep the step-by-step log of a failed attempt for operators."""
        self.failures.record(local, remote, condition, text, attempts)

    async def connectNow(self, local, remote):
        """
        Open and authenticate the stream for (local, remote) now, before any
        stanza needs it; returns the stream (or raises L{ConnectFailed}).
        """
        link = self.link(local, remote)
        stream = link.stream
        if stream is not None:
            return stream
        attempt = link.attempt if link.attempt is not None else link.start()
        d = defer.Deferred()
        attempt.addBoth(lambda r: (d.callback(r) if not d.called else None, r)[1])
        await d
        stream = link.stream
        if stream is None:
            if link.lastFailure is None:
                raise ConnectFailed("remote-server-timeout", "the gateway is stopping", [])
            condition, text, attempts = link.lastFailure
            raise ConnectFailed(condition, text, list(attempts))
        return stream

    def _streamClosed(self, stream):
        """
        A stream is gone: each pair it carried has its link told, with the
        unacknowledged stanzas that were its own; then the end line.  A peer
        that answered our closing tag has handled everything before it:
        nothing is re-sent then.
        """
        self.sessions.untrack(stream)
        if stream.authMethod is None:
            stream.logEnd()
            link = self.links.get((stream.local, stream.remote))
            if link is not None and (link.queue or link.resend):
                link._maybeConnect()
            return
        handled = (stream.endClean and stream.endAnswered
                   and stream.endReason != "closed by the peer")
        shares = collections.defaultdict(list)
        for item in ([] if handled else stream.delivery.unacknowledged()):
            shares[self._pairOf(stream, item[0])].append(item)
        resent = bounced = 0
        for pair in sorted(stream.pairs | set(shares)):
            link = self.links.get(pair)
            if link is None:
                link = self.link(*pair)
            r, b = link.streamClosed(stream, shares.get(pair, []))
            resent, bounced = resent + r, bounced + b
        self.streamEnded(stream, resent, bounced, handled)

    @staticmethod
    def _pairOf(stream, element):
        """The pair a stanza written on C{stream} belongs to (the router chose it by its from)."""
        try:
            pair = (domainOf(element.getAttribute("from") or ""), stream.remote)
        except InvalidDomain:
            pair = None
        return pair if pair in stream.pairs else (stream.local, stream.remote)

    def streamEnded(self, stream, resent, bounced, handled=False):
        """
        An authenticated stream is gone: its end line says what became of
        what it never acknowledged; one that did not end cleanly is also a
        metric and an entry in the failures view.
        """
        d = stream.delivery
        if d.enabled:
            fate = f"{d.sent} sent, {d.acked} acknowledged, {d.unacked} unacknowledged"
            if handled and d.unacked:
                fate += ": handled, the peer answered our closing tag"
            elif resent or bounced:
                fate += f": {resent} to be re-sent, {bounced} bounced"
        elif not stream.endClean:
            fate = (f"{d.sent} sent without stream management: the gateway cannot know which "
                    "of them arrived")
        else:
            fate = None
        stream.logEnd(fate=fate, sm=d.enabled, sent=d.sent, acked=d.acked, unacked=d.unacked,
                      resent=resent, bounced=bounced)
        if stream.endClean:
            return
        how = stream.endReason or "connection dropped without a closing tag"
        age = self.clock.seconds() - stream.since
        self.metrics.streamLost("out", resent=resent, bounced=bounced,
                                unknown=0 if d.enabled else d.sent)
        self.failures.record(stream.local, stream.remote, "stream-lost",
                             f"stream lost after {age:.1f} s ({how}); {fate}", (),
                             kind="stream lost")

    def busy(self):
        """Whether any pair has stanzas waiting, an attempt under way or acks due."""
        return any(link.busy() for link in self.links.values())

    def bounceLeft(self, text="the gateway is shutting down"):
        """Shutdown: bounce what waits for a stream or an ack (C{text}); returns how many."""
        return sum(link.bounceLeft(text) for link in list(self.links.values()))

    def deliveryCounts(self):
        """C{(acknowledged, written without acks)} over the open streams."""
        # A stream that carries several pairs is counted once.
        streams = {link.stream for link in self.links.values() if link.stream is not None}
        return (sum(s.delivery.acked or 0 for s in streams),
                sum(s.delivery.sent for s in streams if not s.delivery.enabled))

    def closeAll(self, wait=1, stopping=False):
        """
        Close every outbound stream (C{stopping}: for good, the gateway is
        stopping).  Stanzas still waiting for a connection can be neither sent
        nor bounced (the component link is closed by then): each pair's count
        is logged; returns the total.
        """
        total = 0
        for link in list(self.links.values()):
            dropped = link.close(wait, stopping)
            if dropped:
                self.log.warn("stopping: {count} stanza(s) for {remote} from {local} were still "
                              "waiting for a connection and are lost", count=dropped,
                              remote=link.remote, local=link.local, event="shutdown.lost")
            total += dropped
        return total
