# -*- test-case-name: tests.test_resolver -*-
"""
Where to connect for a remote XMPP domain (RFC 6120 section 3.2, XEP-0368).

The resolver turns a domain into an ordered list of L{Target}s (SRV for
C{_xmpps-server._tcp} and C{_xmpp-server._tcp}, RFC 2782 ordering, the "."
target meaning "no service", fallback to the domain itself on the configured
port) and a host into an ordered list of L{Address}es (A and AAAA, in the
configured family order).

It only ever asks the nameservers it was built with: Twisted's
C{client.createResolver} also reads /etc/resolv.conf and /etc/hosts, and
C{srvconnect}/C{HostnameEndpoint} use the machine's resolver, which would
leak test domains to the real DNS (see DESIGN.md, "Facts about the stack").
"""

from __future__ import annotations

import ipaddress
import random
import socket
from dataclasses import dataclass
from typing import Iterable, Mapping

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names import error as dnserror
from zope.interface import implementer

from s2sgate.interfaces import IResolver
from s2sgate.net.dnssec import TLSA

__all__ = [
    "Target",
    "Address",
    "TLSARecord",
    "TLSASet",
    "NoService",
    "DNSFailure",
    "S2SResolver",
    "orderSRV",
    "XMPPS_SERVER",
    "XMPP_SERVER",
]

XMPPS_SERVER = "_xmpps-server._tcp."
XMPP_SERVER = "_xmpp-server._tcp."

_log = Logger(namespace="s2sgate.net.resolver")


@dataclass(frozen=True)
class Target:
    """A host and port to connect to; C{direct_tls} for XEP-0368 targets."""

    host: str
    port: int
    direct_tls: bool = False
    secure: bool = False    # found through a DNSSEC-authenticated SRV answer (DANE may apply)


