# -*- test-case-name: tests.test_tls_layer -*-
"""
TLS for s2s streams, written through and sent at once.

Twisted's own TLS (``ITLSTransport.startTLS``, ``wrapClientTLS``) wraps a
connection in C{BufferingTLSTransport}, which holds every write until the
next reactor turn so that many small writes become one TLS record.  Our
streams already do that: L{s2sgate.xmpp.stream.WriteBatch} joins what one
chunk of input makes into one write per stream, at the end of the turn
that read it, so the extra turn only adds latency.  And Twisted's TCP
transport sends nothing at C{write()}: it waits for its next writable
event, and when that poll also returns the next chunk of input, the chunk
is handled first.  Under load both are where stanzas wait (bench/README.md,
"p99 at half load").  So the gateway's TLS is Twisted's unbuffered
L{TLSMemoryBIOProtocol}, and these transports are L{ISendNow}: when the
input chunk that made a stream's writes is handled, the stream calls
C{sendNow()} and the TCP connection sends them in that turn (not after a
batch of full records: see L{s2sgate.xmpp.stream.XmlStream.sendNow}):

  - L{WriteThroughTLSFactory}: a L{TLSMemoryBIOFactory} building it, for
    the direct TLS (XEP-0368) listeners;
  - L{wrapClientTLS}: the client endpoint of direct TLS, with that factory;
  - L{StartTLSLayer}: the transport of a STARTTLS-capable stream.  It is
    plaintext until the stream calls C{startTLS}, then puts that protocol
    between the TCP connection and the stream; L{StartTLSFactory}
    (listeners) and L{startTLSCapable} (client endpoints) give one to each
    stream.

The streams do not know: they call C{transport.startTLS} as on any
L{ITLSTransport}, so the in-memory transports of the unit tests still work.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocol,
    ISSLTransport,
    IStreamClientEndpoint,
    ITLSTransport,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import alsoProvides, directlyProvides, implementer, providedBy

from s2sgate.interfaces import ISendNow
from s2sgate.xmpp.stream import sendTCPNow

__all__ = ["StartTLSFactory", "StartTLSLayer", "WriteThroughTLSFactory", "startTLSCapable",
           "wrapClientTLS"]


@implementer(ISendNow)
class _WriteThroughTLS(TLSMemoryBIOProtocol):
    """Twisted's unbuffered TLS protocol, an L{ISendNow} (direct TLS)."""

    def sendNow(self):
        sendTCPNow(self.transport)


class WriteThroughTLSFactory(TLSMemoryBIOFactory):
    """A L{TLSMemoryBIOFactory} whose connections write through (see the module)."""

    protocol = _WriteThroughTLS


@implementer(IStreamClientEndpoint)
class _TLSClientEndpoint:
    def __init__(self, creator, endpoint):
        self.creator = creator
        self.endpoint = endpoint

    def connect(self, protocolFactory):
        factory = WriteThroughTLSFactory(self.creator, True, protocolFactory)
        return defer.ensureDeferred(self._connect(factory))

    async def _connect(self, factory):
        tlsProtocol = await self.endpoint.connect(factory)
        return tlsProtocol.wrappedProtocol


def wrapClientTLS(creator, endpoint) -> IStreamClientEndpoint:
    """Like Twisted's C{wrapClientTLS}, with L{WriteThroughTLSFactory}."""
    return _TLSClientEndpoint(creator, endpoint)


@implementer(IProtocol, IHandshakeListener)
class _ToStream:
    """The TLS layer's application protocol: hands what it decrypts to the stream."""

    def __init__(self, stream):
        self.stream = stream

    def makeConnection(self, transport):
        """The stream is connected already (to the L{StartTLSLayer})."""

    def connectionMade(self):
        """Likewise."""

    def dataReceived(self, data):
        self.stream.dataReceived(data)

    def connectionLost(self, reason):
        self.stream.connectionLost(reason)

    def handshakeCompleted(self):
        if IHandshakeListener.providedBy(self.stream):
            self.stream.handshakeCompleted()


