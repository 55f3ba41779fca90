# -*- test-case-name: tests.test_stream -*-
"""
The byte-level half of every XMPP stream the gateway speaks: component
link, inbound and outbound s2s.

L{XmlStream} owns the parser, the header, stream errors, the closing tag,
whitespace keepalives and the timers.  Subclasses hold the protocol state of
their one stream and react to L{streamStarted}, L{elementReceived} and
L{streamEnded}.
"""

import secrets
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport, IWriteDescriptor
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.interfaces import ISendNow
from s2sgate.timers import cancel
from s2sgate.xmpp.namespaces import NS_COMPONENT, NS_SERVER, NS_STREAMS
from s2sgate.xmpp.namespaces import NS_STREAM_ERRORS as NS_STANZAS_STREAM
from s2sgate.xmpp.parser import StreamError, StreamParser
from s2sgate.xmpp.serialize import toXml
from s2sgate.xmpp.stanzas import setNamespace

__all__ = ["NS_COMPONENT", "NS_SERVER", "WriteBatch", "XmlStream", "newStreamId",
           "parseStreamError", "streamErrorXml", "streamHeader"]


def newStreamId():
    """An unguessable stream id (RFC 6120 §4.7.3 asks for 128 bits)."""
    return secrets.token_urlsafe(18)


def streamHeader(ns, attrs, extraNs=()):
    """Serialise an opening C{<stream:stream>} tag."""
    parts = [f"<stream:stream xmlns={quoteattr(ns)} xmlns:stream='{NS_STREAMS}'"]
    for prefix, uri in extraNs:
        parts.append(f" xmlns:{prefix}={quoteattr(uri)}")
    for k, v in attrs.items():
        if v is not None:
            parts.append(f" {k}={quoteattr(v)}")
    parts.append(">")
    return "".join(parts).encode("utf-8")


def streamErrorXml(condition, text=None):
    body = f"<{condition} xmlns='{NS_STANZAS_STREAM}'/>"
    if text:
        body += f"<text xmlns='{NS_STANZAS_STREAM}' xml:lang='en'>{escape(text)}</text>"
    return f"<stream:error>{body}</stream:error>".encode("utf-8")


def parseStreamError(element):
    """Return C{(condition, text)} of a received C{<stream:error/>}."""
    condition, text = "undefined-condition", None
    for child in element.elements():
        if child.uri != NS_STANZAS_STREAM:
            continue
        if child.name == "text":
            text = str(child)
        else:
            condition = child.name
    return condition, text


def sendTCPNow(transport) -> None:
    """
    Have the reactor's TCP connection C{transport} send what it holds now
    (its L{IWriteDescriptor.doWrite}, as the reactor calls it when the
    socket is writable); what the socket does not take waits for that event
    as before.  Not once it is closing: the reactor must see the close.
    """
    if IWriteDescriptor.providedBy(transport):
        connection: Any = transport   # a FileDescriptor: it says whether it is closing
        if not connection.disconnecting:
            connection.doWrite()


# Hold at most this much per stream in a batch: the payload of one TLS record.
FLUSH_BYTES = 16384


class WriteBatch:
    """
    Coalesce what many streams write while one chunk of input is handled.

    A chunk read from one stream (say 200 stanzas from the component link)
    fans out to other streams; without batching each stanza becomes its own
    write, TLS record and TCP segment.  Inside a batch, writes are held and
    each touched stream writes once when the outermost input handler
    returns, in the same reactor turn, so latency does not grow.
    """

    def __init__(self):
        self.depth = 0
        self.pending = []
        self.inputBytes = 0

    def enter(self, size=0):
        """A chunk of C{size} bytes of input is being handled."""
        self.depth += 1
        self.inputBytes += size

    def exit(self):
        self.depth -= 1
        if self.depth == 0:
            # A chunk of a full TLS record or more: the peer is sending
            # faster than we read.  Its output is left to each socket's
            # writable event, which joins what the next chunks write into
            # fewer, larger sends; a small chunk is sent in this turn.
            large = self.inputBytes >= FLUSH_BYTES
            self.inputBytes = 0
            while self.pending:
                pending, self.pending = self.pending, []
                # A stream that flushed a full record is queued again.
                for stream in dict.fromkeys(pending):
                    stream.flushPending()
                    stream.sendNow(largeInput=large)


