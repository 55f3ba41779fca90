"""
s2sgate.net.tls: the TLS layers that write through, over real loopback sockets.

Each test connects two L{StartTLSLayer}s (or direct TLS) on 127.0.0.1 with a
recording protocol on top, certificates from the test CA; then a stream on a
plain TCP connection, as the component link's is, and whether a stream turns
Nagle's delay off on each kind of connection.
"""
from __future__ import annotations

import socket

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, ssl, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IHandshakeListener,
    IPushProducer,
    ISSLTransport,
    IWriteDescriptor,
)
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOProtocol
from zope.interface import implementer

from s2sgate.interfaces import ISendNow
from s2sgate.net.tls import StartTLSLayer, WriteThroughTLSFactory, wrapClientTLS
from s2sgate.xmpp.stream import sendTCPNow
from tests.lab.certs import TestCA


@pytest.fixture(scope="module")
def creators(tmp_path_factory):
    """(server creator, client creator) for layer.test, trusted by the test CA."""
    ca = TestCA(tmp_path_factory.mktemp("tlslayer"))
    certfile, keyfile = ca.issue("layer.test", dns=["layer.test"])
    with open(certfile, "rb") as c, open(keyfile, "rb") as k:
        server = ssl.PrivateCertificate.loadPEM(c.read() + k.read()).options()
    with open(ca.cafile, "rb") as f:
        trust = ssl.Certificate.loadPEM(f.read())
    return server, ssl.optionsForClientTLS("layer.test", trustRoot=trust)


@implementer(IHandshakeListener)
class Recorder(protocol.Protocol):
    """Records what the layer hands up."""

    def __init__(self):
        self.data = b""
        self.arrived = []
        self.handshake = defer.Deferred()
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.data += data
        waiting, self.arrived = self.arrived, []
        for d in waiting:
            d.callback(None)

    def until(self, data):
        """Fires once C{data} has arrived."""
        async def wait():
            while data not in self.data:
                d = defer.Deferred()
                self.arrived.append(d)
                await d
        return defer.ensureDeferred(wait())

    def handshakeCompleted(self):
        self.handshake.callback(self.transport.getHandle())

    def connectionLost(self, reason):
        self.reason = reason
        self.lost.callback(None)


class Pair:
    """A server and a client layer connected over loopback."""

    async def open(self, serverOptions=None):
        self.server = Recorder()
        self.client = Recorder()
        factory = protocol.Factory.forProtocol(lambda: StartTLSLayer(self.server, isClient=False))
        if serverOptions is not None:
            factory = WriteThroughTLSFactory(serverOptions, False, protocol.Factory.forProtocol(
                lambda: self.server))
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        return self

    async def connectLayer(self):
        self.clientLayer = await self.endpoint.connect(protocol.Factory.forProtocol(
            lambda: StartTLSLayer(self.client, isClient=True)))
        while self.server.transport is None:   # the server side accepts in its own turn
            await deferLater(0.01)
        self.serverLayer = self.server.transport

    async def close(self):
        for side in (self.client, self.server):
            if side.transport is not None and not side.lost.called:
                side.transport.loseConnection()
        for side in (self.client, self.server):
            if side.transport is not None:
                await withTimeout(side.lost)
        await self.port.stopListening()