@implementer(IProtocol, ITLSTransport, ISendNow)
class StartTLSLayer:
    """
    Between a TCP connection and one stream: the stream's transport.

    Until L{startTLS} every call passes through to the TCP transport; after
    it, reads and writes go through a L{TLSMemoryBIOProtocol} on that TCP
    transport, and this layer provides L{ISSLTransport}.

    @param stream: the stream's protocol (an L{IProtocol}).
    @param isClient: whether we are the TLS client (the outbound side).
    """

    connected = False

    def __init__(self, stream, isClient: bool):
        self.stream = stream
        self.isClient = isClient
        self.transport = None
        self.tls: TLSMemoryBIOProtocol | None = None

    def __repr__(self):
        return f"<StartTLSLayer {'TLS' if self.tls is not None else 'plain'} {self.stream!r}>"

    # protocol side: the TCP transport calls these

    def makeConnection(self, transport):
        directlyProvides(self, providedBy(transport))
        alsoProvides(self, ITLSTransport, ISendNow)
        self.transport = transport
        self.connected = True
        self.stream.makeConnection(self)

    def connectionMade(self):
        """L{makeConnection} connects the stream."""

    def dataReceived(self, data):
        if self.tls is not None:
            self.tls.dataReceived(data)
        else:
            self.stream.dataReceived(data)

    def connectionLost(self, reason):
        self.connected = False
        if self.tls is not None:
            self.tls.connectionLost(reason)
        else:
            self.stream.connectionLost(reason)

    def logPrefix(self):
        return self.stream.__class__.__name__

    # transport side: the stream calls these

    def startTLS(self, contextFactory, normal=True):
        """Put TLS between the TCP connection and the stream, from the next byte on."""
        if self.tls is not None:
            raise RuntimeError("TLS is started already")
        factory = WriteThroughTLSFactory(contextFactory, self.isClient, None)
        self.tls = factory.protocol(factory, _ToStream(self.stream))
        self.tls.makeConnection(self.transport)
        alsoProvides(self, ISSLTransport)

    def _below(self):
        return self.tls if self.tls is not None else self.transport

    def write(self, data):
        self._below().write(data)

    def writeSequence(self, data):
        self._below().writeSequence(data)

    def sendNow(self):
        """TLS or not, what was written is in the TCP connection by now."""
        sendTCPNow(self.transport)

    def loseConnection(self):
        self._below().loseConnection()

    def abortConnection(self):
        self._below().abortConnection()

    def getHandle(self):
        """The OpenSSL connection once TLS is on, the socket before."""
        return self._below().getHandle()

    def getPeerCertificate(self):
        if self.tls is None:
            return None
        return self.tls.getPeerCertificate()

    def getPeer(self):
        return self.transport.getPeer()

    def getHost(self):
        return self.transport.getHost()

    def setTcpNoDelay(self, enabled):
        self.transport.setTcpNoDelay(enabled)

    def getTcpNoDelay(self):
        return self.transport.getTcpNoDelay()

    def setTcpKeepAlive(self, enabled):
        self.transport.setTcpKeepAlive(enabled)

    def getTcpKeepAlive(self):
        return self.transport.getTcpKeepAlive()

    def loseWriteConnection(self):
        self.transport.loseWriteConnection()

    # The stream is the TCP connection's producer either way: TLS adds no
    # buffer of its own here, so the TCP buffer is the one that fills.
    def registerProducer(self, producer, streaming):
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.transport.unregisterProducer()

    # reading pauses (the stream's own limits) apply to the TCP connection
    def pauseProducing(self):
        self.transport.pauseProducing()

    def resumeProducing(self):
        self.transport.resumeProducing()

    def stopProducing(self):
        self.transport.stopProducing()


class StartTLSFactory:
    """
    Wraps a stream factory so each stream it builds gets a L{StartTLSLayer}
    as its transport: what a listener or a client endpoint is given.
    """

    def __init__(self, factory, isClient: bool):
        self.factory = factory
        self.isClient = isClient

    def doStart(self):
        self.factory.doStart()

    def doStop(self):
        self.factory.doStop()

    def buildProtocol(self, addr):
        stream = self.factory.buildProtocol(addr)
        if stream is None:
            return None
        return StartTLSLayer(stream, self.isClient)


@implementer(IStreamClientEndpoint)
class _StartTLSClientEndpoint:
    def __init__(self, endpoint):
        self.endpoint = endpoint

    def connect(self, protocolFactory):
        return defer.ensureDeferred(self._connect(StartTLSFactory(protocolFactory, True)))

    async def _connect(self, factory):
        layer = await self.endpoint.connect(factory)
        return layer.stream


def startTLSCapable(endpoint) -> IStreamClientEndpoint:
    """A client endpoint whose streams can start TLS that writes through."""
    return _StartTLSClientEndpoint(endpoint)
