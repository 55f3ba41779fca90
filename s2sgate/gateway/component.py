# -*- test-case-name: tests.test_component -*-
"""
The XEP-0114 link to the c2s server.

The gateway is a client of the c2s server's component port.  The link
keeps itself up: after a link that was up is lost it retries quickly
(the c2s server is usually restarting), then network failures reconnect
with capped exponential backoff and jitter; a rejected secret or component name is a configuration
problem, reported clearly and retried slowly.  Stanzas for the c2s server
wait in a bounded buffer while the link is down (bounded in stanzas and in
bytes); what overflows or waits too long is bounced to its (remote) sender,
never dropped silently.

XEP-0114 has no acks: a stanza written just before the c2s server goes
away (Prosody on SIGTERM closes its clients, then drops the component
connection unread) would be lost.  So after each burst the link sends a
probe, an XEP-0199 ping to one of the c2s server's own domains: the c2s
server handles what we write in order, so its answer (a result, or an
error where pings are not served) confirms everything written before it.
What a lost link never confirmed is written again, once, on the next link.
(A probe to our own JID would do without ping support, but Prosody drops
it.)

The link is never dropped because the c2s server reads slowly: stanzas it
has not taken yet wait on the stream (L{ComponentStream.held}), and past
C{high_water} bytes the gateway stops reading from the inbound s2s streams
that feed it, until the backlog is below C{low_water}.  The remote servers
then see TCP back-pressure instead of their stanzas being lost.
"""

import collections
import hashlib
import random
from xml.sax.saxutils import quoteattr

from twisted.application import service
from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from s2sgate.interfaces import IComponentLink
from s2sgate.ops.metrics import NullMetrics
from s2sgate.timers import cancel
from s2sgate.xmpp.stanzas import STANZA_NAMES, shouldBounce
from s2sgate.xmpp.stream import NS_COMPONENT, XmlStream

# Seconds the c2s server has to answer our header and handshake.
HANDSHAKE_TIMEOUT = 30

# Probes (our iq to our own JID) in flight, and stanzas kept until one
# returns: past these, the oldest are taken as delivered.
PROBE_PREFIX = "s2sgate-probe-"
UNCONFIRMED_LIMIT = 1000
NS_PING = "urn:xmpp:ping"

# Stream errors by which a c2s server refuses our credentials.
AUTH_CONDITIONS = frozenset(("not-authorized", "host-unknown", "conflict", "improper-addressing",
                             "invalid-from", "host-gone"))


def handshakeDigest(streamId, secret):
    """XEP-0114 §3: hex SHA-1 of the stream id followed by the secret."""
    return hashlib.sha1((streamId + secret).encode("utf-8")).hexdigest()