@dataclass(frozen=True)
class TLSARecord:
    """One TLSA record (RFC 6698): usage, selector, matching type, data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()[:16]}..."


@dataclass(frozen=True)
class TLSASet:
    """The DNSSEC-authenticated TLSA records of one target (RFC 7673 section 3.2)."""

    name: str                          # e.g. "_5269._tcp.xmpp.example.com"
    host: str                          # the SRV target: a reference identity too (RFC 7673 §4)
    records: tuple[TLSARecord, ...]

    def describe(self) -> str:
        return f"{self.name}: " + ", ".join(str(r) for r in self.records)


@dataclass(frozen=True)
class Address:
    """One IP address (and the target's port) to try; C{family} is 4 or 6."""

    ip: str
    port: int
    family: int

    def __str__(self) -> str:
        if self.family == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


class NoService(Exception):
    """The domain's SRV answer is the single "." target: no s2s service."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class DNSFailure(Exception):
    """A lookup failed (no such domain, no address, server failure, timeout)."""

    def __init__(self, text: str, timedOut: bool = False):
        super().__init__(text)
        self.text = text
        self.timedOut = timedOut


def _isTimeout(exc: BaseException) -> bool:
    # DNSQueryTimeoutError subclasses defer.TimeoutError.
    return isinstance(exc, (defer.TimeoutError, TimeoutError))


def ipFamily(host: str) -> int | None:
    """Return 4 or 6 if C{host} is an IP literal, else L{None}."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def orderSRV(records: Iterable[dns.Record_SRV], rng: random.Random) -> list[dns.Record_SRV]:
    """
    Order SRV records as RFC 2782 says: priority ascending; within one
    priority, repeatedly pick by weight (weight-0 records first in the
    running sum, so they are chosen only when the random number is 0 or
    when nothing else is left).
    """
    byPriority: dict[int, list[dns.Record_SRV]] = {}
    for r in records:
        byPriority.setdefault(r.priority, []).append(r)
    ordered: list[dns.Record_SRV] = []
    for prio in sorted(byPriority):
        # Stable start order: weight-0 first, as the RFC requires.
        remaining = sorted(byPriority[prio], key=lambda r: r.weight != 0)
        while remaining:
            total = sum(r.weight for r in remaining)
            pick = rng.randint(0, total)
            running = 0
            for i, r in enumerate(remaining):
                running += r.weight
                if running >= pick:
                    ordered.append(remaining.pop(i))
                    break
    return ordered


def _srvTargetName(record: dns.Record_SRV) -> str:
    name = record.target.name
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return name.rstrip(".").lower()


# Outcomes of one SRV lookup.
_NONE = "none"  # NXDOMAIN / NODATA / no SRV records in the answer
_DOT = "dot"  # the single "." target


@implementer(IResolver)
class S2SResolver:
    """
    Resolve remote XMPP domains for outgoing s2s connections.

    @param reactor: used for the default Twisted resolver (timeouts, sockets).
    @param timeout: seconds per DNS query attempt.
    @param retries: how many times a query is re-sent after a timeout.
    @param nameservers: C{(ip, port)} pairs; empty means /etc/resolv.conf.
    @param port: port used when the domain has no SRV records.
    @param ip_versions: address families to use, in order (e.g. C{(6, 4)}).
    @param overrides: C{domain -> (ip, port)}; such domains skip DNS.
    @param resolver: an L{twisted.internet.interfaces.IResolver} to use
        instead of building one (tests, caching resolvers).
    @param rng: a L{random.Random} for SRV weight selection (tests).
    @param dnssec: an L{AuthenticatedLookup} (or a fake with its C{lookup}):
        SRV and TLSA are then asked with the AD bit and targets of
        authenticated SRV answers are C{secure}; None: no DANE.
    """

    def __init__(
        self,
        reactor,
        *,
        timeout: float = 10,
        retries: int = 2,
        nameservers: Iterable[tuple[str, int]] = (),
        port: int = 5269,
        ip_versions: Iterable[int] = (4, 6),
        overrides: Mapping[str, tuple[str, int]] | None = None,
        resolver=None,
        rng: random.Random | None = None,
        log: Logger | None = None,
        dnssec=None,
    ):
        self.queryTimeout = tuple([timeout] * (int(retries) + 1))
        self.port = port
        self.ipVersions = tuple(v for v in ip_versions if v in (4, 6))
        self.overrides = dict(overrides or {})
        self.rng = rng if rng is not None else random.SystemRandom()
        self.log = log if log is not None else _log
        if resolver is None:
            servers = [(str(ip), int(p)) for ip, p in nameservers]
            if servers:
                # resolv=None: never reads resolv.conf, asks only these servers.
                resolver = client.Resolver(
                    servers=servers, reactor=reactor, timeout=self.queryTimeout
                )
            else:
                resolver = client.Resolver(
                    resolv="/etc/resolv.conf", reactor=reactor, timeout=self.queryTimeout
                )
        self.resolver = resolver
        self.dnssec = dnssec

    # -- SRV -------------------------------------------------------------

    async def _ask(self, name: str, rrtype: int, what: str):
        """C{(answers, authenticated)}; L{dnserror.DNSNameError} for NXDOMAIN."""
        try:
            if self.dnssec is not None:
                answer = await self.dnssec.lookup(name, rrtype)
                if answer.rCode == dns.ENAME:
                    raise dnserror.DNSNameError(name)
                if answer.rCode != dns.OK:
                    raise dnserror.DNSServerError(name)
                return list(answer.answers), answer.authenticated
            answers, _auth, _add = await self.resolver.lookupService(
                name, timeout=self.queryTimeout)
            return answers, False
        except (dnserror.DNSNameError, defer.CancelledError):
            raise
        except Exception as e:
            if _isTimeout(e):
                raise DNSFailure(f"DNS: timeout looking up {name}", timedOut=True) from None
            raise DNSFailure(
                f"DNS: {what} lookup for {name} failed ({type(e).__name__})"
            ) from None

    async def _srv(self, name: str):
        """
        Look up one SRV name: C{(outcome, authenticated)}, the outcome a
        list of records, L{_NONE} or L{_DOT}. Timeouts and other server
        errors raise L{DNSFailure}.
        """
        try:
            answers, authenticated = await self._ask(name, dns.SRV, "SRV")
        except dnserror.DNSNameError:
            return _NONE, False
        # Follow what the resolver gives: CNAMEs in the chain are skipped,
        # only the SRV records count.
        records = [a.payload for a in answers if a.type == dns.SRV]
        if not records:
            return _NONE, authenticated
        if len(records) == 1 and _srvTargetName(records[0]) == "":
            return _DOT, authenticated
        # A "." among several records is meaningless; drop it.
        records = [r for r in records if _srvTargetName(r) != ""]
        return orderSRV(records, self.rng), authenticated

    async def tlsa(self, target: Target) -> TLSASet | None:
        """
        The DNSSEC-authenticated TLSA records of C{target}
        (C{_<port>._tcp.<host>}), or None: no DANE for it (not a secure
        target, no records, or an answer without the AD bit). A failed
        lookup of a secure target raises L{DNSFailure}: such a target is
        not used (RFC 7673 section 3.2).
        """
        if self.dnssec is None or not target.secure:
            return None
        name = f"_{target.port}._tcp.{target.host}"
        try:
            answers, authenticated = await self._ask(name, TLSA, "TLSA")
        except dnserror.DNSNameError:
            return None
        if not authenticated:
            return None
        records = []
        for a in answers:
            if a.type != TLSA:
                continue
            data = a.payload.data
            if len(data) >= 3:
                records.append(TLSARecord(data[0], data[1], data[2], bytes(data[3:])))
        return TLSASet(name, target.host, tuple(records)) if records else None

    async def targets(self, domain: str, directTLS: bool = False) -> list[Target]:
        """
        Return the ordered targets for C{domain}.

        With C{directTLS}, C{_xmpps-server} targets come first. Raises
        L{NoService} for the "." target, L{DNSFailure} when the
        C{_xmpp-server} lookup fails (timeout: C{timedOut=True}) and no
        direct TLS targets were found.
        """
        if domain in self.overrides:
            ip, port = self.overrides[domain]
            return [Target(str(ip), int(port))]

        xmppsD = None
        if directTLS:
            xmppsD = defer.ensureDeferred(self._srv(XMPPS_SERVER + domain))
        xmppD = defer.ensureDeferred(self._srv(XMPP_SERVER + domain))

        xmpps: object = _NONE
        xmppsSecure = True
        if xmppsD is not None:
            try:
                xmpps, xmppsSecure = await xmppsD
            except DNSFailure as e:
                # Direct TLS is optional: its failure alone is not fatal.
                self.log.info(
                    "{domain}: ignoring direct TLS SRV failure: {error}",
                    domain=domain, step="dns", target=XMPPS_SERVER + domain, error=e.text,
                )
                xmpps, xmppsSecure = _NONE, False
            except BaseException:
                xmppD.cancel()
                xmppD.addErrback(lambda f: None)
                raise
        try:
            xmpp, xmppSecure = await xmppD
        except DNSFailure:
            if isinstance(xmpps, list) and xmpps:
                xmpp, xmppSecure = _NONE, False
            else:
                raise

        result: list[Target] = []
        if isinstance(xmpps, list):
            result += [Target(_srvTargetName(r), r.port, True, xmppsSecure) for r in xmpps]
        if isinstance(xmpp, list):
            result += [Target(_srvTargetName(r), r.port, False, xmppSecure) for r in xmpp]
        if result:
            return result
        if xmpp == _DOT:
            raise NoService(f"DNS: {domain} has no XMPP service (SRV '.')")
        # An authenticated denial of every SRV name: the domain itself is
        # the target, and it is as secure as that denial.
        return [Target(domain, self.port, secure=xmppSecure and xmppsSecure)]

    # -- addresses -------------------------------------------------------

    async def _family(self, host: str, family: int):
        """Return a list of IP strings, or the exception the lookup raised."""
        if family == 4:
            d = self.resolver.lookupAddress(host, timeout=self.queryTimeout)
        else:
            d = self.resolver.lookupIPV6Address(host, timeout=self.queryTimeout)
        try:
            answers, _auth, _add = await d
        except defer.CancelledError:
            raise
        except Exception as e:
            return e
        ips = []
        for a in answers:
            if family == 4 and a.type == dns.A:
                ips.append(a.payload.dottedQuad())
            elif family == 6 and a.type == dns.AAAA:
                ips.append(socket.inet_ntop(socket.AF_INET6, a.payload.address))
        return ips

    async def addresses(self, host: str, port: int) -> list[Address]:
        """
        Return the addresses of C{host} (with C{port}) in C{ip_versions} order.

        An IP literal is returned as is, whatever C{ip_versions} says (it
        comes from an override or an SRV target the peer chose). A and AAAA
        are queried concurrently; one family failing is fine as long as the
        other has answers. Otherwise raises L{DNSFailure}; C{timedOut} is
        set when a lookup timed out and none said "no such domain".
        """
        literal = ipFamily(host)
        if literal is not None:
            return [Address(host.strip("[]"), port, literal)]
        if not self.ipVersions:
            raise DNSFailure(f"DNS: no address for {host} (no IP versions enabled)")

        ds = [defer.ensureDeferred(self._family(host, f)) for f in self.ipVersions]
        results = await defer.gatherResults(ds, consumeErrors=True)

        out: list[Address] = []
        seen = set()
        errors = []
        for family, res in zip(self.ipVersions, results):
            if isinstance(res, BaseException):
                errors.append(res)
                continue
            for ip in res:
                if ip not in seen:
                    seen.add(ip)
                    out.append(Address(ip, port, family))
        if out:
            return out
        if any(isinstance(e, dnserror.DNSNameError) for e in errors):
            raise DNSFailure(f"DNS: no such domain {host}")
        if any(_isTimeout(e) for e in errors):
            raise DNSFailure(f"DNS: timeout resolving {host}", timedOut=True)
        raise DNSFailure(f"DNS: no address for {host}")
