# -*- test-case-name: tests.test_demo -*-
"""
A c2s server stand-in for the demo: the server side of XEP-0114 and a few
simulated local users.

It is what Prosody or ejabberd are to a real deployment, cut down to what
the gateway needs: a component port that checks the component's name and
its handshake (hex SHA-1 of the stream id followed by the secret), and a
router that hands every stanza for a domain the site does not serve to the
component -- as Prosody does with the project's routing module -- and
delivers the rest to local entities.

Built on wokkel's L{XMPPComponentServerFactory} and L{Router} (they work on
Twisted 26); the changes: the component name is checked at the stream
header (C{host-unknown}, as Prosody does), the digest is compared in
constant time, routing goes by domain with local delivery, and while no
component is connected stanzas for remote domains are bounced with
C{remote-server-timeout} (Prosody's mod_component does the same).
"""

from __future__ import annotations

import collections
import hmac
import warnings

from twisted.logger import Logger
from twisted.words.protocols.jabber import error, xmlstream
from twisted.words.xish import domish

with warnings.catch_warnings():
    # wokkel 18 imports twisted.python.compat.unicode, deprecated since Twisted 21.
    warnings.simplefilter("ignore", DeprecationWarning)
    from wokkel.component import (
        NS_COMPONENT_ACCEPT,
        ListenComponentAuthenticator,
        Router,
        XMPPComponentServerFactory,
    )

__all__ = ["C2SStandIn", "LocalEntity", "ComponentAuthenticator", "domainOf",
           "NS_COMPONENT_ACCEPT"]

_log = Logger(namespace="s2sgate.demo.c2s")


def domainOf(address):
    """The lower-cased domain part of a JID string, or None."""
    if not address:
        return None
    bare = address.split("/", 1)[0]
    return bare.rsplit("@", 1)[-1].lower() or None


def bareOf(address):
    return address.split("/", 1)[0].lower() if address else None


class ComponentAuthenticator(ListenComponentAuthenticator):
    """
    wokkel's component authenticator, plus: only C{componentJid} may connect,
    and the handshake digest is compared in constant time.
    """

    def __init__(self, secret, componentJid, site=None):
        ListenComponentAuthenticator.__init__(self, secret)
        self.componentJid = componentJid
        self.site = site

    def streamStarted(self, rootElement):
        xmlstream.ListenAuthenticator.streamStarted(self, rootElement)
        if rootElement.defaultUri != self.namespace:
            self.xmlstream.sendStreamError(error.StreamError("invalid-namespace"))
            return
        if not self.xmlstream.thisEntity:
            self.xmlstream.sendStreamError(error.StreamError("improper-addressing"))
            return
        if self.xmlstream.thisEntity.full() != self.componentJid:
            self._refused("host-unknown", f"no component {self.xmlstream.thisEntity.full()} here")
            self.xmlstream.sendStreamError(error.StreamError(
                "host-unknown", text=f"no component {self.xmlstream.thisEntity.full()} here"))
            return
        self.xmlstream.sendHeader()
        self.xmlstream.addOnetimeObserver("/*", self.onElement)

    def onHandshake(self, handshake):
        expected = xmlstream.hashPassword(self.xmlstream.sid, str(self.secret))
        if not hmac.compare_digest(handshake.strip().lower().encode("ascii", "replace"),
                                   expected.encode("ascii")):
            self._refused("not-authorized", "wrong handshake digest")
            self.xmlstream.sendStreamError(error.StreamError("not-authorized",
                                                             text="Invalid hash"))
            return
        _log.info("{site}: component {jid} authenticated (handshake digest ok)",
                  site=self._siteName(), jid=self.componentJid, event="c2s.component_up")
        self.xmlstream.send("<handshake/>")
        self.xmlstream.dispatch(self.xmlstream, xmlstream.STREAM_AUTHD_EVENT)

    def _siteName(self):
        return self.site.name if self.site is not None else "c2s"

    def _refused(self, condition, why):
        _log.warn("{site}: component refused: {condition} ({why})", site=self._siteName(),
                  condition=condition, why=why, event="c2s.component_refused")