@implementer(IPushProducer)
class XmlStream(Protocol):
    """
    Framing and limits shared by all streams.

    @ivar namespace: the stream's default namespace.
    @param clock: an L{IReactorTime}, so tests can drive timers.
    @param batch: the L{WriteBatch} shared by the gateway's streams, or None.
    @param metrics: a L{Metrics} counting bytes, or None.
    """

    log = Logger()
    namespace = NS_SERVER
    # Top-level elements handed over as RawStanza (their bytes, no DOM).
    stanzaNames: frozenset[tuple[str, str]] = frozenset()
    extraNamespaces: tuple[tuple[str, str], ...] = ()
    # A peer that stops reading: what we still write to it piles up in the
    # transport.  Give up on the stream past this much, or this long.
    maxBacklog = 16 * 1024 * 1024
    maxBlockedSeconds = 120

    def __init__(self, clock, maxStanzaBytes=524288, idleTimeout=None, keepalive=None,
                 batch=None, metrics=None):
        self.clock = clock
        self.batch = batch
        self.metrics = metrics
        self.maxStanzaBytes = maxStanzaBytes
        self.idleTimeout = idleTimeout
        self.keepaliveInterval = keepalive
        self.parser = StreamParser(self._onHeader, self._onElement, self._onEnd, maxStanzaBytes,
                                   onStanza=self._onStanza, stanzaNames=self.stanzaNames)
        self.closing = False
        self.closed = False
        self.errorSent = False
        self.headerSent = False
        # How the stream ended, for the log line of its end: None until it
        # does; still None when the connection drops without a closing tag
        # or stream error from either side (the stream was lost).  Clean: a
        # closing tag (or our idle close), not a stream error or an abort;
        # what a stream that did not end cleanly never acknowledged is its
        # stream management's to handle, and the end is reported as a loss.
        self.endReason = None
        self.endClean = False
        self.endAnswered = False    # the peer's closing tag came (it read all before it)
        self._idleCall = None
        self._keepaliveCall = None
        self._closeCall = None
        self.bytesIn = 0
        self.bytesOut = 0
        self._pending = []
        self._pendingBytes = 0
        self._fullRecords = False   # this batch flushed a full record already
        self._blockedSince = None
        self._backlog = 0
        self.readingPaused = False

    # transport events

    def connectionMade(self):
        transport = self.transport
        # The transport tells us (pause/resume) when the peer stops reading.
        if IConsumer.providedBy(transport):
            try:
                transport.registerProducer(self, True)
            except RuntimeError:
                pass
        # Stanzas are small and latency matters: no Nagle delay.  A TLS layer
        # provides the interfaces of the TCP connection under it.
        if ITCPTransport.providedBy(transport):
            try:
                transport.setTcpNoDelay(True)
            except OSError:
                pass
        self._touch()
        if self.keepaliveInterval:
            self._keepaliveCall = self.clock.callLater(self.keepaliveInterval, self._keepalive)

    def dataReceived(self, data):
        if self.closed:
            return
        self.bytesIn += len(data)
        if self.metrics is not None:
            self.metrics.bytesIn.inc(len(data))
        self._touch()
        batch = self.batch
        if batch is not None:
            batch.enter(len(data))
        try:
            self.parser.feed(data)
        except StreamError as e:
            self.streamError(e.condition, e.text)
        finally:
            if batch is not None:
                batch.exit()

    def connectionLost(self, reason):
        self.closed = True
        cancel(self._idleCall)
        self._idleCall = None
        cancel(self._keepaliveCall)
        self._keepaliveCall = None
        cancel(self._closeCall)
        self._closeCall = None
        self.streamClosed(reason)

    # parser events

    def _onHeader(self, header):
        if self.closing:
            return
        if (header.uri, header.name) != (NS_STREAMS, "stream"):
            if header.name == "stream":
                raise StreamError("invalid-namespace", "the stream element is in the wrong namespace")
            raise StreamError("not-well-formed" if not self.headerSent else "invalid-xml",
                              "expected a stream header")
        if header.defaultUri != self.namespace:
            raise StreamError("invalid-namespace",
                              f"the stream's default namespace must be {self.namespace}")
        self.streamStarted(header)

    def _onElement(self, element):
        if self.closing:
            # RFC 6120 4.9: after our stream error nothing more is handled;
            # after our closing tag (4.4) the peer may still finish what it sent.
            if not self.errorSent:
                self.elementAfterClose(element)
            return
        if (element.uri, element.name) == (NS_STREAMS, "error"):
            condition, text = parseStreamError(element)
            self._ending(f"stream error {condition} received", clean=False)
            self.streamErrorReceived(condition, text)
            self.closeStream()
            return
        self.elementReceived(element)

    def _onStanza(self, stanza):
        if self.closing:
            if not self.errorSent:
                self.stanzaAfterClose(stanza)
            return
        self.stanzaReceived(stanza)

    def _onEnd(self):
        self.endAnswered = True
        self._ending("closed by the peer")
        self.streamEnded()

    def _ending(self, reason, clean=True):
        if self.endReason is None:
            self.endReason = reason
            self.endClean = clean

    # sending

    def sendHeader(self, attrs):
        self.headerSent = True
        self.send(streamHeader(self.namespace, attrs, self.extraNamespaces))

    def send(self, data):
        """Send an element, a string or bytes."""
        if self.closed or self.transport is None:
            return False
        data = self.serialize(data)
        self.bytesOut += len(data)
        if self.metrics is not None:
            self.metrics.bytesOut.inc(len(data))
        batch = self.batch
        if batch is not None and batch.depth:
            if not self._pending:
                batch.pending.append(self)
            self._pending.append(data)
            self._pendingBytes += len(data)
            if self._pendingBytes >= FLUSH_BYTES:
                # One full TLS record: to the transport now rather than
                # hold the first stanza until the whole input chunk is
                # handled.
                self._fullRecords = True
                self.flushPending()
        else:
            self.transport.write(data)
        if self._blockedSince is not None:
            self._checkBacklog(len(data))
        return True

    def sendStanza(self, stanza):
        """Send a L{RawStanza}: its own bytes where they are portable, rebuilt otherwise."""
        return self.send(self.stanzaBytes(stanza))

    def stanzaBytes(self, stanza):
        """The bytes of a L{RawStanza} on this stream."""
        data = stanza.bytesIn(self.namespace)
        if data is None:
            element = setNamespace(stanza.element(), stanza.uri, self.namespace)
            data = self.serialize(element)
        return data

    def serialize(self, data):
        """An element, a string or bytes as the bytes this stream writes."""
        if isinstance(data, domish.Element):
            # Serialise in the stream's scope: no repeated default namespace,
            # and prefixes the header declared (some servers, ejabberd among
            # them, only understand dialback as "db:result").
            return toXml(data, prefixes=self._prefixes(), defaultUri=self.namespace,
                         prefixesInScope=["stream"] + [p for p, _ in self.extraNamespaces]
                         ).encode("utf-8")
        if isinstance(data, str):
            return data.encode("utf-8")
        return data

    # IPushProducer: the transport's word on whether the peer reads

    def pauseProducing(self):
        if self._blockedSince is None:
            self._blockedSince = self.clock.seconds()
            self._backlog = 0

    def resumeProducing(self):
        self._blockedSince = None
        self._backlog = 0

    def stopProducing(self):
        pass

    # Our own reading, paused when what the peer sends cannot go on (the
    # component link's back-pressure).  The idle timer stops meanwhile: the
    # silence is ours, not the peer's.

    def pauseReading(self):
        if self.readingPaused or self.closed or self.transport is None:
            return
        self.readingPaused = True
        self.transport.pauseProducing()
        cancel(self._idleCall)
        self._idleCall = None

    def resumeReading(self):
        if not self.readingPaused:
            return
        self.readingPaused = False
        if self.closed or self.transport is None:
            return
        self.transport.resumeProducing()
        self._touch()

    def _checkBacklog(self, size):
        self._backlog += size
        blocked = self.clock.seconds() - self._blockedSince
        if self._backlog > self.maxBacklog or blocked > self.maxBlockedSeconds:
            self.log.warn("{stream}: the peer stopped reading ({backlog} bytes waiting, "
                          "{blocked:.0f} s); dropping the connection", stream=self.describe(),
                          backlog=self._backlog, blocked=blocked, event="stream.backlog")
            self._blockedSince = None
            self._pending = []
            self._ending("dropped by us: the peer stopped reading", clean=False)
            self.closing = True
            self.errorSent = True
            self.transport.abortConnection()

    def flushPending(self):
        """
        Write what a batch held back.  Called before anything that changes
        the transport (STARTTLS) or closes it.
        """
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            self._pendingBytes = 0
            if self.transport is not None and not self.closed:
                self.transport.write(data)

    def sendNow(self, largeInput=False):
        """
        The end of a batch: have the transport (an L{ISendNow} layer of
        s2sgate.net.tls, or the reactor's TCP connection itself) send what
        it holds in this turn, not at the socket's next writable event,
        after the next input is handled.
        Not after a large chunk of input (C{largeInput}, a peer under load)
        or a batch that flushed full records: that waits for the writable
        event as before, which joins what the next turns write into fewer,
        larger sends.
        """
        large, self._fullRecords = self._fullRecords or largeInput, False
        if large or self.closed:
            return
        if ISendNow.providedBy(self.transport):
            self.transport.sendNow()
        else:
            # A plain TCP connection of the reactor (the component link).
            sendTCPNow(self.transport)

    def _prefixes(self):
        prefixes = {NS_STREAMS: "stream"}
        prefixes.update((uri, prefix) for prefix, uri in self.extraNamespaces)
        return prefixes

    def streamError(self, condition, text=None):
        """Send a stream error, close the stream and the connection."""
        if self.closing or self.closed:
            return
        self.log.info("stream error {condition} sent: {text}", condition=condition,
                      text=text, stream=self.describe())
        self._ending(f"stream error {condition} sent", clean=False)
        if not self.headerSent:
            self.sendHeader(self.errorHeaderAttrs())
        self.send(streamErrorXml(condition, text))
        self.errorSent = True
        self.streamErrorSent(condition, text)
        self.closeStream()

    def closeStream(self, wait=5):
        """Send the closing tag; drop the connection if the peer does not answer."""
        if self.closing or self.closed:
            return
        self.closing = True
        self._ending("closed by us")
        if not self.headerSent:
            self.sendHeader(self.errorHeaderAttrs())
        self.send(b"</stream:stream>")
        self.flushPending()
        if self.transport is not None:
            self._closeCall = self.clock.callLater(wait, self._abort)

    def _abort(self):
        # The peer had its chance to close; a peer that stopped reading
        # must not keep the socket (loseConnection would wait for it).
        self._closeCall = None
        if self.transport is not None and not self.closed:
            self.transport.abortConnection()

    # timers

    def _touch(self):
        if not self.idleTimeout or self.readingPaused:
            return
        if self._idleCall is None:
            self._idleCall = self.clock.callLater(self.idleTimeout, self._idle)
        else:
            self._idleCall.reset(self.idleTimeout)

    def _idle(self):
        self._idleCall = None
        self._ending(f"idle for {self.idleTimeout:g} s")
        self.idleTimedOut()

    def _keepalive(self):
        self._keepaliveCall = None
        if self.closed or self.closing:
            return
        self.send(b" ")
        self._keepaliveCall = self.clock.callLater(self.keepaliveInterval, self._keepalive)

    # for subclasses

    def errorHeaderAttrs(self):
        """Attributes of a header sent only to carry a stream error."""
        return {"version": "1.0"}

    def describe(self):
        return self.__class__.__name__

    def streamStarted(self, header):
        pass

    def elementReceived(self, element):
        pass

    def stanzaReceived(self, stanza):
        """A L{RawStanza} (of C{stanzaNames}); streams that route it override this."""
        self.elementReceived(stanza.element())

    def stanzaAfterClose(self, stanza):
        self.elementAfterClose(stanza.element())

    def elementAfterClose(self, element):
        """An element that arrived after our closing tag; ignored unless a stream
        has a use for what its peer still sends (stanzas, during a shutdown)."""

    def streamEnded(self):
        self.closeStream()
        if self.transport is not None:
            self.transport.loseConnection()

    def streamErrorReceived(self, condition, text):
        self.log.info("stream error {condition} received: {text}", condition=condition,
                      text=text, stream=self.describe())

    def streamErrorSent(self, condition, text):
        pass

    def idleTimedOut(self):
        self.closeStream()

    def streamClosed(self, reason):
        pass
