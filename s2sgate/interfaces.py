# -*- test-case-name: tests.test_interfaces -*-
"""
The seams between the gateway's parts.

Each interface names what one part needs of another, so that a part can be
built, tested and replaced alone: the resolver and connector under the
outbound streams, the negotiation steps and offers inside them, the session
table every reader shares, and the component link to the c2s server.
"""

from zope.interface import Attribute, Interface


class ISendNow(Interface):
    """A transport that can send what it holds in this reactor turn."""

    def sendNow():
        """Send what was written, now, not at the socket's next writable event."""


class IResolver(Interface):
    """Where a remote domain's s2s service is (L{s2sgate.net.resolver.S2SResolver})."""

    def targets(domain, directTLS=False):
        """
        Coroutine: the ordered L{Target}s of C{domain}; raises L{NoService}
        or L{DNSFailure}.
        """

    def addresses(host, port):
        """Coroutine: the L{Address}es of one target; raises L{DNSFailure}."""

    def tlsa(target):
        """
        Coroutine: the DNSSEC-authenticated L{TLSASet} of a C{secure}
        target, or None (no DANE); raises L{DNSFailure}.
        """


class IConnector(Interface):
    """Opens the TCP (or direct TLS) connection of an outbound stream."""

    def connect(domain, factory, directTLS=None):
        """
        Coroutine: connect C{factory} to C{domain}'s first reachable address
        and return a L{s2sgate.net.connector.Connection}; raises
        L{ConnectFailed} with every failed attempt.

        @param directTLS: C{target -> IOpenSSLClientConnectionCreator}, or
            None to leave C{_xmpps-server} targets out.
        """


class IOutcome(Interface):
    """How one negotiation step ended (L{s2sgate.s2s.negotiation})."""

    def apply(negotiation):
        """
        Act on the stream's negotiation: restart it, finish it, fail it.
        Returns True when the step ended the round of C{<features/>},
        False to let the next step look at the same features.
        """


class IStep(Interface):
    """
    One step of the initiating side's negotiation (STARTTLS, SASL EXTERNAL,
    dialback...): a fresh object per stream, so it may keep its own state.
    """

    name = Attribute("The diagnostic step it reports failures as: 'tls', 'auth', ...")

    def applies(negotiation, features):
        """Whether to run now, given the offered L{StreamFeatures}."""

    def run(negotiation, features):
        """Coroutine returning an L{IOutcome}."""


class IDeliveryTracker(Interface):
    """
    What an established outbound stream knows of the fate of the stanzas
    it wrote: with acks (XEP-0198) which ones the peer handled; without,
    only how many were written.
    """

    enabled = Attribute("Whether the peer acknowledges stanzas on this stream")
    sent = Attribute("Stanzas written on the stream")
    acked = Attribute("Stanzas the peer acknowledged, or None when it cannot say")
    unacked = Attribute("Stanzas written and not acknowledged, or None when unknown")

    def stanzaSent(element, resent=False):
        """A stanza was written (C{resent}: the second time, after a lost stream)."""

    def elementReceived(element):
        """An element on the established stream; True when it was the tracker's."""

    def drained():
        """A Deferred that fires once everything written is acknowledged (or at once)."""

    def unacknowledged():
        """C{[(element, resent)]} not acknowledged, oldest first."""

    def release():
        """Return the unacknowledged C{[(element, resent)]} and stop holding them."""

    def streamGone():
        """The connection is gone: stop timers, release waiters."""


class IOffer(Interface):
    """
    One feature the receiving side offers: it adds to the C{<features/>} it
    advertises and handles its own elements.  A fresh object per stream.
    """

    def advertise(stream, features):
        """Add this offer's child to C{features} (a domish element) if it applies now."""

    def handlers():
        """
        C{{(namespace, name): handler(stream, element)}}; C{name} None
        takes every element of the namespace.  The keys may depend on the
        runtime, not on the stream: one table per runtime says which offer
        takes what (L{Runtime.offerIndex}).
        """

    def streamClosed(stream):
        """The stream is gone: drop what this offer still waits for."""


class INegotiationObserver(Interface):
    """What a negotiation reports as it goes (the diagnostic trace of C{check})."""

    def headerReceived(header):
        """The peer's stream header (after each restart)."""

    def featuresReceived(features):
        """The peer's L{StreamFeatures} (empty for a pre-1.0 peer)."""

    def tlsStarted(direct):
        """We asked for TLS (STARTTLS proceed, or a direct TLS connection)."""

    def tlsEstablished(connection):
        """The TLS handshake completed; C{connection} is the pyOpenSSL connection."""

    def streamErrorReceived(condition, text):
        """The peer sent a stream error."""

    def streamErrorSent(condition, text):
        """We sent a stream error (the peer's XML was refused)."""

    def streamEnded():
        """The peer sent its closing tag."""

    def connectionLost(reason):
        """The connection is gone (a Failure)."""


class ISession(Interface):
    """An s2s stream as the session table and its readers see it."""

    direction = Attribute("'in' or 'out'")
    streamId = Attribute("The stream id")
    pairs = Attribute(
        "Authenticated (sender domain, receiving domain) pairs of the stanzas it carries: "
        "(local, remote) outbound, (remote, local) inbound")
    authMethod = Attribute("How the first pair was authenticated, or None")
    secure = Attribute("Whether TLS protects the stream")
    bidi = Attribute("Whether it carries stanzas both ways (XEP-0288)")
    closing = Attribute("Whether our closing tag is out")

    def describe():
        """One line naming the stream, for logs."""

    def closeStream(wait=5):
        """Send the closing tag; drop the connection if the peer does not answer."""


class ISessionTable(Interface):
    """Every open s2s stream and the authenticated pairs each carries."""

    def track(session):
        """A stream opened (not yet authenticated)."""

    def authenticated(session, local, remote):
        """C{session} now carries (local, remote)."""

    def untrack(session):
        """A stream closed: forget it and its pairs."""

    def outgoing(local, remote):
        """The open outbound stream for (local, remote), or None."""

    def pauseInbound():
        """Stop reading from inbound streams that carry stanzas (until resumed)."""

    def resumeInbound():
        """Read from inbound streams again."""

    def unauthenticated(host=None):
        """How many tracked inbound streams have no pair yet (from C{host}, or in all)."""


class IStanzaSink(Interface):
    """Something stanzas are handed to."""

    def send(element):
        """Take one stanza."""


class IOutbound(Interface):
    """The outbound side: carries a local user's stanza to a remote domain."""

    def send(local, remote, element):
        """Send C{element} on the (local, remote) stream, opening it if needed."""


class IComponentLink(IStanzaSink):
    """The XEP-0114 link to the c2s server (L{s2sgate.gateway.component})."""

    state = Attribute("'down', 'connecting', 'up' or 'auth-failed'")
    undeliverable = Attribute("stanzas handed to it after it stopped: neither delivered nor "
                              "bounced (counted for the shutdown's log line)")

    def whenUp():
        """A Deferred that fires once the link is up."""
