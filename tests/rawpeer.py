"""A scripted raw s2s peer: sends bytes, records what comes back until the connection closes."""

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

HEADER = ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
          "xmlns:db='jabber:server:dialback' from='{sender}' to='{to}' version='1.0'>")


class RawPeer(Protocol):
    def __init__(self):
        self.data = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.closed.callback(self.data.decode("utf-8", "replace"))


async def converse(reactor, ip, port, chunks, timeout=10):
    """Send C{chunks} (bytes) and return everything received once the peer hangs up."""
    peer = RawPeer()
    await connectProtocol(TCP4ClientEndpoint(reactor, ip, port), peer)
    for chunk in chunks:
        peer.transport.write(chunk)
    closed = peer.closed
    closed.addTimeout(timeout, reactor, onTimeoutCancel=lambda *a: peer.data.decode("utf-8", "replace"))
    try:
        return await closed
    finally:
        if peer.transport.connected:
            peer.transport.loseConnection()