def deferLater(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def withTimeout(d, seconds=10):
    return d.addTimeout(seconds, reactor)


async def tlsPair(creators):
    pair = await Pair().open()
    await pair.connectLayer()
    server, client = creators
    pair.serverLayer.startTLS(server)
    pair.clientLayer.startTLS(client)
    await withTimeout(pair.client.handshake)
    await withTimeout(pair.server.handshake)
    return pair


@pytest_twisted.ensureDeferred
async def test_before_starttls_bytes_pass_through_both_ways_in_plaintext():
    pair = await Pair().open()
    try:
        await pair.connectLayer()
        pair.client.transport.write(b"<stream:stream>")
        await withTimeout(pair.server.until(b"<stream:stream>"))
        pair.server.transport.writeSequence([b"<proceed", b"/>"])
        await withTimeout(pair.client.until(b"<proceed/>"))
        assert not ISSLTransport.providedBy(pair.clientLayer)
        assert pair.clientLayer.getPeerCertificate() is None
        assert pair.clientLayer.getPeer() == pair.serverLayer.getHost()
    finally:
        await pair.close()


@pytest_twisted.ensureDeferred
async def test_after_starttls_the_handshake_completes_and_data_is_encrypted(creators):
    pair = await tlsPair(creators)
    try:
        pair.client.transport.write(b"<message/>")
        await withTimeout(pair.server.until(b"<message/>"))
        pair.server.transport.write(b"<presence/>")
        await withTimeout(pair.client.until(b"<presence/>"))
        assert ISSLTransport.providedBy(pair.clientLayer)
        assert isinstance(pair.clientLayer.getHandle(), SSL.Connection)
        assert pair.clientLayer.getHandle().get_protocol_version_name().startswith("TLS")
        assert pair.clientLayer.getPeerCertificate() is not None
    finally:
        await pair.close()


@pytest_twisted.ensureDeferred
async def test_a_write_after_starttls_reaches_the_tcp_transport_in_the_same_call(creators):
    """Write-through: no reactor turn between the stream's write and the TCP buffer
    (Twisted's own startTLS holds it one turn)."""
    pair = await tlsPair(creators)
    try:
        tcp = pair.clientLayer.transport
        seen = []
        original = tcp.write
        tcp.write = lambda data: (seen.append(len(data)), original(data))
        try:
            pair.client.transport.write(b"<message>now</message>")
            assert seen and seen[0] > len(b"<message>now</message>")   # a TLS record
        finally:
            del tcp.write
        await withTimeout(pair.server.until(b"<message>now</message>"))
    finally:
        await pair.close()


def recordSends(tcp):
    """The sizes of what the socket was given, as it is given it."""
    sent = []
    original = tcp.writeSomeData

    def writeSomeData(data):
        n = original(data)
        sent.append(n)
        return n
    tcp.writeSomeData = writeSomeData
    return sent


@pytest_twisted.ensureDeferred
async def test_plaintext_writes_are_sent_at_send_now_in_one_send():
    """Not at the TCP connection's next writable event, after the next input was handled."""
    pair = await Pair().open()
    try:
        await pair.connectLayer()
        sent = recordSends(pair.clientLayer.transport)
        pair.client.transport.write(b"<stream:stream>")
        pair.client.transport.writeSequence([b"<a/>", b"<b/>"])
        assert sent == []
        pair.clientLayer.sendNow()
        assert sent == [len(b"<stream:stream><a/><b/>")]
        await withTimeout(pair.server.until(b"<stream:stream><a/><b/>"))
    finally:
        await pair.close()


@pytest_twisted.ensureDeferred
async def test_tls_writes_are_sent_at_send_now(creators):
    pair = await tlsPair(creators)
    try:
        sent = recordSends(pair.clientLayer.transport)
        pair.client.transport.writeSequence([b"<message>", b"now</message>"])
        assert sent == []
        pair.clientLayer.sendNow()
        assert len(sent) == 1 and sent[0] > len(b"<message>now</message>")
        await withTimeout(pair.server.until(b"<message>now</message>"))
    finally:
        await pair.close()


@pytest_twisted.ensureDeferred
async def test_direct_tls_writes_are_sent_at_send_now(creators):
    pair = await Pair().open(serverOptions=creators[0])
    try:
        await wrapClientTLS(creators[1], pair.endpoint).connect(
            protocol.Factory.forProtocol(lambda: pair.client))
        await withTimeout(pair.client.handshake)
        tls = pair.client.transport
        assert ISendNow.providedBy(tls)
        sent = recordSends(tls.transport)
        tls.write(b"<iq/>")
        assert sent == []
        tls.sendNow()
        assert len(sent) == 1
        await withTimeout(pair.server.until(b"<iq/>"))
    finally:
        await pair.close()


def test_send_now_leaves_a_closing_connection_to_the_reactor():
    @implementer(IWriteDescriptor)
    class Closing:
        disconnecting = True
        writes = 0

        def doWrite(self):
            self.writes += 1
    closing = Closing()
    sendTCPNow(closing)
    assert closing.writes == 0
    closing.disconnecting = False
    sendTCPNow(closing)
    assert closing.writes == 1


def test_send_now_passes_over_a_transport_that_is_not_a_descriptor():
    sendTCPNow(object())   # an in-memory test transport: nothing to do


@pytest_twisted.ensureDeferred
async def test_lose_connection_after_starttls_closes_both_ends(creators):
    pair = await tlsPair(creators)
    pair.client.transport.loseConnection()
    await withTimeout(pair.client.lost)
    await withTimeout(pair.server.lost)
    await pair.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_starttls_twice_is_refused(creators):
    pair = await tlsPair(creators)
    try:
        with pytest.raises(RuntimeError):
            pair.clientLayer.startTLS(creators[1])
    finally:
        await pair.close()


@pytest_twisted.ensureDeferred
async def test_producer_registered_on_the_layer_is_the_tcp_connection_s():
    pair = await Pair().open()
    try:
        await pair.connectLayer()

        @implementer(IPushProducer)
        class Producer:
            def pauseProducing(self):
                pass

            def resumeProducing(self):
                pass

            def stopProducing(self):
                pass
        producer = Producer()
        pair.clientLayer.registerProducer(producer, True)
        assert pair.clientLayer.transport.producer is producer
        pair.clientLayer.unregisterProducer()
        assert pair.clientLayer.transport.producer is None
    finally:
        await pair.close()


def test_direct_tls_factory_builds_the_unbuffered_protocol(creators):
    factory = WriteThroughTLSFactory(creators[0], False, protocol.Factory.forProtocol(Recorder))
    built = factory.buildProtocol(None)
    assert isinstance(built, TLSMemoryBIOProtocol) and not isinstance(built, BufferingTLSTransport)


@pytest_twisted.ensureDeferred
async def test_direct_tls_client_endpoint_connects_the_protocol_it_built(creators):
    pair = await Pair().open(serverOptions=creators[0])
    try:
        built = await wrapClientTLS(creators[1], pair.endpoint).connect(
            protocol.Factory.forProtocol(lambda: pair.client))
        assert built is pair.client
        await withTimeout(pair.client.handshake)
        pair.client.transport.write(b"<iq/>")
        await withTimeout(pair.server.until(b"<iq/>"))
    finally:
        await pair.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_on_a_plain_tcp_connection_sends_at_the_end_of_its_batch():
    """The component link's stream has the reactor's TCP connection as its
    transport, no layer: a batch still ends with its write sent."""
    from s2sgate.xmpp.stream import WriteBatch, XmlStream

    received = Recorder()
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(lambda: received),
                             interface="127.0.0.1")
    batch = WriteBatch()
    try:
        stream = await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            protocol.Factory.forProtocol(lambda: XmlStream(reactor, batch=batch)))
        assert IWriteDescriptor.providedBy(stream.transport)
        sent = recordSends(stream.transport)
        batch.enter()
        stream.send(b"<message/>")
        stream.send(b"<presence/>")
        assert sent == []
        batch.exit()
        assert sent == [len(b"<message/><presence/>")]
        await withTimeout(received.until(b"<message/><presence/>"))
        stream.transport.loseConnection()
        await withTimeout(received.lost)
    finally:
        await port.stopListening()


