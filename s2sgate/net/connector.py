# -*- test-case-name: tests.test_connector -*-
"""
Open an outgoing s2s TCP connection to a remote domain.

Every target from L{S2SResolver.targets} and every address of each target is
tried in turn, connecting to IP addresses only (C{HostnameEndpoint} with a
host name would ask the machine's resolver, which must never see our
domains). Each failed step is recorded as an L{Attempt} and logged with
structured fields, so an operator can see why a domain is unreachable; when
everything fails, L{ConnectFailed} carries the XMPP condition and a short
text for the bounce.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer, error
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.logger import Logger
from zope.interface import implementer

from s2sgate.interfaces import IConnector
from s2sgate.net.resolver import Address, DNSFailure, NoService, S2SResolver, Target

__all__ = ["Attempt", "ConnectFailed", "Connection", "Connector", "connect",
           "describeConnectError", "endpointFor"]

_log = Logger(namespace="s2sgate.net.connector")

REMOTE_SERVER_NOT_FOUND = "remote-server-not-found"
REMOTE_SERVER_TIMEOUT = "remote-server-timeout"


@dataclass
class Attempt:
    """One failed step: C{step} is "dns" or "connect"; one line each."""

    step: str
    target: str
    error: str
    timedOut: bool = False
    ok: bool = False    # a step that worked, kept for the diagnostic log

    def __str__(self) -> str:
        return f"{self.step} {self.target}: {self.error}"


class ConnectFailed(Exception):
    """No target of the domain could be reached."""

    def __init__(self, condition: str, text: str, attempts: list[Attempt]):
        super().__init__(f"{condition}: {text}")
        self.condition = condition
        self.text = text
        self.attempts = attempts


def describeConnectError(exc: BaseException) -> tuple[str, bool]:
    """Return a short description of a TCP connect failure and whether it timed out."""
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused", False
    if isinstance(exc, (error.TimeoutError, error.TCPTimedOutError, defer.TimeoutError, TimeoutError)):
        return "connection timed out", True
    if isinstance(exc, error.NoRouteError):
        return "no route to host", False
    if isinstance(exc, error.ConnectError) and exc.osError is not None:
        return str(exc.osError).strip() or type(exc).__name__, False
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__), False


def endpointFor(reactor, address: Address, timeout: float, tlsCreator=None):
    """
    The client endpoint of one address: an IP, never a host name (a name
    would go to the machine's resolver); TLS from the first byte with
    C{tlsCreator}.
    """
    endpoint: Any
    if address.family == 6:
        endpoint = TCP6ClientEndpoint(reactor, address.ip, address.port, timeout=timeout)
    else:
        endpoint = TCP4ClientEndpoint(reactor, address.ip, address.port, timeout=timeout)
    if tlsCreator is not None:
        endpoint = wrapClientTLS(tlsCreator, endpoint)
    return endpoint


def _defaultEndpointFor(reactor, timeout):
    def tcpEndpoint(ip: str, port: int, family: int):
        return endpointFor(reactor, Address(ip, port, family), timeout)

    return tcpEndpoint


@dataclass
class Connection:
    """A connected outbound stream: how it was found, and what failed before."""

    protocol: Any
    target: Target | None
    address: Address | None
    attempts: list[Attempt] = field(default_factory=list)


@implementer(IConnector)
class Connector:
    """L{connect} with the gateway's resolver and timeout (the L{IConnector} of the pool)."""

    def __init__(self, reactor, resolver, timeout: float = 10,
                 endpointFor: Callable[[str, int, int], object] | None = None):
        self.reactor = reactor
        self.resolver = resolver
        self.timeout = timeout
        self.endpointFor = endpointFor

    async def connect(self, domain, factory, directTLS=None) -> Connection:
        attempts: list[Attempt] = []
        protocol, target, address = await connect(
            self.reactor, self.resolver, domain, factory, timeout=self.timeout,
            directTLS=directTLS, endpointFor=self.endpointFor, attempts=attempts)
        return Connection(protocol, target, address, attempts)


async def connect(
    reactor,
    resolver: S2SResolver,
    domain: str,
    factory,
    *,
    timeout: float = 10,
    directTLS: Callable[[Target], Any] | None = None,
    log: Logger | None = None,
    endpointFor: Callable[[str, int, int], object] | None = None,
    attempts: list[Attempt] | None = None,
):
    """
    Connect C{factory} to C{domain}; return C{(protocol, target, address)}.

    @param timeout: TCP connect timeout per address, in seconds.
    @param directTLS: C{target -> IOpenSSLClientConnectionCreator};
        when given, C{_xmpps-server} targets are looked up and connected
        with TLS from the first byte (XEP-0368). Otherwise they are not
        looked up at all.
    @param endpointFor: C{(ip, port, family) -> IStreamClientEndpoint};
        default TCP4/TCP6ClientEndpoint (tests pass fakes).
    @param attempts: list to append L{Attempt}s to (also on success, so
        the caller can log earlier failures); a new one by default.
    @raise ConnectFailed: nothing could be reached.
    """
    log = log if log is not None else _log
    if endpointFor is None:
        endpointFor = _defaultEndpointFor(reactor, timeout)
    attempts = attempts if attempts is not None else []

    def record(step: str, target: str, err: str, timedOut: bool) -> None:
        attempts.append(Attempt(step, target, err, timedOut))
        log.info(
            "s2s to {domain}: {step} {target} failed: {error}",
            domain=domain, step=step, target=target, error=err,
        )

    def fail(text: str) -> ConnectFailed:
        allTimeouts = bool(attempts) and all(a.timedOut for a in attempts)
        condition = REMOTE_SERVER_TIMEOUT if allTimeouts else REMOTE_SERVER_NOT_FOUND
        if len(attempts) > 1:
            text = f"{text} ({len(attempts)} attempts failed)"
        log.warn(
            "s2s to {domain} failed ({condition}): {text}",
            domain=domain, condition=condition, text=text, step="done", target=domain,
            error=text,
        )
        return ConnectFailed(condition, text, attempts)

    try:
        targets = await resolver.targets(domain, directTLS=directTLS is not None)
    except NoService as e:
        record("dns", domain, e.text, False)
        raise fail(e.text) from None
    except DNSFailure as e:
        record("dns", domain, e.text, e.timedOut)
        raise fail(e.text) from None

    lastDNS: str | None = None
    lastConnect: str | None = None
    for target in targets:
        try:
            addresses = await resolver.addresses(target.host, target.port)
        except DNSFailure as e:
            record("dns", target.host, e.text, e.timedOut)
            lastDNS = e.text
            continue
        for address in addresses:
            endpoint: Any = endpointFor(address.ip, address.port, address.family)
            if target.direct_tls and directTLS is not None:
                endpoint = wrapClientTLS(directTLS(target), endpoint)
            # Name the host (or, for an override, the domain) next to the IP.
            where = f"{address} ({target.host if target.host != address.ip else domain})"
            if target.direct_tls:
                where += " [direct TLS]"
            log.debug(
                "s2s to {domain}: connecting to {target}",
                domain=domain, step="connect", target=where, error=None,
            )
            try:
                protocol = await endpoint.connect(factory)
            except defer.CancelledError:
                raise
            except Exception as e:
                err, timedOut = describeConnectError(e)
                record("connect", where, err, timedOut)
                lastConnect = f"connecting to {where}: {err}"
                continue
            return protocol, target, address

    # A connection failure says more than a DNS failure of a backup target.
    raise fail(lastConnect or lastDNS or f"DNS: no targets for {domain}")
