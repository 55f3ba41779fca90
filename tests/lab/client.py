"""A Twisted c2s test client: plain TCP, SASL PLAIN, resource binding."""
from __future__ import annotations

from twisted.internet import defer, error
from twisted.words.protocols.jabber import client, xmlstream
from twisted.words.protocols.jabber import jid as jidmod
from twisted.words.xish import domish
from twisted.words.xish.xmlstream import STREAM_END_EVENT


def parse_xml(text, default_ns="jabber:client") -> domish.Element:
    """Parse one XML element from a string; unqualified elements get ``default_ns``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    elements = []
    parser = domish.elementStream()
    parser.DocumentStartEvent = lambda root: None
    parser.ElementEvent = elements.append
    parser.DocumentEndEvent = lambda: None
    parser.parse(f"<wrapper xmlns='{default_ns}'>{text}</wrapper>".encode("utf-8"))
    if len(elements) != 1:
        raise ValueError(f"expected exactly one XML element in {text!r}")
    return elements[0]


class TestClient:
    """A connected, authenticated, bound c2s session."""

    __test__ = False

    def __init__(self, xs, jid, connector):
        self.xs = xs
        self.jid = jid  # full JID after bind
        self.connector = connector
        self.received: list[domish.Element] = []
        self._consumed: set[int] = set()
        self._waiters: list[tuple] = []
        self._closed = defer.Deferred()
        for name in ("message", "presence", "iq"):
            xs.addObserver(f"/{name}", self._on_stanza, priority=-1)
        xs.addObserver(STREAM_END_EVENT, self._on_end)

    # -- receiving --------------------------------------------------------
    def _on_stanza(self, el):
        if el.handled and el.name == "iq":
            return
        self.received.append(el)
        for w in list(self._waiters):
            pred, d, call = w
            if id(el) in self._consumed:
                break
            try:
                ok = pred(el)
            except Exception:  # noqa: BLE001
                ok = False
            if ok:
                self._waiters.remove(w)
                self._consumed.add(id(el))
                if call.active():
                    call.cancel()
                d.callback(el)

    def _on_end(self, reason):
        if not self._closed.called:
            self._closed.callback(None)
        for pred, d, call in self._waiters:
            if call.active():
                call.cancel()
            d.errback(error.ConnectionDone(f"stream closed while waiting ({reason})"))
        self._waiters.clear()

    def wait_for(self, predicate, timeout=10) -> defer.Deferred:
        """Fire with the first received stanza (already received and not yet consumed,
        or future) for which ``predicate(el)`` is true; TimeoutError after ``timeout``."""
        from twisted.internet import reactor
        for el in self.received:
            if id(el) in self._consumed:
                continue
            try:
                ok = predicate(el)
            except Exception:  # noqa: BLE001
                ok = False
            if ok:
                self._consumed.add(id(el))
                return defer.succeed(el)
        d = defer.Deferred()

        def _timeout():
            entry = next((w for w in self._waiters if w[1] is d), None)
            if entry:
                self._waiters.remove(entry)
            d.errback(defer.TimeoutError(
                f"{self.jid}: no matching stanza within {timeout}s; received: "
                + ", ".join(e.toXml() for e in self.received[-10:])))

        call = reactor.callLater(timeout, _timeout)
        self._waiters.append((predicate, d, call))
        return d

    # -- sending ----------------------------------------------------------
    def send(self, stanza):
        """Send a domish.Element or an XML string (one element)."""
        if isinstance(stanza, (str, bytes)):
            stanza = parse_xml(stanza if isinstance(stanza, str) else stanza.decode())
        self.xs.send(stanza)

    def send_presence(self, **attrs):
        p = domish.Element((None, "presence"))
        for k, v in attrs.items():
            p[k] = v
        self.xs.send(p)

    def disconnect(self) -> defer.Deferred:
        if not self._closed.called:
            try:
                self.xs.sendFooter()
            except Exception:  # noqa: BLE001
                pass
            self.connector.disconnect()
        return self._closed


def connect_client(reactor, jid, password, host, port=5222, timeout=10) -> defer.Deferred:
    """Connect, authenticate (SASL over plain TCP, no TLS), bind; fire a TestClient."""
    if isinstance(jid, str):
        jid = jidmod.JID(jid)
    factory = client.XMPPClientFactory(jid, password)
    d = defer.Deferred()
    holder = {}

    def on_connected(xs):
        # buildProtocol() calls resetDelay(), which turns reconnecting back
        # on: switch it off again, or a closed test session comes back later
        # and replaces a newer one with the same resource.
        factory.stopTrying()
        # Drop STARTTLS: test servers run without certificates.
        xs.initializers = [i for i in xs.initializers
                           if not isinstance(i, xmlstream.TLSInitiatingInitializer)]

    def on_authd(xs):
        if not d.called:
            c = TestClient(xs, xs.authenticator.jid, holder["connector"])
            d.callback(c)

    def on_fail(failure):
        if not d.called:
            if "connector" in holder:
                holder["connector"].disconnect()
            d.errback(failure)

    factory.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT, on_connected)
    factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, on_authd)
    factory.addBootstrap(xmlstream.INIT_FAILED_EVENT, on_fail)
    factory.stopTrying()  # XmlStreamFactory is a ReconnectingClientFactory
    factory.clientConnectionFailed = lambda connector, reason: on_fail(reason)
    holder["connector"] = reactor.connectTCP(host, port, factory, timeout=timeout)

    def _timeout():
        if not d.called:
            holder["connector"].disconnect()
            d.errback(defer.TimeoutError(f"{jid}: login to {host}:{port} timed out"))

    call = reactor.callLater(timeout, _timeout)
    d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
    return d
