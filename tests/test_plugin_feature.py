"""
A negotiation feature plugged in from outside the core.

``urn:example:hello`` is made up: the receiving side offers
``<hello xmlns='urn:example:hello'/>`` in its stream features and answers
``<hello/>`` with ``<hello-ack/>``; the initiating side, when offered it,
says hello and waits for the ack before it authenticates.  The feature is
this module's two small classes plus the line that registers them
(``features=`` of GatewayService); no stream class is edited.

Two whole gateways (GatewayService) for a.test and b.test federate in memory:
their connectors join an outbound stream of one to an inbound stream of the
other with Twisted's in-memory transports (twisted.test.iosim), dialback
included (the verify leg goes back the other way).
"""

from twisted.application import service
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate import features
from s2sgate.config import parse_config
from s2sgate.gateway.service import GatewayService
from s2sgate.interfaces import IComponentLink, IConnector, IOffer, IStep
from s2sgate.net.connector import Connection
from s2sgate.net.resolver import Address, Target
from s2sgate.s2s.negotiation import Skip
from s2sgate.xmpp.rawstanza import RawStanza

NS_HELLO = "urn:example:hello"


@implementer(IStep)
class Hello:
    """Initiating side: say hello when the peer offers it."""

    name = "hello"
    said = []   # (local, remote) of every hello acknowledged, for the test

    def __init__(self, runtime):
        self.done = False

    def applies(self, stream, features):
        return features is not None and not self.done and features.child(NS_HELLO, "hello")

    async def run(self, stream, features):
        self.done = True
        stream.send(domish.Element((NS_HELLO, "hello")))
        await stream.expect(lambda e: (e.uri, e.name) == (NS_HELLO, "hello-ack"))
        Hello.said.append((stream.local, stream.remote))
        return Skip()   # go on with the next step (dialback) on the same features


@implementer(IOffer)
class HelloOffer:
    """Receiving side: offer hello, acknowledge it."""

    heard = []   # stream ids that said hello

    def __init__(self, runtime):
        pass

    def advertise(self, stream, features):
        features.addElement((NS_HELLO, "hello"))

    def handlers(self):
        return {(NS_HELLO, "hello"): self.hello}

    def hello(self, stream, element):
        HelloOffer.heard.append(stream.streamId)
        stream.send(domish.Element((NS_HELLO, "hello-ack")))

    def streamClosed(self, stream):
        pass


WITH_HELLO = {"steps": (Hello,) + features.STEPS, "offers": features.OFFERS + (HelloOffer,)}


@implementer(IComponentLink)
class LocalDeliveries(service.Service):
    """The c2s side of a gateway: what the gateway delivers locally is kept."""

    state = "up"
    buffer = ()
    lastProblem = None
    undeliverable = 0

    def __init__(self, onStanza, onBounce):
        self.fromLocal = onStanza
        self.delivered = []

    def send(self, stanza):
        self.delivered.append(stanza.element())

    def whenUp(self):
        return defer.succeed(self)


class MemoryNetwork:
    """Domains to gateways; every connection is a pair of in-memory transports."""

    def __init__(self):
        self.gateways = {}
        self.pumps = []

    def connector(self):
        network = self

        @implementer(IConnector)
        class MemoryConnector:
            async def connect(self, domain, factory, directTLS=None):
                server = network.gateways[domain].inboundFactory().buildProtocol(None)
                client = factory.buildProtocol(None)
                serverTransport = iosim.FakeTransport(server, isServer=True)
                clientTransport = iosim.FakeTransport(client, isServer=False)
                network.pumps.append(iosim.connect(server, serverTransport, client,
                                                   clientTransport, greet=False))
                return Connection(client, Target(domain, 5269), Address("127.0.0.1", 5269, 4))

        return MemoryConnector()

    def flush(self, clock):
        for _ in range(50):
            moved = False
            for pump in list(self.pumps):
                moved = pump.pump() or moved
            clock.advance(0)
            if not moved:
                return


def site(network, domain, **registered):
    config = parse_config({"local_domains": [domain],
                           "component": {"jid": f"s2s.{domain}", "secret": "x"},
                           "s2s": {"use_starttls": "false", "listen": []},
                           "admin": {"listen": ""}}, f"{domain}.toml")
    reactor = MemoryReactorClock()
    gateway = GatewayService(config, reactor, connector=network.connector(),
                             componentLink=LocalDeliveries, **registered)
    network.gateways[domain] = gateway
    return gateway, reactor


def message(sender, to, body):
    m = domish.Element(("jabber:server", "message"))
    m["from"], m["to"], m["type"] = sender, to, "chat"
    m.addElement("body", content=body)
    return RawStanza.fromElement(m)


def federate(registered):
    Hello.said.clear()
    HelloOffer.heard.clear()
    network = MemoryNetwork()
    a, clockA = site(network, "a.test", **registered)
    b, _ = site(network, "b.test", **registered)
    a.link.fromLocal(message("alice@a.test/pc", "bob@b.test", "hello over hello"))
    network.flush(clockA)
    return a, b


def test_a_plugged_in_feature_is_negotiated_before_dialback_and_the_stanza_arrives():
    a, b = federate({"features": WITH_HELLO})
    [delivered] = b.link.delivered
    assert (delivered["from"], delivered["to"], str(delivered.body)) == (
        "alice@a.test/pc", "bob@b.test", "hello over hello")
    # a.test said hello on its stream to b.test; the verify leg (b.test back to
    # a.test) runs its own steps, where the feature is not registered.
    assert Hello.said == [("a.test", "b.test")]
    [streamId] = HelloOffer.heard
    [inbound] = [s for s in b.sessions() if s["direction"] == "in"]
    assert inbound["stream_id"] == streamId and inbound["auth"] == "dialback"
    [session] = [s for s in a.sessions() if s["direction"] == "out"]
    assert session["auth"] == "dialback" and session["pairs"] == [["a.test", "b.test"]]


def test_without_the_feature_registered_nothing_says_hello_and_federation_still_works():
    a, b = federate({})
    assert [str(m.body) for m in b.link.delivered] == ["hello over hello"]
    assert Hello.said == [] and HelloOffer.heard == []
