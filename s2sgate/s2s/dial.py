# -*- test-case-name: tests.test_outbound_tls -*-
"""
Open one negotiated outbound stream: connect through the L{IConnector},
put how the peer was found at the head of the stream's diagnostic log,
and wait for its negotiation.

A direct TLS target that connects but then fails (TLS handshake,
certificate, authentication) is not the end: the STARTTLS targets get
their turn, as XEP-0368 asks.  Used by the outbound links and by the
dialback verify leg alike.
"""

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from s2sgate.net.connector import Attempt, ConnectFailed

log = Logger()


async def dial(connector, local, remote, build, runtime):
    """
    Return the negotiated stream C{build()} made, or raise L{ConnectFailed}.

    @param build: makes a fresh L{InitiatingStream} for each connection.
    """
    directTLS = runtime.requirements.tlsEnabled and runtime.tls is not None
    try:
        return await _dialOnce(connector, local, remote, build, runtime, directTLS)
    except _DirectTLSFailed as e:
        first = e.failure
    log.info("direct TLS to {remote} failed ({text}); trying STARTTLS targets",
             remote=remote, text=first.text, event="outbound.direct_tls_fallback")
    try:
        return await _dialOnce(connector, local, remote, build, runtime, False)
    except ConnectFailed as second:
        raise ConnectFailed(second.condition, second.text,
                            list(first.attempts) + list(second.attempts)) from None


class _DirectTLSFailed(Exception):
    def __init__(self, failure):
        self.failure = failure


async def _dialOnce(connector, local, remote, build, runtime, directTLS):
    readies = []

    def buildOne():
        stream = build()
        # Keep the Deferred itself: the stream drops its reference once it
        # fires, which may happen before the connector returns.
        readies.append((stream, stream.ready))
        return stream

    creator = None
    if directTLS:
        # XEP-0368: _xmpps-server targets first, TLS from the first byte.
        def creator(target):
            return runtime.tls.clientCreator(remote, local, alpn=True)
    connection = await connector.connect(remote, Factory.forProtocol(buildOne), directTLS=creator)
    ready = None
    for built, itsReady in readies:
        if built is connection.protocol:
            stream, ready = built, itsReady
        else:
            # A raced connection that lost (closed by the connector).
            itsReady.addErrback(lambda f: None)
    assert ready is not None, "the connector returned a protocol it did not build"
    if connection.dane is not None:
        stream.useDANE(connection.dane)
    if connection.target is not None:
        # The diagnostic log starts with how the peer was found.
        how = "direct TLS" if connection.target.direct_tls else "STARTTLS/plain"
        dnssec = ""
        if connection.target.secure:
            dnssec = (f"; DNSSEC, TLSA {connection.dane.describe()}" if connection.dane
                      else "; DNSSEC, no TLSA")
        # The connector's own line for the winner repeats the stream's
        # "connected to" line: keep the addresses that failed or lost the race.
        stream.trace[:0] = [a for a in connection.attempts if not a.ok] + [Attempt(
            "dns", remote, f"{remote} -> {connection.target.host}:{connection.target.port} "
            f"({how}) -> {connection.address}{dnssec}", ok=True)]
    try:
        return await ready
    except ConnectFailed as e:
        if connection.target is not None and connection.target.direct_tls:
            raise _DirectTLSFailed(e) from None
        raise