class ComponentServerFactory(XMPPComponentServerFactory):
    """wokkel's component server factory with L{ComponentAuthenticator}."""

    def __init__(self, router, secret, componentJid, site=None):
        XMPPComponentServerFactory.__init__(self, router, secret)
        self.authenticatorFactory = lambda: ComponentAuthenticator(secret, componentJid, site)

    def makeConnection(self, xs):
        XMPPComponentServerFactory.makeConnection(self, xs)
        # Small stanzas go out at once: no Nagle wait for the peer's delayed ACK.
        setNoDelay = getattr(xs.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)

    def onError(self, reason):
        # A stream error from the component: it is reported where it happens.
        pass

    def connectionLost(self, destination, xs, reason):
        XMPPComponentServerFactory.connectionLost(self, destination, xs, reason)
        self.router.site._componentDown(destination)


class _SiteRouter(Router):
    """Route by domain: local domains to local entities, the rest to the component."""

    def __init__(self, site):
        Router.__init__(self)
        self.site = site

    def route(self, stanza):
        site = self.site
        host = domainOf(stanza.getAttribute("to"))
        if host is None:
            return
        if host in site.domains:
            site._deliver(stanza)
            return
        xs = self.routes.get(host) or self.routes.get(site.componentJid)
        if xs is not None:
            xs.send(stanza)
            return
        site._bounce(stanza, "remote-server-timeout", "the s2s component is not connected")


class LocalEntity:
    """
    A simulated local user (or service): sends stanzas into the site and
    records what the site delivers to it.

    C{onStanza}, when set, is called with every stanza delivered; the last
    C{keep} stanzas are kept in C{received} and all are counted.
    """

    def __init__(self, site, jid, keep=100):
        self.site = site
        self.jid = jid
        self.received = collections.deque(maxlen=keep)
        self.count = 0
        self.onStanza = None

    def send(self, stanza):
        """Send a stanza (a L{domish.Element}); its C{from} defaults to this entity."""
        if not stanza.getAttribute("from"):
            stanza["from"] = self.jid
        self.site.router.route(stanza)

    def message(self, to, body, stanzaId, kind="chat", sender=None):
        """Build and send a message; returns it."""
        m = domish.Element((None, "message"))
        m["from"] = sender or self.jid
        m["to"] = to
        m["type"] = kind
        m["id"] = stanzaId
        m.addElement("body", content=body)
        self.send(m)
        return m

    def _deliver(self, stanza):
        self.count += 1
        self.received.append(stanza)
        if self.onStanza is not None:
            self.onStanza(stanza)


class C2SStandIn:
    """
    One site's c2s server: component port, router and local entities.

    @param name: a short label for messages ("alpha").
    @param domains: the domains this server hosts.
    @param componentJid: the one component allowed to connect.
    @param secret: the component secret.
    """

    def __init__(self, name, domains, componentJid, secret):
        self.name = name
        self.domains = frozenset(d.lower() for d in domains)
        self.componentJid = componentJid
        self.router = _SiteRouter(self)
        self.factory = ComponentServerFactory(self.router, secret, componentJid, site=self)
        self.users = {}       # bare JID -> LocalEntity
        self.services = {}    # domain -> LocalEntity (catches every address there)
        self.port = None

    # entities

    def addUser(self, jid):
        entity = self.users[bareOf(jid)] = LocalEntity(self, bareOf(jid))
        return entity

    def addService(self, domain):
        """An entity receiving everything addressed to C{domain} (a MUC service, say)."""
        entity = self.services[domain.lower()] = LocalEntity(self, domain.lower())
        return entity

    def _deliver(self, stanza):
        to = stanza.getAttribute("to")
        entity = self.users.get(bareOf(to)) or self.services.get(domainOf(to))
        if entity is None:
            self._bounce(stanza, "service-unavailable", f"no such user here: {to}")
            return
        entity._deliver(stanza)

    def _bounce(self, stanza, condition, text):
        if stanza.getAttribute("type") in ("error", "result"):
            return
        reply = error.StanzaError(condition, text=text).toResponse(stanza)
        self.router.route(reply)

    # the component port

    @property
    def componentConnected(self):
        return self.componentJid in self.router.routes

    def _componentDown(self, destination):
        _log.info("{site}: component {jid} disconnected", site=self.name, jid=destination,
                  event="c2s.component_down")

    def listen(self, reactor, port=0, interface="127.0.0.1"):
        """Listen for the component; returns the listening port (its C{getHost().port})."""
        self.port = reactor.listenTCP(port, self.factory, interface=interface)
        return self.port

    def stop(self):
        """Stop listening and drop the component connection."""
        for xs in list(self.router.routes.values()):
            if xs.transport is not None:
                xs.transport.loseConnection()
        if self.port is not None:
            d, self.port = self.port.stopListening(), None
            return d
        return None

