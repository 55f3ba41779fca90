"""Shared fakes for the stream unit tests: a real Config, a fake gateway, a parser for output."""

from types import SimpleNamespace

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.config import parse_config
from s2sgate.features.dialback import Verdict
from s2sgate.gateway.router import NoFederation, Router
from s2sgate.gateway.runtime import Current, Runtime
from s2sgate.interfaces import IComponentLink
from s2sgate.s2s.inbound import InboundStream
from s2sgate.s2s.sessions import SessionTable
from s2sgate.xmpp.parser import StreamParser

LOCAL = "home.test"
MUC = "conference.home.test"
REMOTE = "remote.test"
SECRET = "k"


def makeConfig(**s2s):
    s = {"use_starttls": "false", "shared": SECRET}
    s.update(s2s)
    return parse_config({"local_domains": [LOCAL, MUC],
                         "component": {"jid": "s2s.home.test", "secret": "x"},
                         "s2s": s}, "t.toml")


VALID = Verdict(True, "valid")
INVALID = Verdict(False, "invalid")


class FakeVerifier:
    """verify() returns a Deferred the test controls (fire it with a Verdict)."""

    def __init__(self):
        self.requests = []   # (local, remote, streamId, key, deferred)
        self.peers = []      # the peer address of each request

    def verify(self, local, remote, streamId, key, peer=None):
        self.peers.append(peer)
        d = defer.Deferred()
        self.requests.append((local, remote, streamId, key, d))
        return d


@implementer(IComponentLink)
class DeliveredList(list):
    """
    The c2s side of a router in tests: what it delivers is appended here, as
    a DOM; C{stanzas} keeps the L{RawStanza}s themselves.
    """

    state = "up"
    undeliverable = 0

    def __init__(self):
        list.__init__(self)
        self.stanzas = []

    def send(self, stanza):
        self.stanzas.append(stanza)
        self.append(stanza.element())

    def whenUp(self):
        return defer.succeed(self)


def makeRouter(current, outbound=NoFederation):
    return Router(current, outbound=outbound, local=lambda onStanza, onBounce: DeliveredList())


def makeGateway(config=None, tls=None, **s2s):
    """The parts a stream is built from, with a real runtime, router and session table."""
    config = config or makeConfig(**s2s)
    current = Current(Runtime.build(config, tls=tls))
    router = makeRouter(current)
    router.delivered = router.local
    return SimpleNamespace(config=config, clock=task.Clock(), current=current,
                           runtime=current.runtime, router=router, verifier=FakeVerifier(),
                           keys=current.runtime.keys, sessions=SessionTable(), tls=tls)


def inbound(gw, directTLS=False, peerHost=None):
    """An InboundStream on C{gw}'s parts (not connected yet)."""
    return InboundStream(gw.clock, gw.current.runtime, gw.router, gw.verifier, gw.sessions,
                         directTLS=directTLS, peerHost=peerHost)


def connect(protocol):
    transport = StringTransport()
    protocol.makeConnection(transport)
    return transport


class Output:
    """Parse what a protocol wrote to a StringTransport, incrementally."""

    def __init__(self, transport):
        self.transport = transport
        self.header = None
        self.elements = []
        self.ended = False
        self.parser = StreamParser(self._header, self.elements.append, self._end)
        self._seen = 0

    def _header(self, e):
        self.header = e

    def _end(self):
        self.ended = True

    def update(self):
        data = self.transport.value()
        self.parser.feed(data[self._seen:])
        self._seen = len(data)
        return self

    def named(self, name, uri=None):
        self.update()
        return [e for e in self.elements if e.name == name and (uri is None or e.uri == uri)]

    def streamError(self):
        """The condition of the stream error sent, or None."""
        [error] = self.named("error", "http://etherx.jabber.org/streams") or [None]
        if error is None:
            return None
        return next(c.name for c in error.elements() if c.name != "text")


def stanza(name="message", sender=f"juliet@{REMOTE}/balcony", to=f"romeo@{LOCAL}", body="hi"):
    e = domish.Element(("jabber:server", name))
    if sender:
        e["from"] = sender
    if to:
        e["to"] = to
    if body and name == "message":
        e.addElement("body", content=body)
    return e
