# -*- test-case-name: tests.test_connector -*-
"""
Open an outgoing s2s TCP connection to a remote domain.

The addresses of every target from L{S2SResolver.targets} are raced, happy
eyeballs style (RFC 8305): a dead address costs one attempt delay (250 ms),
not a whole connection timeout. Only IP addresses are connected to
(C{HostnameEndpoint} with a host name would ask the machine's resolver,
which must never see our domains). Each address tried is recorded as an L{Attempt} and logged with
structured fields, so an operator can see why a domain is unreachable; when
everything fails, L{ConnectFailed} carries the XMPP condition and a short
text for the bounce.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from s2sgate.interfaces import IConnector
from s2sgate.net.resolver import (
    Address,
    DNSFailure,
    NoService,
    S2SResolver,
    Target,
    TLSASet,
)
from s2sgate.net.tls import startTLSCapable, wrapClientTLS
from s2sgate.timers import cancel

__all__ = ["ATTEMPT_DELAY", "Attempt", "ConnectFailed", "Connection", "Connector", "connect",
           "describeConnectError", "endpointFor", "interleave"]

_log = Logger(namespace="s2sgate.net.connector")

REMOTE_SERVER_NOT_FOUND = "remote-server-not-found"
REMOTE_SERVER_TIMEOUT = "remote-server-timeout"

# RFC 8305 section 5: the recommended "Connection Attempt Delay".
ATTEMPT_DELAY = 0.25


@dataclass
class Attempt:
    """One step of a connection: C{step} is "dns" or "connect"; one line each."""

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
    dane: TLSASet | None = None   # the target's authenticated TLSA records (RFC 7673)


@implementer(IConnector)
class Connector:
    """L{connect} with the gateway's resolver and timeouts (the L{IConnector} of the pool)."""

    def __init__(self, reactor, resolver, timeout: float = 10,
                 endpointFor: Callable[[str, int, int], object] | None = None,
                 attemptDelay: float = ATTEMPT_DELAY):
        self.reactor = reactor
        self.resolver = resolver
        self.timeout = timeout
        self.endpointFor = endpointFor
        self.attemptDelay = attemptDelay

    async def connect(self, domain, factory, directTLS=None) -> Connection:
        attempts: list[Attempt] = []
        endpointFor = self.endpointFor or _defaultEndpointFor(self.reactor, self.timeout)
        race = _Race(self.reactor, self.resolver, domain, factory,
                     attemptDelay=self.attemptDelay, directTLS=directTLS, log=_log,
                     endpointFor=endpointFor, attempts=attempts)
        protocol, target, address = await race.start()
        return Connection(protocol, target, address, attempts, race.tlsa.get(target))


def interleave(addresses: list[Address]) -> list[Address]:
    """
    Alternate the address families (RFC 8305 section 4), the family of the
    first address first: a family that does not work then costs one
    attempt delay, not one per address.
    """
    byFamily: dict[int, list[Address]] = {}
    for address in addresses:
        byFamily.setdefault(address.family, []).append(address)
    queues = list(byFamily.values())
    out: list[Address] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out += [q[i] for q in queues if i < len(q)]
    return out