class ComponentStream(XmlStream):
    """One connection of the component link; the state lives here."""

    namespace = NS_COMPONENT
    # Stanzas are routed from their bytes (RawStanza); only the handshake is parsed.
    stanzaNames = frozenset((NS_COMPONENT, name) for name in STANZA_NAMES)

    def __init__(self, link, clock):
        cfg = link.config
        XmlStream.__init__(self, clock, maxStanzaBytes=link.maxStanzaBytes,
                           keepalive=cfg.keepalive, batch=link.batch)
        self.link = link
        self.state = "connecting"
        self.failure = None
        self._handshakeCall = None
        # What the transport would not take yet: (RawStanza or None, bytes).
        self.held = collections.deque()
        self.heldBytes = 0
        self.writable = True
        # Written, not yet confirmed by a returning probe: (element, resent).
        self.unconfirmed = collections.deque()
        self._probes = {}           # probe id -> stanzas written before it
        self._probeSeq = 0
        self._written = 0           # stanzas written on this connection
        self._probeCall = None

    # Back-pressure instead of XmlStream's "peer stopped reading" rule: the
    # c2s server is slow, not gone, and dropping the link would lose every
    # stanza in its buffer.

    def _mustHold(self):
        return self.state == "ready" and not self.closing and not (self.writable and not self.held)

    def send(self, data):
        if not self._mustHold():
            return XmlStream.send(self, data)
        return self._holdBytes(None, self.serialize(data))

    def sendStanza(self, stanza, resent=False):
        """A L{RawStanza} for the c2s server, kept until a probe confirms it."""
        if not self._mustHold():
            written = XmlStream.sendStanza(self, stanza)
            if written and self.state == "ready" and not self.closing:
                self._wrote(stanza, resent)
            return written
        return self._holdBytes((stanza, resent), self.stanzaBytes(stanza))

    def _holdBytes(self, entry, data):
        if self.closed or self.transport is None:
            return False
        self.bytesOut += len(data)
        self.held.append((entry, data))
        self.heldBytes += len(data)
        self.link._pressure(self)
        return True

    def pauseProducing(self):
        self.writable = False

    def resumeProducing(self):
        self.writable = True
        # The transport's buffer is empty: refill it until it says stop.
        # Not after our closing tag: the link's stop bounces what is left.
        while self.held and self.writable and not self.closed and not self.closing:
            entry, data = self.held.popleft()
            self.heldBytes -= len(data)
            self.transport.write(data)
            if entry is not None:
                self._wrote(*entry)
        self.link._pressure(self)

    def _wrote(self, element, resent):
        if self.link.probeTo is None:
            return
        self.unconfirmed.append((element, resent))
        self._written += 1
        if len(self.unconfirmed) > UNCONFIRMED_LIMIT:
            self.unconfirmed.popleft()
        if self._probeCall is None:
            self._probeCall = self.clock.callLater(0, self._probe)

    def _probe(self):
        # End of the burst: one probe covers everything written so far.
        self._probeCall = None
        if self.closed or self.closing or self.state != "ready":
            return
        self._probeSeq += 1
        probeId = f"{PROBE_PREFIX}{self._probeSeq}"
        self._probes[probeId] = self._written
        self.send(f"<iq type='get' id='{probeId}' from={quoteattr(self.link.config.jid)} "
                  f"to={quoteattr(self.link.probeTo)}><ping xmlns='{NS_PING}'/></iq>")

    def _probeReturned(self, probeId):
        """Our probe came back: what was written before it reached the c2s server."""
        covered = self._probes.pop(probeId, None)
        if covered is None:
            return
        for stale in [i for i, n in self._probes.items() if n <= covered]:
            del self._probes[stale]
        confirmed = len(self.unconfirmed) - (self._written - covered)
        for _ in range(max(confirmed, 0)):
            self.unconfirmed.popleft()

    def takeUnconfirmed(self):
        """C{(element, resent)} written but never confirmed (the link is going down)."""
        cancel(self._probeCall)
        self._probeCall = None
        unconfirmed, self.unconfirmed = list(self.unconfirmed), collections.deque()
        return unconfirmed

    def takeHeld(self):
        """C{(element, resent)} never written (the link is going down), in order."""
        held, self.held, self.heldBytes = self.held, collections.deque(), 0
        return [entry for entry, _ in held if entry is not None]

    @property
    def backlog(self):
        """Bytes waiting for the c2s server beyond the transport's own buffer."""
        return self.heldBytes

    def describe(self):
        return f"component {self.link.config.jid}"

    def connectionMade(self):
        XmlStream.connectionMade(self)
        self.state = "header"
        self._handshakeCall = self.clock.callLater(HANDSHAKE_TIMEOUT, self._handshakeTimedOut)
        self.sendHeader({"to": self.link.config.jid})

    def _handshakeTimedOut(self):
        # A c2s port that accepts but never answers must not hold the link.
        self._handshakeCall = None
        if self.state != "ready":
            self.failure = ("network", f"no handshake within {HANDSHAKE_TIMEOUT} s")
            self.closeStream(wait=1)

    def errorHeaderAttrs(self):
        return {"to": self.link.config.jid}

    def streamStarted(self, header):
        streamId = header.getAttribute("id")
        if not streamId:
            self.failure = ("network", "the c2s server sent no stream id")
            self.streamError("invalid-xml", "stream header without id")
            return
        self.state = "handshake"
        self.send(f"<handshake>{handshakeDigest(streamId, self.link.config.secret)}</handshake>")

    def stanzaReceived(self, stanza):
        if self.state == "ready":
            a = stanza.attributes
            if (stanza.name == "iq" and a.get("type") in ("result", "error")
                    and (a.get("id") or "").startswith(PROBE_PREFIX)
                    and a.get("from") == self.link.probeTo):
                self._probeReturned(a.get("id"))
                return
            self.link.stanzaReceived(stanza)
        elif self.state == "handshake":
            self.streamError("not-authorized", "expected a handshake")

    def stanzaAfterClose(self, stanza):
        # Our closing tag is out (shutdown): what the c2s server wrote before
        # it saw it still goes out, so nothing it handed us is lost.
        if self.state == "ready":
            self.link.stanzaReceived(stanza)

    def elementReceived(self, element):
        if self.state == "handshake":
            if element.name == "handshake":
                self.state = "ready"
                cancel(self._handshakeCall)
                self._handshakeCall = None
                self.link._linkUp(self)
            else:
                self.streamError("not-authorized", "expected a handshake")

    def streamErrorReceived(self, condition, text):
        if condition in AUTH_CONDITIONS and self.state != "ready":
            self.failure = ("auth", f"{condition}" + (f" ({text})" if text else ""))
        else:
            self.failure = ("network", f"stream error {condition}" + (f" ({text})" if text else ""))

    def streamClosed(self, reason):
        cancel(self._handshakeCall)
        self._handshakeCall = None
        self.link._linkDown(self, reason)