def nagleOff(tcp):
    """Whether the socket of the reactor's TCP connection C{tcp} has TCP_NODELAY."""
    return tcp.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def streamOn(pair, connect):
    """An XmlStream connected by C{connect(factory)} to the pair's server, accepted."""
    from s2sgate.xmpp.stream import XmlStream

    stream = await connect(protocol.Factory.forProtocol(lambda: XmlStream(reactor)))
    while pair.server.transport is None:
        await deferLater(0.01)
    return stream


@pytest_twisted.ensureDeferred
async def test_a_stream_turns_nagle_off_on_a_plain_tcp_connection():
    pair = await Pair().open()
    try:
        stream = await streamOn(pair, pair.endpoint.connect)
        assert nagleOff(stream.transport)
    finally:
        await pair.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_turns_nagle_off_under_a_starttls_layer():
    pair = await Pair().open()
    try:
        layer = await streamOn(pair, lambda f: pair.endpoint.connect(
            protocol.Factory.forProtocol(lambda: StartTLSLayer(f.buildProtocol(None), True))))
        assert nagleOff(layer.transport)
    finally:
        await pair.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_turns_nagle_off_under_direct_tls(creators):
    pair = await Pair().open(serverOptions=creators[0])
    try:
        stream = await streamOn(pair, wrapClientTLS(creators[1], pair.endpoint).connect)
        assert nagleOff(stream.transport.transport)
    finally:
        await pair.close()