def connect(
    reactor,
    resolver: S2SResolver,
    domain: str,
    factory,
    *,
    timeout: float = 10,
    attemptDelay: float = ATTEMPT_DELAY,
    directTLS: Callable[[Target], Any] | None = None,
    log: Logger | None = None,
    endpointFor: Callable[[str, int, int], object] | None = None,
    attempts: list[Attempt] | None = None,
) -> defer.Deferred:
    """
    Connect C{factory} to C{domain}; a Deferred of C{(protocol, target, address)}.

    The addresses of the targets, in SRV order and each target's families
    interleaved, are raced as RFC 8305 says: the next attempt starts
    C{attemptDelay} seconds after the previous one started while none has
    connected (at once when one fails); the first to connect wins and the
    others are cancelled.

    @param reactor: L{IReactorTime} for the attempt delay (and, without
        C{endpointFor}, L{IReactorTCP} for the connections).
    @param timeout: TCP connect timeout per address, in seconds.
    @param directTLS: C{target -> IOpenSSLClientConnectionCreator};
        when given, C{_xmpps-server} targets are looked up and connected
        with TLS from the first byte (XEP-0368). Otherwise they are not
        looked up at all.
    @param endpointFor: C{(ip, port, family) -> IStreamClientEndpoint};
        default TCP4/TCP6ClientEndpoint (tests pass fakes).
    @param attempts: list to append L{Attempt}s to, one per address tried
        (also on success, so the caller can log the earlier ones); a new
        one by default.
    @raise ConnectFailed: nothing could be reached.
    """
    if endpointFor is None:
        endpointFor = _defaultEndpointFor(reactor, timeout)
    race = _Race(reactor, resolver, domain, factory, attemptDelay=attemptDelay,
                 directTLS=directTLS, log=log if log is not None else _log,
                 endpointFor=endpointFor,
                 attempts=attempts if attempts is not None else [])
    return race.start()


@dataclass(eq=False)
class _Try:
    """One connection attempt in flight."""

    deferred: defer.Deferred
    target: Target
    address: Address
    where: str
    started: float