@implementer(IComponentLink)
class ComponentLink(service.Service):
    """
    Keeps the component connection up and buffers while it is down.

    @param connect: a callable taking a protocol factory and returning a
        Deferred that fires when connected (an endpoint's C{connect}).
    @param onStanza: called with each stanza the c2s server sends us.
    @param onBounce: called with each error reply for a stanza that could
        not be handed to the c2s server (it goes back to its remote sender).
    @param batch: the gateway's L{WriteBatch}, or None.
    @param inbound: the L{ISessionTable} to pause and resume when the c2s
        server does not keep up, or None.
    @param closeWait: seconds the c2s server has to answer our closing tag
        when the link stops.
    @param probeTo: a domain of the c2s server to ping after each burst (the
        answer confirms what was written before), or None: no confirmation,
        nothing written is sent again after a loss.
    """

    log = Logger()
    initialDelay = 1.0
    # After a link that was up goes down, the c2s server is usually just
    # restarting: retry quickly (with jitter) for fast_retry_period seconds.
    # At most 200 ms apart: up within 0.5 s of the server accepting, with
    # room for the connect and handshake on a loaded machine.
    quickDelays = (0.05, 0.1, 0.2)

    def __init__(self, config, clock, connect, onStanza, onBounce,
                 maxStanzaBytes=524288, rng=None, metrics=None, batch=None, inbound=None,
                 closeWait=1.0, probeTo=None):
        self.config = config
        self.batch = batch
        self.clock = clock
        self.connectTo = connect
        self.onStanza = onStanza
        self.onBounce = onBounce
        self.maxStanzaBytes = maxStanzaBytes
        self.random = rng or random.Random()
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.stream = None
        self.state = "down"
        self.lastProblem = None
        self.delay = self.initialDelay
        self.quick = 0              # quick retries made since the loss
        self.lostAt = None          # when the link that was up went down
        self.buffer = collections.deque()   # (deadline, element, size, resent)
        self.bufferBytes = 0
        # The L{ISessionTable} whose inbound streams feed us (back-pressure).
        self.inbound = inbound
        self.throttled = False
        self.throttledCount = 0     # times the inbound streams were paused
        self._retryCall = None
        self._expiryCall = None
        self._connecting = None
        self.waiters = []
        self.closeWait = closeWait
        self.probeTo = probeTo
        self._gone = []
        self.undeliverable = 0      # handed to us after the link stopped

    # service

    def startService(self):
        service.Service.startService(self)
        self._connect()

    def stopService(self):
        """
        Close the link the XEP-0114 way: our closing tag, then the c2s server's.
        It sees the link go at once and routes to another gateway; what it wrote
        before that still arrives and is handled.  Fires when the connection is
        gone (at most C{closeWait} seconds).
        """
        if not self.running:
            return None
        service.Service.stopService(self)
        cancel(self._retryCall)
        self._retryCall = None
        cancel(self._expiryCall)
        self._expiryCall = None
        if self._connecting is not None:
            self._connecting.cancel()
        while self.buffer:
            _, element, _, _ = self.buffer.popleft()
            self._bounce(element, "recipient-unavailable", "the gateway is shutting down")
        self.bufferBytes = 0
        stream = self.stream
        if stream is None or stream.closed:
            return None
        gone = defer.Deferred()
        self._gone.append(gone)
        stream.closeStream(wait=self.closeWait)
        return gone

    # connection management

    def _connect(self):
        self._retryCall = None
        if not self.running:
            return
        self.state = "connecting"
        factory = Factory.forProtocol(lambda: ComponentStream(self, self.clock))
        d = self._connecting = defer.maybeDeferred(self.connectTo, factory)

        def failed(f):
            self._connecting = None
            if f.check(defer.CancelledError):
                return
            self._scheduleRetry("network", _describeConnectError(f))

        def connected(_):
            self._connecting = None

        d.addCallbacks(connected, failed)

    def _linkUp(self, stream):
        self.stream = stream
        self.state = "up"
        self.metrics.link(True)
        self.delay = self.initialDelay
        self.lostAt = None
        c = self.config
        self.log.info("component link up: {jid} at {host}:{port}", jid=c.jid, host=c.host,
                      port=c.port, event="component.up")
        self.lastProblem = None
        pending, self.buffer = self.buffer, collections.deque()
        self.bufferBytes = 0
        for _, stanza, _, resent in pending:
            stream.sendStanza(stanza, resent)
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(self)

    def _linkDown(self, stream, reason):
        wasUp = self.stream is stream
        if wasUp:
            self.stream = None
            self.metrics.link(False)
        kind, text = stream.failure or ("network", reason.getErrorMessage()
                                         if reason is not None else "connection lost")
        if not self.running:
            self.state = "down"
            if wasUp:
                self.log.info("component link closed: the gateway is stopping",
                              event="component.closed")
                # What the c2s server never took goes back to its remote senders;
                # what it did (unconfirmed or not) it read before its closing tag.
                stream.takeUnconfirmed()
                for element, _ in stream.takeHeld():
                    self._bounce(element, "recipient-unavailable", "the gateway is shutting down")
                self._release()
            gone, self._gone = self._gone, []
            for d in gone:
                d.callback(None)
            return
        if wasUp:
            self.log.warn("component link down: {text}; reconnecting", text=text,
                          event="component.down")
            # That line is this state change: the retry does not repeat it.
            self.lastProblem = (kind, text)
            # What the c2s server may not have taken waits for the next link
            # (or bounces): first what no probe confirmed, once more.
            unconfirmed = stream.takeUnconfirmed()
            if unconfirmed:
                self.log.info("component link: {count} stanza(s) written but not confirmed "
                              "by the c2s server go out again on the next link",
                              count=len(unconfirmed), event="component.resend")
            for element, resent in unconfirmed:
                if resent:
                    self._bounce(element, "recipient-unavailable",
                                 "the link to the recipient's server was lost twice before it "
                                 "confirmed this stanza; it may or may not have arrived")
                else:
                    self._hold(element, True)
            for element, resent in stream.takeHeld():
                self._hold(element, resent)
            self._release()
            self.lostAt = self.clock.seconds()
            self.quick = 0
        self._scheduleRetry(kind, text)

    def _scheduleRetry(self, kind, text):
        self.state = "down"
        c = self.config
        if kind == "auth":
            delay = c.auth_retry_delay
            problem = ("auth", text)
            message = ("component link: the c2s server at {host}:{port} refused component "
                       "{jid}: {text}; check [component] jid and secret against the c2s "
                       "server's component section; retrying in {delay:.0f} s")
        elif self.lostAt is not None and \
                self.clock.seconds() - self.lostAt < c.fast_retry_period:
            step = self.quickDelays[min(self.quick, len(self.quickDelays) - 1)]
            self.quick += 1
            delay = step * (0.5 + self.random.random() / 2)
            problem = ("network", text)
            message = ("component link: cannot reach the c2s server at {host}:{port}: {text}; "
                       "retrying quickly (next in {delay:.2f} s)")
        else:
            delay = self.delay * (0.5 + self.random.random() / 2)
            self.delay = min(self.delay * 2, c.max_retry_delay)
            problem = ("network", text)
            message = ("component link: cannot reach the c2s server at {host}:{port}: {text}; "
                       "retrying with backoff (next in {delay:.1f} s)")
        if problem != self.lastProblem:
            # Log each change of state once, not every retry.
            log = self.log.error if kind == "auth" else self.log.warn
            log(message, host=c.host, port=c.port, jid=c.jid, text=text, delay=delay,
                event=f"component.{kind}_failure")
            self.lastProblem = problem
        self._retryCall = self.clock.callLater(delay, self._connect)

    # stanzas

    def send(self, stanza):
        """Hand a L{RawStanza} to the c2s server, or buffer it."""
        if self.stream is not None and not self.stream.closing:
            self.stream.sendStanza(stanza)
            return
        if not self.running:
            # Stopped: no link will come to carry it, and none to bounce it.
            self.undeliverable += 1
            self.log.warn("stopping: a {name} for {to} arrived after the component link "
                          "closed and is lost", name=stanza.name,
                          to=stanza.attributes.get("to"), event="shutdown.undeliverable")
            return
        self._hold(stanza)

    def _hold(self, element, resent=False):
        """
        Buffer a L{RawStanza} while the link is down, within bounds;
        C{resent}: it was written once on a link that was lost.
        """
        size = len(element)
        if (len(self.buffer) >= self.config.buffer_limit
                or self.bufferBytes + size > self.config.buffer_bytes):
            self._bounce(element, "resource-constraint",
                         "the recipient's server is unreachable and the gateway's buffer is full")
            return
        self.buffer.append((self.clock.seconds() + self.config.buffer_timeout, element, size,
                            resent))
        self.bufferBytes += size
        self._scheduleExpiry()

    # back-pressure

    def _pressure(self, stream):
        """Pause the inbound streams past C{high_water}, resume below C{low_water}."""
        if stream is not self.stream or self.inbound is None:
            return
        backlog = stream.backlog
        if not self.throttled and backlog > self.config.high_water:
            self.throttled = True
            self.throttledCount += 1
            paused = self.inbound.pauseInbound()
            self.log.warn("component link: the c2s server is {backlog} bytes behind; "
                          "reading from {paused} inbound streams paused until it is below "
                          "{low} bytes", backlog=backlog, paused=paused,
                          low=self.config.low_water, event="component.backpressure")
        elif self.throttled and backlog <= self.config.low_water:
            self._release()

    def _release(self):
        if self.throttled:
            self.throttled = False
            self.inbound.resumeInbound()
            self.log.info("component link: the c2s server caught up; inbound streams "
                          "are read again", event="component.backpressure_released")

    def stanzaReceived(self, stanza):
        self.onStanza(stanza)

    def whenUp(self):
        """A Deferred that fires once the link is up."""
        if self.stream is not None:
            return defer.succeed(self)
        d = defer.Deferred()
        self.waiters.append(d)
        return d

    def _scheduleExpiry(self):
        if self._expiryCall is None and self.buffer:
            delay = max(0, self.buffer[0][0] - self.clock.seconds())
            self._expiryCall = self.clock.callLater(delay, self._expire)

    def _expire(self):
        self._expiryCall = None
        now = self.clock.seconds()
        while self.buffer and self.buffer[0][0] <= now:
            _, element, size, _ = self.buffer.popleft()
            self.bufferBytes -= size
            self._bounce(element, "recipient-unavailable",
                         "the recipient's server did not come back in time")
        self._scheduleExpiry()

    def _bounce(self, element, condition, text):
        if shouldBounce(element):
            self.onBounce(element.errorReply(condition, text))
        else:
            self.log.debug("dropped undeliverable {name} ({condition})", name=element.name,
                           condition=condition)


def _describeConnectError(f):
    if f.check(ierror.ConnectionRefusedError):
        return "connection refused"
    if f.check(ierror.TimeoutError, defer.TimeoutError):
        return "connection timed out"
    if f.check(ierror.DNSLookupError):
        return "cannot resolve the host name"
    return f.getErrorMessage()
