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

from dataclasses import dataclass
from typing import Callable

from twisted.internet import defer, error
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.logger import Logger

from s2sgate.net.resolver import DNSFailure, NoService, S2SResolver, Target

__all__ = ["Attempt", "ConnectFailed", "connect", "describeConnectError"]

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


def _defaultEndpointFor(reactor, timeout):
    def endpointFor(ip: str, port: int, family: int):
        if family == 6:
            return TCP6ClientEndpoint(reactor, ip, port, timeout=timeout)
        return TCP4ClientEndpoint(reactor, ip, port, timeout=timeout)

    return endpointFor


async def connect(
    reactor,
    resolver: S2SResolver,
    domain: str,
    factory,
    *,
    timeout: float = 10,
    direct_tls_factory: Callable[[Target], object] | None = None,
    log: Logger | None = None,
    endpointFor: Callable[[str, int, int], object] | None = None,
    attempts: list[Attempt] | None = None,
):
    """
    Connect C{factory} to C{domain}; return C{(protocol, target, address)}.

    @param timeout: TCP connect timeout per address, in seconds.
    @param direct_tls_factory: C{target -> IOpenSSLClientConnectionCreator};
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
        targets = await resolver.targets(domain, direct_tls=direct_tls_factory is not None)
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
            endpoint = endpointFor(address.ip, address.port, address.family)
            if target.direct_tls:
                endpoint = wrapClientTLS(direct_tls_factory(target), endpoint)
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