class _Race:
    """
    The state of one L{connect}: targets still to resolve, addresses still
    to try, attempts in flight, the attempt-delay timer.
    """

    def __init__(self, reactor: Any, resolver: Any, domain: str, factory: Any, *,
                 attemptDelay: float, directTLS: Callable[[Target], Any] | None,
                 log: Logger, endpointFor: Callable[[str, int, int], Any],
                 attempts: list[Attempt]) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.domain = domain
        self.factory = factory
        self.attemptDelay = attemptDelay
        self.directTLS = directTLS
        self.log = log
        self.endpointFor = endpointFor
        self.attempts = attempts
        self.targets: collections.deque[Target] = collections.deque()
        self.queue: collections.deque[tuple[Target, Address]] = collections.deque()
        self.flying: list[_Try] = []
        self.lookup: defer.Deferred | None = None
        self.tlsa: dict[Target, TLSASet | None] = {}
        self.timer: Any = None
        self.over = False
        self.lastDNS: str | None = None
        self.lastConnect: str | None = None
        self.result: defer.Deferred = defer.Deferred(lambda d: self._stop())

    def start(self) -> defer.Deferred:
        self.lookup = defer.ensureDeferred(
            self.resolver.targets(self.domain, directTLS=self.directTLS is not None))
        self.lookup.addBoth(self._gotTargets)
        return self.result

    # -- bookkeeping ----------------------------------------------------------

    def _record(self, step: str, target: str, err: str, timedOut: bool) -> None:
        self.attempts.append(Attempt(step, target, err, timedOut))
        self.log.info(
            "s2s to {domain}: {step} {target} failed: {error}",
            domain=self.domain, step=step, target=target, error=err,
        )

    def _fail(self, text: str) -> None:
        self.over = True
        self._stop()
        attempts = self.attempts
        allTimeouts = bool(attempts) and all(a.timedOut for a in attempts)
        condition = REMOTE_SERVER_TIMEOUT if allTimeouts else REMOTE_SERVER_NOT_FOUND
        if len(attempts) > 1:
            text = f"{text} ({len(attempts)} attempts failed)"
        self.log.warn(
            "s2s to {domain} failed ({condition}): {text}",
            domain=self.domain, condition=condition, text=text, step="done",
            target=self.domain, error=text,
        )
        self.result.errback(ConnectFailed(condition, text, attempts))

    def _stop(self) -> None:
        """Cancel the timer, the lookup and every attempt in flight."""
        self.over = True
        cancel(self.timer)
        self.timer = None
        lookup, self.lookup = self.lookup, None
        if lookup is not None:
            lookup.cancel()
        flying, self.flying = self.flying, []
        for attempt in flying:
            attempt.deferred.cancel()

    # -- DNS ------------------------------------------------------------------

    def _gotTargets(self, result):
        self.lookup = None
        if isinstance(result, Failure):
            if result.check(defer.CancelledError):
                return None
            if result.check(NoService):
                self._record("dns", self.domain, result.value.text, False)
                self._fail(result.value.text)
                return None
            if result.check(DNSFailure):
                self._record("dns", self.domain, result.value.text, result.value.timedOut)
                self._fail(result.value.text)
                return None
            self.over = True
            self.result.errback(result)
            return None
        self.targets.extend(result)
        self._next()
        return None

    def _gotAddresses(self, result, target: Target):
        self.lookup = None
        if isinstance(result, Failure) and result.check(defer.FirstError):
            result = result.value.subFailure
        if isinstance(result, Failure):
            if result.check(defer.CancelledError):
                return None
            if not result.check(DNSFailure):
                self._stop()
                self.result.errback(result)
                return None
            self._record("dns", target.host, result.value.text, result.value.timedOut)
            self.lastDNS = result.value.text
        else:
            addresses, self.tlsa[target] = result
            self.queue.extend((target, address) for address in interleave(addresses))
        self._next()
        return None

    # -- the race -------------------------------------------------------------

    def _next(self) -> None:
        """Start the next attempt, looking up the next target's addresses first if needed."""
        if self.over or self.lookup is not None:
            return     # a lookup in progress starts the attempt when it ends
        cancel(self.timer)
        self.timer = None
        if self.queue:
            self._try(*self.queue.popleft())
        elif self.targets:
            target = self.targets.popleft()
            # TLSA beside the addresses: known before a connection can be made.
            self.lookup = defer.gatherResults(
                [defer.ensureDeferred(self.resolver.addresses(target.host, target.port)),
                 defer.ensureDeferred(self.resolver.tlsa(target))], consumeErrors=True)
            self.lookup.addBoth(self._gotAddresses, target)
        elif not self.flying:
            # A connection failure says more than a DNS failure of a backup target.
            self._fail(self.lastConnect or self.lastDNS or f"DNS: no targets for {self.domain}")

    def _try(self, target: Target, address: Address) -> None:
        endpoint: Any = self.endpointFor(address.ip, address.port, address.family)
        # Either way TLS writes through (s2sgate.net.tls).
        if target.direct_tls and self.directTLS is not None:
            endpoint = wrapClientTLS(self.directTLS(target), endpoint)
        else:
            endpoint = startTLSCapable(endpoint)
        # Name the host (or, for an override, the domain) next to the IP.
        where = f"{address} ({target.host if target.host != address.ip else self.domain})"
        if target.direct_tls:
            where += " [direct TLS]"
        self.log.debug(
            "s2s to {domain}: connecting to {target}",
            domain=self.domain, step="connect", target=where, error=None,
        )
        attempt = _Try(defer.maybeDeferred(endpoint.connect, self.factory), target, address,
                       where, self.reactor.seconds())
        self.flying.append(attempt)
        attempt.deferred.addBoth(self._tried, attempt)
        if attempt in self.flying and (self.queue or self.targets):
            # Still connecting: the next address gets its turn after the delay.
            self.timer = self.reactor.callLater(self.attemptDelay, self._next)

    def _tried(self, result, attempt: _Try):
        if attempt in self.flying:
            self.flying.remove(attempt)
        if isinstance(result, Failure):
            if self.over:
                return None    # cancelled: the race is decided
            err, timedOut = describeConnectError(result.value)
            self._record("connect", attempt.where, err, timedOut)
            self.lastConnect = f"connecting to {attempt.where}: {err}"
            self._next()
            return None
        if self.over:
            # Connected although the race was decided: not needed.
            result.transport.abortConnection()
            return None
        losers = list(self.flying)
        for loser in losers:
            self.attempts.append(Attempt(
                "connect", loser.where,
                f"abandoned, still connecting when {attempt.address} connected"))
        took = round((self.reactor.seconds() - attempt.started) * 1000)
        self.attempts.append(Attempt("connect", attempt.where, f"connected in {took} ms", ok=True))
        self._stop()
        self.result.callback((result, attempt.target, attempt.address))
        return None
