# -*- test-case-name: tests.test_check -*-
"""
C{s2sgate check DOMAIN}: can this gateway federate with DOMAIN, and if not,
what exactly is wrong and what should be changed?

The checks are the ones federation how-tos walk through by hand, in order:

 1. DNS: the domain's IDNA form, the C{_xmpps-server._tcp} and
    C{_xmpp-server._tcp} SRV records (or the A/AAAA fallback on port 5269),
    every target's addresses;
 2. TCP: is each target address reachable;
 3. stream: an XMPP stream header and the stream features of the first
    reachable target (TLS first for direct TLS targets);
 4. TLS: STARTTLS (or direct TLS), protocol and cipher, the certificate
    chain and whether it is valid for the domain;
 5. authentication after TLS: SASL EXTERNAL and dialback offered?  What
    else is offered (XEP-0478 limits, bidi, stream management, dialback
    errors)?  The other way in (direct TLS or STARTTLS) probed on its own;
 6. for one of our own domains: do the published targets reach this
    gateway (a dialback key made from C{s2s.shared}), our certificate and
    every C{domain_certfile} entry; for a remote domain, the days left on
    the certificate we present.

docs/check.md compares the steps with C{prosodyctl check} and public testers.

Each step is a L{Step}: a status (ok, warn, fail, skipped), one-line
summary, details, advice (what to change), and whether it makes federation
impossible (C{fatal}).  L{Checker.run} calls C{emit(step)} as each step
finishes, so a terminal shows progress; L{Report} holds the result for
C{--json}.

DNS goes through L{S2SResolver}, the gateway's own resolver, so the check
asks exactly the nameservers the gateway would (never the system resolver
when nameservers are configured), and TLS through L{TLSContexts} /
L{TrustStore}, so the certificate verdict is the gateway's verdict.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import secrets
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import idna
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.names import dns
from twisted.names import error as dnsError
from zope.interface import implementer

from s2sgate.auth.requirements import Requirements
from s2sgate.config import DomainCert, S2SConfig
from s2sgate.features.starttls import DirectTLS, StartTLS
from s2sgate.interfaces import INegotiationObserver, IStep
from s2sgate.net.connector import ConnectFailed, describeConnectError, endpointFor
from s2sgate.net.dnssec import AuthenticatedLookup
from s2sgate.net.resolver import (
    XMPP_SERVER,
    XMPPS_SERVER,
    Address,
    DNSFailure,
    S2SResolver,
    Target,
)
from s2sgate.s2s.negotiation import PEER_REFUSALS, Finished, InitiatingStream, StreamLimits
from s2sgate.timers import cancel
from s2sgate.xmpp.domain import InvalidDomain, normalize
from s2sgate.xmpp.features import StreamFeatures
from s2sgate.xmpp.namespaces import NS_DB_FEATURE, NS_LIMITS

__all__ = ["CheckOptions", "Step", "Report", "Checker", "TextPrinter", "CHECK_FROM"]

CHECK_FROM = "check.invalid"
EXPIRY_WARNING_DAYS = 14
EXPIRY_ERROR_DAYS = 3
NS_BIDI_FEATURE = "urn:xmpp:features:bidi"      # XEP-0288
NS_SM = "urn:xmpp:sm:3"                          # XEP-0198
MIN_STANZA_BYTES = 10000                         # RFC 6120 section 13.12

OK, WARN, FAIL, SKIPPED = "ok", "warn", "fail", "skipped"


# --- results ---------------------------------------------------------------------


@dataclass
class Step:
    """One checked step and what to do about it."""

    name: str  # stable machine name, e.g. "srv", "tcp", "certificate"
    title: str  # human label, e.g. "SRV _xmpp-server._tcp.example.com"
    status: str = OK
    summary: str = ""
    details: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    fatal: bool = False  # federation cannot work because of this step
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool | None:
        if self.status == SKIPPED:
            return None
        return self.status in (OK, WARN)

    def fail(self, summary: str, *advice: str, fatal: bool = True) -> "Step":
        self.status = FAIL
        self.summary = summary
        self.advice += [a for a in advice if a]
        self.fatal = fatal
        return self

    def warn(self, summary: str | None, *advice: str) -> "Step":
        if self.status == OK:
            self.status = WARN
        if summary is not None:
            self.summary = summary
        self.advice += [a for a in advice if a]
        return self

    def toJSON(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


@dataclass
class Report:
    domain: str
    asciiDomain: str | None = None
    local: str = CHECK_FROM
    nameservers: str = ""
    steps: list[Step] = field(default_factory=list)

    @property
    def fatal(self) -> list[Step]:
        return [s for s in self.steps if s.fatal]

    @property
    def exitCode(self) -> int:
        return 1 if self.fatal else 0

    def verdict(self) -> str:
        name = self.asciiDomain or self.domain
        fatal = self.fatal
        if fatal:
            return f"federation with {name} cannot work: {fatal[0].summary}"
        failed = [s for s in self.steps if s.status == FAIL]
        warned = [s for s in self.steps if s.status == WARN]
        text = f"federation with {name} can work"
        problems = []
        if failed:
            problems.append(f"{len(failed)} failed step{'s' if len(failed) > 1 else ''}")
        if warned:
            problems.append(f"{len(warned)} warning{'s' if len(warned) > 1 else ''}")
        if problems:
            text += f", but see the {' and '.join(problems)} above"
        return text

    def toJSON(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "ascii_domain": self.asciiDomain,
            "from": self.local,
            "nameservers": self.nameservers,
            "steps": [s.toJSON() for s in self.steps],
            "verdict": {"ok": not self.fatal, "exit_status": self.exitCode,
                        "text": self.verdict()},
        }

    def dumps(self) -> str:
        return json.dumps(self.toJSON(), indent=2, ensure_ascii=False)


# --- options -----------------------------------------------------------------------


@dataclass
class CheckOptions:
    """What to check and with which settings (from the config and the command line)."""

    domain: str
    s2s: S2SConfig = field(default_factory=S2SConfig)
    localDomains: tuple[str, ...] = ()
    nameservers: tuple[tuple[str, int], ...] = ()
    timeout: float = 10
    dnsTimeout: float = 10
    dnsRetries: int = 1
    configPath: str | None = None


# --- the recording trace ---------------------------------------------------------


@implementer(INegotiationObserver)
class _Recorder:
    """
    What the gateway's own negotiation of one probe stream went through,
    for the report.  C{onEvent} is called at each event (the per-event
    timeout is restarted there).
    """

    def __init__(self, onEvent: Callable[[], None]):
        self.onEvent = onEvent
        self.headers: list = []
        self.features: list[StreamFeatures] = []
        self.direct = False
        self.tlsRequested = False
        self.connection = None      # the pyOpenSSL connection once TLS is up
        self.errorReceived: tuple[str, str | None] | None = None
        self.errorSent: tuple[str, str | None] | None = None
        self.ended = False
        self.timedOut = False
        self.lost: str | None = None

    def headerReceived(self, header):
        self.headers.append(header)
        self.onEvent()

    def featuresReceived(self, features):
        self.features.append(features)
        self.onEvent()

    def tlsStarted(self, direct):
        self.direct = self.direct or direct
        self.tlsRequested = True
        self.onEvent()

    def tlsEstablished(self, connection):
        self.connection = connection
        self.onEvent()

    def streamErrorReceived(self, condition, text):
        self.errorReceived = (condition, text)

    def streamErrorSent(self, condition, text):
        self.errorSent = (condition, text)

    def streamEnded(self):
        self.ended = True

    def connectionLost(self, reason):
        self.lost = _oneLine(reason.getErrorMessage())

    def waitingFor(self) -> str:
        """What the peer had not sent yet when the stream stopped."""
        if self.direct and self.connection is None:
            return "a TLS handshake"
        if not self.headers:
            return "a stream header"
        if not self.features:
            return "stream features"
        if self.features[0].starttls and not self.direct and not self.tlsRequested:
            return "an answer to <starttls/>"
        if self.tlsRequested and self.connection is None:
            return "a TLS handshake"
        if self.connection is not None and not self.direct and len(self.headers) < 2:
            return "a stream header"
        return "stream features"


@implementer(IStep)
class _ReportFeatures:
    """The probe's last step: keep the features authentication would run on, and stop."""

    name = "auth"

    def __init__(self):
        self.features: StreamFeatures | None = None

    def applies(self, stream, features):
        return features is not None

    async def run(self, stream, features):
        self.features = features
        return Finished()


class _ProbeRequirements:
    """
    The probe asks for TLS whenever it is offered and refuses nothing
    itself: the report judges each step with the configured policy.
    """

    tlsEnabled = True

    def mustEncrypt(self, remote=None):
        return False

    def mustBeTrusted(self, remote):
        return False

    def daneRequired(self, remote):
        return False


class _Probe(Exception):
    """
    A stream step failed: C{summary} is one line, C{advice} what to change,
    C{condition} the stream error condition the peer sent, if any.
    """

    def __init__(self, summary: str, *advice: str, condition: str | None = None):
        super().__init__(summary)
        self.summary = summary
        self.advice = [a for a in advice if a]
        self.condition = condition


# --- helpers -------------------------------------------------------------------------


def _srvLine(service: str, domain: str, target: str) -> str:
    """An example zone-file line for an SRV record pointing at C{target} port 5269."""
    return f"{service}{domain}. 3600 IN SRV 0 5 5269 {target}."


def _listRecords(step, records, directTLS):
    """Put SRV records on a step (summary, details, JSON); return their targets."""
    step.summary = f"{len(records)} target{'s' if len(records) > 1 else ''}"
    step.details = [f"priority {r.priority} weight {r.weight} port {r.port} {_targetName(r)}."
                    for r in records]
    step.data["records"] = [{"priority": r.priority, "weight": r.weight, "port": r.port,
                             "target": _targetName(r)} for r in records]
    return [Target(_targetName(r), r.port, directTLS) for r in records]


def _targetName(r: dns.Record_SRV) -> str:
    name = r.target.name
    name = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    return name.rstrip(".").lower()


def _isPrivate(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return a.is_private or a.is_loopback or a.is_link_local


def _day(when: _dt.datetime | None) -> str:
    return when.strftime("%Y-%m-%d") if when else "?"


def _daysLeft(when: _dt.datetime | None, now: _dt.datetime) -> int | None:
    if when is None:
        return None
    return int((when - now).total_seconds() // 86400)


def _unicodeForm(ascii: str) -> str | None:
    try:
        u = idna.decode(ascii)
    except (idna.IDNAError, UnicodeError):
        return None
    return u if u != ascii else None


def _oneLine(text: Any) -> str:
    s = str(text).strip().splitlines()
    s = s[0] if s else ""
    return "".join(c if c.isprintable() else "?" for c in s)[:200]


def _endpointPort(description: str) -> int | None:
    """The TCP port of a Twisted endpoint string (C{tcp:5269:interface=...}), if any."""
    parts = description.split(":")
    if parts[0] not in ("tcp", "tcp6", "ssl"):
        return None
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if (eq and key == "port") or not eq:
            try:
                return int(value if eq else key)
            except ValueError:
                return None
    return None


def _where(address: Address, target: Target) -> str:
    w = f"{address} ({target.host}"
    return w + (", direct TLS)" if target.direct_tls else ")")


# --- the checker -----------------------------------------------------------------------


class Checker:
    """
    Runs the steps for one domain.

    @param reactor: the reactor (time, TCP).
    @param options: a L{CheckOptions}.
    @param emit: called with each L{Step} as it is finished.
    @param tls: a L{s2sgate.auth.tls.TLSContexts} (built from the options when
        omitted; L{s2sgate.auth.tls.TLSSetupError} for an unusable C{cafile}).
    @param resolver: an L{S2SResolver} (built from the options when omitted).
    @param extraChecks: C{async (checker, reachable, peerChain) -> Step or None}
        callables run after the stream probe, in order: the seam for checks
        kept elsewhere (TLSA/DANE records against C{peerChain}, the leaf and
        chain the peer presented with its target, or None).
    """

    def __init__(self, reactor, options: CheckOptions,
                 emit: Callable[[Step], None] = lambda step: None,
                 tls=None, resolver: S2SResolver | None = None,
                 now: _dt.datetime | None = None, extraChecks=()):
        self.reactor = reactor
        self.options = options
        self.emit = emit
        self.s2s = options.s2s
        self.policy = Requirements(self.s2s)
        self.now = now or _dt.datetime.now(_dt.timezone.utc)
        self.report = Report(options.domain)
        self.tlsProblem: str | None = None
        self.peerCertificate = None  # the verdict on the peer's certificate
        self.peerChain = None  # (leaf, chain) the peer presented, for extraChecks
        self.extraChecks = tuple(extraChecks)
        self.tls = tls if tls is not None else self._tlsContexts()
        self.tlsa = None   # the authenticated TLSA set of the first secure target (DANE)
        if resolver is None:
            dnssec = None
            if self.policy.daneEnabled and options.nameservers:
                dnssec = AuthenticatedLookup(reactor, options.nameservers,
                                             (options.dnsTimeout,) * (options.dnsRetries + 1))
            resolver = S2SResolver(
                reactor, timeout=options.dnsTimeout, retries=options.dnsRetries,
                nameservers=options.nameservers, port=self.s2s.outgoing.port,
                ip_versions=self.s2s.outgoing.ip_versions, dnssec=dnssec)
        self.resolver = resolver
        if options.nameservers:
            self.report.nameservers = ", ".join(
                f"[{ip}]:{p}" if ":" in ip else f"{ip}:{p}" for ip, p in options.nameservers)
        else:
            self.report.nameservers = "the system's (/etc/resolv.conf)"
        self.domain = ""  # the A-label form, once known
        self.local = CHECK_FROM
        self.override: Target | None = None  # s2s.address for the domain: where the gateway goes

    def _tlsContexts(self):
        from s2sgate.auth.tls import TLSContexts, TLSSetupError

        try:
            return TLSContexts(self.s2s, self.options.localDomains)
        except TLSSetupError as e:
            if e.key == "s2s.cafile":
                raise
            # Our own certificates are broken: still check the peer (without
            # presenting one) and report the problem in the local steps.
            self.tlsProblem = str(e)
            from dataclasses import replace
            return TLSContexts(replace(self.s2s, certfile=None, domain_certfile=()),
                               self.options.localDomains)

    def _add(self, step: Step) -> Step:
        self.report.steps.append(step)
        try:
            self.emit(step)
        except Exception:
            pass
        return step

    def _skip(self, name: str, title: str, why: str) -> None:
        self._add(Step(name, title, SKIPPED, f"not checked: {why}"))

    async def _guard(self, name: str, title: str, coro) -> Any:
        """Run one step's coroutine; an unexpected exception fails the step."""
        try:
            return await coro
        except defer.CancelledError:
            raise
        except Exception as e:  # never a traceback for the operator
            self._add(Step(name, title).fail(
                f"unexpected error: {type(e).__name__}: {_oneLine(e)}",
                "this is a bug in s2sgate check; please report it with this output"))
            return None

    # -- the run ------------------------------------------------------------------

    async def run(self) -> Report:
        if not self._name():
            return self.report
        self.local = self._localName()
        self.report.local = self.local
        targets = await self._guard("srv", "SRV records", self._srvSteps())
        if targets and self.policy.daneEnabled:
            await self._guard("dane", "DANE", self._dane())
        if self.override is not None:
            # The gateway never asks DNS for this domain: probe where it goes.
            targets = [self.override]
        if not targets:
            self._skipRemote("no XMPP service found in DNS")
        else:
            resolved = await self._guard("addresses", "addresses", self._addresses(targets))
            if not resolved:
                self._skipRemote("no target has an address")
            else:
                reachable = await self._guard("tcp", "TCP", self._tcp(resolved))
                if not reachable:
                    self._skipRemote("no target is reachable", fromStep="stream")
                else:
                    first = reachable[0]
                    await self._guard("stream", "stream", self._negotiate(*first))
                    other = next(((t, a) for t, a in reachable
                                  if t.direct_tls != first[0].direct_tls), None)
                    if other is not None:
                        await self._guard("other-way", "the other way in", self._otherWay(*other))
                    for extra in self.extraChecks:
                        step = await self._guard("extra", "extra check",
                                                 extra(self, reachable, self.peerChain))
                        if step is not None:
                            self._add(step)
                    if self.domain in self.options.localDomains:
                        await self._guard("own-listener", "our SRV targets",
                                          self._ownListener(reachable))
        if self.domain in self.options.localDomains:
            await self._guard("our-certificate", "our certificate", self._localSteps())
        elif self.local != CHECK_FROM:
            self._presented()
        return self.report

    async def _dane(self) -> None:
        """DNSSEC-authenticated SRV and TLSA (RFC 7673), asked as the gateway asks them."""
        d = self.domain
        step = Step("dane", "DANE (DNSSEC SRV + TLSA)")
        required = self.policy.daneRequired(d)
        targets = await self.resolver.targets(d)
        secure = [t for t in targets if t.secure]
        if not secure:
            msg = (f"the SRV answer for {d} is not DNSSEC-authenticated (no AD bit from "
                   f"{self.report.nameservers}): no DANE")
            if required:
                self._add(step.fail(msg, f"{d} is in dane_domains (or dane = \"required\"): "
                                         "its zone must be DNSSEC-signed"))
            else:
                step.summary = msg
                self._add(step)
            return
        target = secure[0]
        tlsa = await self.resolver.tlsa(target)
        step.data = {"target": f"{target.host}:{target.port}",
                     "tlsa": [str(r) for r in tlsa.records] if tlsa else []}
        if tlsa is None:
            msg = (f"SRV is DNSSEC-authenticated, but _{target.port}._tcp.{target.host} has "
                   "no authenticated TLSA records: no DANE")
            if required:
                self._add(step.fail(msg, "publish TLSA records (e.g. 3 1 1 of the server's key)"))
            else:
                step.summary = msg
                self._add(step)
            return
        self.tlsa = tlsa
        step.summary = f"DNSSEC-authenticated TLSA {tlsa.describe()}"
        self._add(step)

    def _skipRemote(self, why: str, fromStep: str = "tcp") -> None:
        names = [("tcp", "TCP"), ("stream", "stream"), ("tls", "TLS"),
                 ("certificate", "certificate"), ("authentication", "authentication")]
        started = False
        for name, title in names:
            started = started or name == fromStep
            if started:
                self._skip(name, title, why)

    # -- 1. DNS -----------------------------------------------------------------------

    def _name(self) -> bool:
        step = Step("name", "domain")
        raw = self.options.domain
        text = raw.strip()
        if len(text) > 1 and text.endswith("."):
            text = text[:-1]  # a fully qualified name is fine
        try:
            self.domain = normalize(text)
        except InvalidDomain as e:
            self._add(step.fail(
                f"{raw!r} is not a valid domain name ({_oneLine(e)})",
                "give the domain part of an XMPP address, e.g. example.com "
                "(no scheme, port or user)"))
            return False
        self.report.asciiDomain = self.domain
        step.data = {"input": raw, "ascii": self.domain,
                     "unicode": _unicodeForm(self.domain) or self.domain}
        if self.domain != raw:
            step.summary = f"{raw} is {self.domain} in DNS (IDNA 2008 A-label form)"
            if raw.lower() != self.domain:
                step.details.append(f"use {self.domain} in zone files and certificates")
        else:
            unicode = _unicodeForm(self.domain)
            step.summary = self.domain + (f" ({unicode})" if unicode else "")
        override = next((a for a in self.s2s.address if a.host == self.domain), None)
        if override is not None:
            self.override = Target(str(override.ip_address), int(override.port))
            step.data["override"] = {"ip_address": str(override.ip_address),
                                     "port": int(override.port)}
            step.details.append(
                f"note: s2s.address in the config sends {self.domain} to "
                f"{override.ip_address}:{override.port}; the gateway skips DNS for it, "
                "so the check connects there (DNS is checked anyway, for the servers that "
                "use it; a DNS problem is then not fatal)")
        self._add(step)
        return True

    def _localName(self) -> str:
        for d in self.options.localDomains:
            if d != self.domain:
                return d
        return CHECK_FROM

    async def _lookupSRV(self, service: str):
        """C{(records, None)}, C{("none", None)}, C{("dot", record)} or C{(None, error)}."""
        name = service + self.domain
        try:
            answers, _authority, _additional = await self.resolver.resolver.lookupService(
                name, timeout=self.resolver.queryTimeout)
        except dnsError.DNSNameError:
            return "none", "nxdomain"
        except Exception as e:
            if isinstance(e, (defer.TimeoutError, TimeoutError)):
                return None, f"no answer from the nameserver ({self.report.nameservers})"
            return None, f"lookup failed ({type(e).__name__}: {_oneLine(e)})"
        records = [a.payload for a in answers if a.type == dns.SRV]
        if not records:
            return "none", "nodata"
        if len(records) == 1 and _targetName(records[0]) == "":
            return "dot", records[0]
        records = [r for r in records if _targetName(r) != ""]
        records.sort(key=lambda r: (r.priority, -r.weight, _targetName(r), r.port))
        return records, None

    async def _srvSteps(self) -> list[Target]:
        d = self.domain
        (xmpps, xmppsErr), (xmpp, xmppErr) = await defer.gatherResults(
            [defer.ensureDeferred(self._lookupSRV(XMPPS_SERVER)),
             defer.ensureDeferred(self._lookupSRV(XMPP_SERVER))], consumeErrors=True)
        targets: list[Target] = []

        # _xmpps-server: optional, never fatal by itself.
        step = Step("srv-xmpps", f"SRV {XMPPS_SERVER}{d}")
        if xmpps is None:
            step.warn(f"lookup failed: {xmppsErr}",
                      "direct TLS is optional; check the nameserver if you published it")
        elif xmpps == "none":
            step.summary = "none (no direct TLS; optional)"
        elif xmpps == "dot":
            step.summary = "'.' — direct TLS explicitly not offered"
        else:
            targets += _listRecords(step, xmpps, directTLS=True)
            step.summary += " (direct TLS, XEP-0368)"
        self._add(step)

        step = Step("srv", f"SRV {XMPP_SERVER}{d}")
        example = _srvLine(XMPP_SERVER, d, target=f"xmpp.{d}")
        if xmpp is None:
            self._add(step.fail(
                f"lookup failed: {xmppErr}",
                f"make sure the nameserver answers ({self.report.nameservers}); "
                "use --nameserver to ask another one",
                fatal=not targets and self.override is None))
            return targets
        if xmpp == "dot":
            step.data["records"] = []
            if targets:
                self._add(step.warn(
                    "'.' — no STARTTLS service; only direct TLS is offered",
                    f"servers without XEP-0368 cannot reach {d}; publish `{example}` "
                    "for them"))
                return targets
            self._add(step.fail(
                f"{d} publishes SRV '.': it says it has no XMPP federation service",
                f"if {d} should federate, replace the '.' record with one pointing at "
                f"the server, e.g. `{example}`", fatal=self.override is None))
            return targets
        if isinstance(xmpp, list):
            targets += _listRecords(step, xmpp, directTLS=False)
            self._add(step)
            return targets
        # No _xmpp-server records at all.
        step.data["records"] = []
        if targets:
            self._add(step.warn(
                "none; only direct TLS (_xmpps-server) is published",
                f"servers without XEP-0368 fall back to {d}:5269; add `{example}` for them"))
            return targets
        port = self.s2s.outgoing.port
        try:
            await self.resolver.addresses(d, port)
        except DNSFailure:
            # The addresses step says why; an SRV record is the way out.
            step.fail(f"none, and no A/AAAA records for {d} to fall back to",
                      f"publish `{example}` and addresses for its target",
                      fatal=False)
        else:
            step.warn(f"none: servers fall back to {d} port {port} (A/AAAA)",
                      f"this works, but an SRV record is recommended: add "
                      f"`{_srvLine(XMPP_SERVER, d, target=d)}` (or point it at the host "
                      "that runs the XMPP server)")
        self._add(step)
        return [Target(d, port)]

    async def _addresses(self, targets: list[Target]) -> list[tuple[Target, list[Address]]]:
        step = Step("addresses", "addresses")
        resolved: list[tuple[Target, list[Address]]] = []
        failures = []
        seen: dict[str, list[Address] | str] = {}
        for t in targets:
            key = t.host
            if key not in seen:
                try:
                    seen[key] = await self.resolver.addresses(t.host, t.port)
                except DNSFailure as e:
                    seen[key] = e.text.removeprefix("DNS: ")
                res = seen[key]
                step.details.append(f"{t.host}: {res}" if isinstance(res, str) else
                                    f"{t.host} → {', '.join(a.ip for a in res)}")
            res = seen[key]
            if isinstance(res, str):
                failures.append((t, res))
                continue
            addrs = [Address(a.ip, t.port, a.family) for a in res]
            resolved.append((t, addrs))
        private = sorted({a.ip for _, addrs in resolved for a in addrs if _isPrivate(a.ip)})
        if private:
            step.details.append(
                f"note: {', '.join(private)}: private or loopback, not reachable from the "
                "Internet (fine on a LAN or in a test)")
        step.data["targets"] = [
            {"host": t.host, "port": t.port, "direct_tls": t.direct_tls,
             "addresses": [a.ip for a in addrs]} for t, addrs in resolved]
        hosts = sorted({t.host for t in targets})
        if not resolved:
            d = self.domain
            if len(targets) == 1 and targets[0].host == d and "no such domain" in failures[0][1]:
                step.fail(f"{d} does not exist in DNS (NXDOMAIN)",
                          f"check the spelling; if {d} is yours, publish it at your DNS "
                          f"provider: an SRV record `{_srvLine(XMPP_SERVER, d, target=f'xmpp.{d}')}` "
                          f"and A/AAAA records for its target")
            else:
                step.fail(f"no address for {', '.join(hosts)}",
                          *[f"add an A and/or AAAA record for {t.host} "
                            "(an SRV target must be a host name with addresses, not a CNAME)"
                            for t in {t.host: t for t, _ in failures}.values()])
        else:
            n = len({a.ip for _, addrs in resolved for a in addrs})
            step.summary = f"{n} address{'es' if n > 1 else ''} for {len(resolved)} target{'s' if len(resolved) > 1 else ''}"
            for t, why in failures:
                step.warn(None, f"{t.host} (port {t.port}) has no address ({why}): add an "
                                "A/AAAA record for it or remove its SRV record")
        self._add(step)
        return resolved

    # -- 2. TCP -------------------------------------------------------------------------

    async def _reach(self, address: Address) -> tuple[bool, str, bool]:
        endpoint = endpointFor(self.reactor, address, self.options.timeout)
        try:
            proto = await endpoint.connect(Factory.forProtocol(Protocol))
        except Exception as e:
            text, timedOut = describeConnectError(e)
            return False, text, timedOut
        proto.transport.abortConnection()
        return True, "open", False

    async def _tcp(self, resolved) -> list[tuple[Target, Address]]:
        step = Step("tcp", "TCP")
        pairs = [(t, a) for t, addrs in resolved for a in addrs]
        results = await defer.gatherResults(
            [defer.ensureDeferred(self._reach(a)) for _, a in pairs], consumeErrors=True)
        reachable = []
        closed = []
        for (t, a), (ok, text, timedOut) in zip(pairs, results):
            step.details.append(f"{_where(a, t)}: {text}")
            step.data.setdefault("addresses", []).append(
                {"address": str(a), "host": t.host, "direct_tls": t.direct_tls,
                 "open": ok, "error": None if ok else text})
            if ok:
                reachable.append((t, a))
            else:
                closed.append((t, a, text, timedOut))
        advice = []
        for t, a, text, timedOut in closed:
            if timedOut:
                why = f"port {a.port} on {a.ip} is closed or filtered (no answer in {self.options.timeout:g} s)"
            elif text == "connection refused":
                why = f"port {a.port} on {a.ip} is closed (connection refused: nothing listens there, or a firewall rejects)"
            else:
                why = f"port {a.port} on {a.ip} cannot be reached ({text})"
            advice.append(
                f"{why}: make the XMPP server listen on port {a.port}, open it in the firewall "
                f"(e.g. `ufw allow {a.port}/tcp`), and if the server is behind NAT forward "
                f"port {a.port} on the router to it")
        if not reachable:
            step.fail(f"no address of {self.domain}'s servers is reachable "
                      f"({closed[0][2]} on {closed[0][1]})", *advice)
        else:
            step.summary = f"{len(reachable)} of {len(pairs)} reachable"
            if closed:
                step.warn(None, *advice)
        self._add(step)
        return reachable

    # -- 3.-5. stream, TLS, certificate, authentication ---------------------------------

    async def _probe(self, target: Target, address: Address, local: str, lastStep):
        """
        Connect to C{address} and run the gateway's own TLS steps and then
        C{lastStep}; C{(recorder, ConnectFailed or None)}, or C{None, text}
        when the TCP connection fails.
        """
        d = self.domain
        timeout = self.options.timeout
        idle: list = []

        def restartTimer():
            if idle:
                cancel(idle[0])
            idle[:] = [self.reactor.callLater(timeout, expire)]

        def expire():
            recorder.timedOut = True
            if probe.transport is not None:
                probe.transport.abortConnection()

        recorder = _Recorder(restartTimer)
        probe = InitiatingStream(
            self.reactor, local, d, [DirectTLS(), StartTLS(), lastStep],
            requirements=_ProbeRequirements(), tls=self.tls,
            limits=StreamLimits(self.s2s.stanza_size_limit, None, 1e9), observer=recorder)
        creator = self.tls.clientCreator(d, local, alpn=True) if target.direct_tls else None
        endpoint = endpointFor(self.reactor, address, timeout, tlsCreator=creator)
        try:
            await endpoint.connect(Factory.forProtocol(lambda: probe))
        except Exception as e:
            text, _ = describeConnectError(e)
            return None, text
        restartTimer()
        try:
            await probe.ready
            failed = None
        except ConnectFailed as e:
            failed = e
        finally:
            if idle:
                cancel(idle[0])
            probe.closeStream(wait=1)
        return recorder, failed

    async def _negotiate(self, target: Target, address: Address) -> None:
        """
        Run the gateway's own negotiation steps (TLS as the gateway does it)
        against one address, stop before authenticating, and report what the
        recording trace saw.
        """
        where = _where(address, target)
        stream = Step("stream", "stream")
        stream.data = {"address": str(address), "host": target.host,
                       "direct_tls": target.direct_tls, "from": self.local, "where": where}
        tlsStep = Step("tls", "TLS")
        last = _ReportFeatures()
        recorder, failed = await self._probe(target, address, self.local, last)
        if recorder is None:
            self._add(stream.fail(f"cannot connect to {where} any more ({failed})"))
            self._skipRemote("no connection", fromStep="tls")
            return
        self._report(recorder, last.features, failed, target, where, stream, tlsStep)

    async def _otherWay(self, target: Target, address: Address) -> None:
        """
        The other way in, probed on its own: STARTTLS when the first probe
        used direct TLS (XEP-0368), direct TLS when it used STARTTLS.  Its
        steps are folded into one, never fatal (the first way works or fails
        by itself).
        """
        where = _where(address, target)
        name, title = (("direct-tls", f"direct TLS (XEP-0368) at {where}") if target.direct_tls
                       else ("starttls", f"STARTTLS at {where}"))
        sub = Checker(self.reactor, self.options, tls=self.tls, resolver=self.resolver,
                      now=self.now)
        sub.domain, sub.local, sub.report.asciiDomain = self.domain, self.local, self.domain
        await sub._negotiate(target, address)
        step = Step(name, title)
        step.data = {"address": str(address), "host": target.host,
                     "direct_tls": target.direct_tls, "steps": [s.toJSON() for s in sub.report.steps]}
        byName = {s.name: s for s in sub.report.steps}
        parts = [byName[n].summary for n in ("tls", "certificate", "authentication")
                 if n in byName and byName[n].status != SKIPPED]
        step.summary = "; ".join(parts) or "no result"
        for s in sub.report.steps:
            step.details.append(f"{s.title}: {s.status}: {s.summary}")
        failed = [s for s in sub.report.steps if s.status == FAIL]
        if failed:
            step.fail(f"{failed[0].title}: {failed[0].summary}", *failed[0].advice, fatal=False)
        elif any(s.status == WARN for s in sub.report.steps):
            step.warn(None, *[a for s in sub.report.steps for a in s.advice])
        self._add(step)

    def _report(self, r: _Recorder, finalFeatures, failed, target, where, stream, tlsStep):
        """Turn the recorded negotiation into the stream, TLS, certificate and auth steps."""
        d = self.domain
        if target.direct_tls:
            if r.connection is None:
                p = self._stopped(r, where, failed)
                self._probeFailed(_Probe(
                    f"the direct TLS handshake with {where} failed: {p.summary}",
                    f"port {target.port} is published as _xmpps-server (direct "
                    "TLS): the server must speak TLS there (ALPN xmpp-server); "
                    "remove the SRV record if it does not"), stream, tlsStep, "tls")
                return
            tlsStep.summary = "direct TLS (XEP-0368)"
            self._tlsDone(r.connection, tlsStep, direct=True)
        if r.headers:
            header = r.headers[0]
            version = header.getAttribute("version", "0.0")
            peerFrom = header.getAttribute("from")
            stream.data.update({"id": header.getAttribute("id"), "version": version,
                                "peer_from": peerFrom})
            stream.details.append(f"stream id {header.getAttribute('id')!r}, version {version}, "
                                  f"from {peerFrom!r} (we sent from {self.local!r})")
            if peerFrom and peerFrom.lower() != d:
                stream.warn(None, f"the peer answered as {peerFrom!r}, not {d}: its server "
                                  f"configuration may not know {d}")
        if not r.headers or not r.features:
            self._probeFailed(self._stopped(r, where, failed), stream, tlsStep, "stream")
            return
        features = r.features[0]
        if features.legacy:
            stream.warn(f"{where} speaks pre-1.0 XMPP: no stream features, no STARTTLS",
                        f"upgrade the server at {where}")
        else:
            stream.summary = (f"XMPP {version} with {where}; features: "
                              f"{features.describe()}")
        stream.data["features"] = features.toJSON()
        self._add(stream)

        if target.direct_tls:
            self._auth(features, secure=True)
            self._offered(features, secure=True)
            return
        if not features.starttls:
            self._noTLS(features, tlsStep)
            self._auth(features, secure=False)
            self._offered(features, secure=False)
            return
        if not r.tlsRequested:
            if failed is not None and not (r.timedOut or r.lost or r.ended or r.errorReceived
                                           or r.errorSent):
                p = _Probe(f"{where} refused STARTTLS",
                           "check the remote server's certificate and TLS configuration "
                           "and its log")
            else:
                p = self._stopped(r, where, failed)
            self._probeFailed(p, stream, tlsStep, "tls")
            return
        if r.connection is None:
            p = self._stopped(r, where, failed)
            self._probeFailed(_Probe(f"the TLS handshake with {where} failed: {p.summary}",
                                     "check the remote server's TLS setup (TLS 1.2 or later; "
                                     "its certificate and key)"), stream, tlsStep, "tls")
            return
        tlsStep.summary = "STARTTLS"
        self._tlsDone(r.connection, tlsStep, direct=False)
        if finalFeatures is None or len(r.features) < 2:
            self._probeFailed(self._stopped(r, where, failed), stream, tlsStep, "auth")
            return
        self._auth(finalFeatures, secure=True)
        self._offered(finalFeatures, secure=True)

    def _stopped(self, r: _Recorder, where: str, failed) -> "_Probe":
        """Why the peer stopped before sending what the negotiation waited for."""
        what, timeout = r.waitingFor(), self.options.timeout
        if r.errorReceived is not None:
            condition, text = r.errorReceived
            return _Probe(*self._streamErrorAdvice(condition, text, where), condition=condition)
        if r.errorSent is not None:
            condition, text = r.errorSent
            return _Probe(f"{where} sent invalid XML ({condition}: {text}): not an XMPP server?",
                          "make sure the SRV record points at the XMPP server's s2s port "
                          "(5269, or 5270 for direct TLS)")
        if r.timedOut:
            return _Probe(f"{where} sent no {what} within {timeout:g} s",
                          "is this port served by an XMPP server (and not a proxy or "
                          "another service)? try --timeout with a larger value")
        if r.ended:
            return _Probe(f"{where} closed the stream instead of sending {what}")
        if r.lost is not None:
            return _Probe(f"{where} closed the connection instead of sending {what} "
                          f"({r.lost})",
                          "check the server's log; the port may belong to another "
                          "service, or the server may refuse our address")
        return _Probe(f"{where}: negotiation stopped: {failed.text if failed else 'no reason'}")

    def _probeFailed(self, p: "_Probe", stream: Step, tlsStep: Step, phase: str) -> None:
        """Put a failed stream conversation into the right step."""
        added = lambda step: any(s is step for s in self.report.steps)  # noqa: E731
        if p.condition in PEER_REFUSALS and added(tlsStep):
            # After TLS the peer judged us (our certificate) and said no.
            if not added(stream):
                self._add(stream.warn(f"{stream.data.get('where')}: the peer ended the "
                                      "stream before its features"))
            self._auth(None, secure=True, refused=p)
            return
        if phase == "stream":
            self._add(stream.fail(p.summary, *p.advice))
            if not added(tlsStep):
                self._skipRemote("no stream", fromStep="tls")
            else:
                self._skip("authentication", "authentication", "no stream")
        elif phase == "tls":
            self._add(tlsStep.fail(p.summary, *p.advice, fatal=self.policy.mustEncrypt(self.domain)))
            self._skip("certificate", "certificate", "no TLS")
            if not added(stream):
                self._skip("stream", "stream", "no TLS")
            self._skip("authentication", "authentication", "no TLS")
        else:
            step = Step("authentication", "authentication")
            self._add(step.fail(p.summary, *p.advice))

    def _streamErrorAdvice(self, condition: str, text: str | None, where: str):
        d = self.domain
        summary = f"{where} sent stream error {condition}" + (f" ({text})" if text else "")
        if condition == "host-unknown":
            return summary, (f"the server at {where} does not serve {d}: add {d} as a host "
                             f"(Prosody: VirtualHost \"{d}\"; ejabberd: hosts), or fix the "
                             "SRV record so that it points at the server that does")
        if condition in PEER_REFUSALS:
            return summary, (f"{d} refuses servers it cannot authenticate; it may require a "
                             "valid certificate from us (run check with --config so that "
                             "ours is presented)")
        return summary, "see the text of the error and the remote server's log"

    def _presentedCertificate(self) -> bool:
        """Whether we present a certificate that covers our C{from} domain."""
        return self.local != CHECK_FROM and self.tls.ourCertificateCovers(self.local)

    def _noTLS(self, features: StreamFeatures, step: Step) -> None:
        d = self.domain
        advice = (f"enable TLS on {d}'s server with a certificate for {d} (Prosody: "
                  "s2s_require_encryption = true; ejabberd: s2s_use_starttls: required)")
        if self.policy.mustEncrypt(d):
            step.fail(f"{d} does not offer STARTTLS, and use_starttls = "
                      f"{self.s2s.use_starttls!r} requires TLS", advice)
        else:
            step.warn(f"{d} does not offer STARTTLS: the stream would not be encrypted",
                      advice)
        self._add(step)
        self._skip("certificate", "certificate", "no TLS")

    def _tlsDone(self, conn, step: Step, direct: bool) -> None:
        d = self.domain
        info = self.tls.describe(conn)
        step.data = dict(info, direct_tls=direct)
        step.summary = (f"{step.summary}: {info.get('version')} {info.get('cipher')}"
                        + (f", ALPN {info['alpn']}" if info.get("alpn") else "")
                        + f", SNI {d}")
        if direct and info.get("alpn") != "xmpp-server":
            step.details.append("note: the server did not select ALPN xmpp-server "
                                "(allowed; XEP-0368 recommends it)")
        self._add(step)
        self._certificate(conn)

    def _certificate(self, conn) -> None:
        from s2sgate.auth.tls import peerCertificates

        d = self.domain
        step = Step("certificate", "certificate")
        verdict = self.tls.peerVerdict(conn, d, now=self.now, dane=self.tlsa)
        self.peerCertificate = verdict
        ids = verdict.identities
        days = _daysLeft(verdict.notAfter, self.now)
        step.data = {"status": verdict.status, "reason": verdict.reason,
                     "names": ids.describe() if ids else None,
                     "dns": list(ids.dns) if ids else [], "srv": list(ids.srv) if ids else [],
                     "xmppaddr": list(ids.xmpp) if ids else [],
                     "not_after": verdict.notAfter.isoformat() if verdict.notAfter else None,
                     "days_left": days}
        try:
            leaf, chain = peerCertificates(conn)
            self.peerChain = (leaf, chain) if leaf is not None else None
            if leaf is not None:
                c = leaf.to_cryptography()
                step.details.append(f"subject {c.subject.rfc4514_string() or '(empty)'}, "
                                    f"issuer {c.issuer.rfc4514_string()}")
                step.details.append(f"chain: leaf + {len(chain)} more certificate"
                                    f"{'s' if len(chain) != 1 else ''} sent")
        except Exception:
            pass
        if ids is not None:
            step.details.append(f"names: {ids.describe()}")
        if verdict.dane is not None:
            step.data["dane"] = verdict.dane
            step.details.append(f"DANE: {verdict.dane}")
        if verdict.notAfter is not None:
            step.details.append(f"expires {_day(verdict.notAfter)} ({days} days left)")
        trustedBy = (f"the CAs in {self.s2s.cafile}" if self.s2s.cafile
                     else "the system's CA store")
        if verdict.status == "valid":
            step.summary = f"valid for {d} (names {ids.describe()}; expires {_day(verdict.notAfter)}, {days} days left)"
            if days is not None and days < EXPIRY_WARNING_DAYS:
                step.warn(None, f"the certificate of {d} expires in {days} days: renew it "
                                "(e.g. let the ACME client renew and reload the server)")
        else:
            advice = {
                "name-mismatch": (f"the certificate names only {ids.describe() if ids else '?'}"
                                  f" — get one that covers {d} (a DNS name {d} in the "
                                  "subjectAltName, e.g. from Let's Encrypt), or point the "
                                  f"SRV record at a server that has one"),
                "expired": f"the certificate expired on {_day(verdict.notAfter)}: renew it",
                "not-yet-valid": "the certificate is not valid yet: check the server's clock "
                                 "and the certificate's dates",
                "self-signed": (f"{d} uses a self-signed certificate: get one from a public CA "
                                "(e.g. Let's Encrypt); if you trust this one, put it in a "
                                "file named by s2s.cafile"),
                "untrusted": (f"the chain does not lead to a CA in {trustedBy}: install the "
                              "intermediate certificates on the server (full chain), or add "
                              "the CA to s2s.cafile if it is a private one"),
                "none": f"{d} presented no certificate: configure one for {d}",
                "dane-mismatch": (f"the certificate of {d} matches none of its DNSSEC-signed "
                                  "TLSA records: update the TLSA records (publish the new "
                                  "key's before switching) or the certificate; the gateway "
                                  "refuses this peer"),
            }.get(verdict.status, "")
            fatal = self.policy.mustBeTrusted(d) or verdict.status == "dane-mismatch"
            step.fail(verdict.reason, advice, fatal=fatal)
            if fatal:
                step.details.append(self._trustRule(d))
        self._add(step)

    def _trustRule(self, d: str) -> str:
        if self.s2s.use_starttls == "required_trusted":
            return 'use_starttls = "required_trusted": the gateway accepts only valid certificates'
        if d in self.s2s.secure_domains:
            return f"{d} is in s2s.secure_domains: only a valid certificate authenticates it"
        return "secure_auth = true: only valid certificates authenticate servers"

    def _auth(self, features: StreamFeatures | None, secure: bool,
              refused: "_Probe | None" = None) -> None:
        """
        Both directions: can we authenticate to the peer (SASL EXTERNAL with
        our certificate, or dialback), and can the peer authenticate to us
        (a valid certificate, or dialback)?  C{refused}: the peer ended the
        stream instead of sending features.
        """
        d = self.domain
        step = Step("authentication", "authentication")
        features = features or StreamFeatures()
        external = features.offersMechanism("EXTERNAL")
        presented = self._presentedCertificate()
        cert = self.peerCertificate
        certBad = cert is not None and not cert.valid
        step.data = {"after_tls": secure, "sasl_external": external,
                     "sasl_mechanisms": list(features.mechanisms), "dialback": features.dialback,
                     "our_certificate_presented": presented,
                     "refused": refused.summary if refused else None}
        if refused is not None:
            step.summary = refused.summary
            step.details.append("no features after TLS: neither SASL EXTERNAL nor dialback "
                                "is available to us")
        else:
            offered = [m for m, on in (("SASL EXTERNAL", external),
                                       ("dialback", features.dialback)) if on]
            step.summary = ("offered: " + " and ".join(offered) if offered
                            else "neither SASL EXTERNAL nor dialback offered") + \
                (" (after TLS)" if secure else " (without TLS)")
        if presented:
            step.details.append(f"we presented our certificate for {self.local}"
                                + (": accepted (EXTERNAL offered)" if external
                                   else ": EXTERNAL not offered"))
        else:
            step.details.append("we presented no certificate"
                                + (f" (from = {CHECK_FROM}; use --config to present ours)"
                                   if self.local == CHECK_FROM else ""))

        problems: list[tuple[bool, str, str]] = []  # (fatal, what, advice)
        # We -> peer.
        if not external and not features.dialback:
            if presented:
                problems.append((True, f"{d} accepts neither our certificate for "
                                       f"{self.local} nor dialback",
                                 f"{d} offers SASL EXTERNAL only to servers whose certificate "
                                 f"it trusts and that names their domain: make sure ours "
                                 f"covers {self.local} and comes from a CA {d} trusts (a "
                                 f"public one), or ask {d} to allow dialback"))
            elif secure:
                problems.append((False, f"{d} accepts only servers with a valid certificate "
                                        "(no dialback offered to us)",
                                 "the gateway needs s2s.certfile with a certificate for its "
                                 f"domain from a CA {d} trusts; run check with --config to "
                                 "test it"))
            else:
                problems.append((False, f"{d} offers no authentication method before TLS", ""))
        # Peer -> us.
        if certBad and not features.dialback:
            problems.append((True, f"{d} offers no dialback, so it can only authenticate to "
                                   f"us with its certificate, which is not valid ({cert.reason}); "
                                   "its streams to us would be refused",
                             f"fix {d}'s certificate (see above)"))
        elif certBad and not self.policy.mustBeTrusted(d):
            problems.append((False, f"only dialback can authenticate {d} (its certificate "
                                    "is not valid); servers that require valid "
                                    "certificates will refuse it", ""))
        elif certBad:
            step.details.append(f"dialback is not enough for {d}: {self._trustRule(d)}")

        fatal = [p for p in problems if p[0]]
        for isFatal, what, advice in problems:
            if isFatal and (isFatal, what, advice) == fatal[0]:
                step.details.insert(0, step.summary)
                step.fail(what, advice)
            else:
                step.details.append(what)
                if advice:
                    step.advice.append(advice)
                if not fatal:
                    step.warn(None)
        if refused is not None and not step.advice:
            step.advice += refused.advice
        self._add(step)

    def _offered(self, features: StreamFeatures, secure: bool) -> None:
        """
        What else the peer offers before authentication: XEP-0478 stream
        limits, XEP-0288 bidi, XEP-0198 stream management (most servers offer
        it only after authentication, which the check does not do), and
        whether its dialback speaks XEP-0220 errors.
        """
        d = self.domain
        step = Step("stream-features", "offered features" + (" (after TLS)" if secure else ""))
        limits = features.child(NS_LIMITS, "limits")
        maxBytes = idle = None
        if limits is not None:
            for child in limits.elements():
                try:
                    value = int(str(child).strip())
                except ValueError:
                    step.warn(None, f"{d} advertises a malformed XEP-0478 <{child.name}/>: "
                                    f"{str(child).strip()[:40]!r}")
                    continue
                if child.name == "max-bytes":
                    maxBytes = value
                elif child.name == "idle-seconds":
                    idle = value
        dialback = features.child(NS_DB_FEATURE, "dialback")
        dialbackErrors = dialback is not None and any(
            c.name == "errors" for c in dialback.elements())
        bidi = features.child(NS_BIDI_FEATURE, "bidi") is not None
        sm = features.child(NS_SM, "sm") is not None
        # Our further local domains ask for a stream to this peer only when
        # it speaks dialback (s2s/multiplex.py).
        multiplex = dialback is not None and self.s2s.multiplex.enabled
        step.data = {"limits": None if limits is None else {"max_bytes": maxBytes,
                                                            "idle_seconds": idle},
                     "bidi": bidi, "stream_management": sm if sm else None,
                     "dialback_errors": dialbackErrors if dialback is not None else None,
                     "multiplex": multiplex}
        parts = []
        if limits is None:
            parts.append("no stream limits (XEP-0478)")
        else:
            parts.append("limits: " + ", ".join(
                p for p in ((f"{maxBytes} bytes per stanza" if maxBytes is not None else ""),
                            (f"idle {idle} s" if idle is not None else "")) if p))
        parts.append("bidi (XEP-0288)" if bidi else "no bidi")
        parts.append("stream management (XEP-0198)" if sm else
                     "no stream management before authentication")
        if dialback is not None:
            parts.append("dialback with errors (XEP-0220)" if dialbackErrors
                         else "dialback without <errors/>")
        step.summary = "; ".join(parts)
        ours = self.s2s.stanza_size_limit
        if maxBytes is not None:
            step.details.append(f"{d} accepts stanzas up to {maxBytes} bytes; ours: {ours}")
            if maxBytes < MIN_STANZA_BYTES:
                step.warn(None, f"{d} limits stanzas to {maxBytes} bytes, below the 10000 "
                                "RFC 6120 section 13.12 requires: larger stanzas to it fail")
            elif maxBytes < ours:
                step.details.append(f"stanzas between {maxBytes} and {ours} bytes pass here "
                                    f"but {d} refuses them")
        if idle is not None:
            step.details.append(f"{d} closes streams idle for {idle} s; the gateway's "
                                "whitespace keepalives keep them open")
        if not sm:
            step.details.append("stream management is usually offered after authentication, "
                                "which the check does not perform")
        if dialback is not None and not dialbackErrors:
            step.details.append(f"a refused dialback from {d} may end the whole stream "
                                "instead of one domain pair (no XEP-0220 errors)")
        if multiplex:
            step.details.append(f"our local domains can share one stream to {d}: each further "
                                "one asks for it with dialback (XEP-0220 multiplexing)")
        elif dialback is None:
            step.details.append(f"each of our local domains needs a stream of its own to {d}: "
                                "it offers no dialback to add a domain to a stream with")
        else:
            step.details.append("each local domain opens a stream of its own "
                                "(s2s.multiplex.enabled = false)")
        self._add(step)

    def _presented(self) -> None:
        """Days left on the certificate we present as C{self.local} (check with --config)."""
        cert = self.tls.certificateFor(self.local)
        step = Step("presented-certificate", f"our certificate for {self.local}")
        if cert is None:
            self._add(step.warn(f"we present no certificate for {self.local}",
                                f"set s2s.certfile to a certificate for {self.local}: servers "
                                "requiring one (secure_auth) refuse us otherwise"))
            return
        notAfter = cert.leaf.not_valid_after_utc
        days = _daysLeft(notAfter, self.now)
        from s2sgate.auth.certs import matchesDomain

        covers = matchesDomain(cert.identities, self.local)
        step.data = {"certfile": cert.path, "names": cert.identities.describe(),
                     "covers": covers, "not_after": notAfter.isoformat(), "days_left": days}
        step.summary = (f"{cert.path}: names {cert.identities.describe()}; expires "
                        f"{_day(notAfter)}, {days} days left")
        if not covers:
            step.fail(f"{cert.path} does not name {self.local}",
                      f"get a certificate that covers {self.local}: without it SASL EXTERNAL "
                      "to any server fails", fatal=False)
        elif days is not None and days < 0:
            step.fail(f"{cert.path} expired on {_day(notAfter)}",
                      "renew it and reload the gateway", fatal=False)
        elif days is not None and days < EXPIRY_ERROR_DAYS:
            step.fail(f"{cert.path} expires in {days} days",
                      "renew it now and reload the gateway", fatal=False)
        elif days is not None and days < EXPIRY_WARNING_DAYS:
            step.warn(None, f"it expires in {days} days: renew it and reload the gateway")
        self._add(step)

    async def _ownListener(self, reachable) -> None:
        """
        For one of our own domains: does each published target reach this
        gateway?  Only a server holding this gateway's dialback secret
        (C{s2s.shared}) answers C{valid} to a C{<db:verify/>} with a key made
        from it, so the answer proves (or disproves) it.
        """
        d = self.domain
        step = Step("own-listener", f"published targets reach this gateway ({d})")
        listenPorts = sorted({_endpointPort(e) for e in
                              (*self.s2s.listen, *self.s2s.direct_tls_listen)} - {None})
        for t, a in reachable:
            if listenPorts and a.port not in listenPorts:
                step.details.append(f"{_where(a, t)}: port {a.port} is not one of s2s.listen's "
                                    f"({', '.join(map(str, listenPorts))}); fine only behind a "
                                    "port forward that maps it")
        if not self.s2s.shared:
            step.status = SKIPPED
            step.summary = ("not checked: s2s.shared is not set (the dialback secret is random "
                            "per start, so no key can prove who answers)")
            step.advice.append("set s2s.shared (the same on every instance) and run check again")
            self._add(step)
            return
        from s2sgate.auth.dialback import DialbackKeys
        from s2sgate.features.dialback import DialbackVerify

        keys = DialbackKeys(self.s2s.shared)
        probes = [(t, a) for t, a in reachable][:4]

        async def verifyAt(t, a):
            streamId = secrets.token_urlsafe(16)
            verify = DialbackVerify(streamId, keys.generate(CHECK_FROM, d, streamId))
            recorder, failed = await self._probe(t, a, CHECK_FROM, verify)
            if recorder is None:
                return None, f"cannot connect ({failed})"
            if verify.verdict is None:
                return None, f"no dialback answer ({failed.text if failed else 'stream ended'})"
            return verify.verdict.valid, verify.verdict.answer

        results = await defer.gatherResults(
            [defer.ensureDeferred(verifyAt(t, a)) for t, a in probes], consumeErrors=True)
        step.data = {"targets": [{"address": str(a), "host": t.host, "direct_tls": t.direct_tls,
                                  "ours": ours, "answer": answer}
                                 for (t, a), (ours, answer) in zip(probes, results)]}
        wrong = [(t, a) for (t, a), (ours, _) in zip(probes, results) if ours is False]
        unknown = [(t, a, why) for (t, a), (ours, why) in zip(probes, results) if ours is None]
        for (t, a), (ours, answer) in zip(probes, results):
            step.details.insert(0, f"{_where(a, t)}: " + (
                "this gateway (verified a key made with s2s.shared)" if ours
                else f"another server ({answer})" if ours is False else answer))
        if wrong:
            step.fail(f"{_where(wrong[0][1], wrong[0][0])} is served by another server: it "
                      f"rejected a dialback key made with this gateway's s2s.shared",
                      f"point the SRV record of {d} at this gateway (or forward the port to "
                      "it); if it is another instance, give it the same s2s.shared")
        elif unknown:
            step.warn(f"could not tell for {_where(unknown[0][1], unknown[0][0])}: {unknown[0][2]}")
        else:
            step.summary = (f"{len(probes)} of {len(probes)} reachable target"
                            f"{'s' if len(probes) > 1 else ''} answered as this gateway")
        self._add(step)

    # -- 6. our own certificates ---------------------------------------------------------

    async def _localSteps(self) -> None:
        from s2sgate.auth.tls import LocalCertificate, TLSSetupError

        d = self.domain
        entries: list[tuple[str, str, str]] = []  # (label, domain it serves, path)
        perDomain = {normalize(e.domain): e for e in self.s2s.domain_certfile
                     if isinstance(e, DomainCert)}
        for i, e in enumerate(self.s2s.domain_certfile):
            entries.append((f"s2s.domain_certfile[{i}]", normalize(e.domain), e.certfile))
        ours = perDomain.get(d)
        if ours is None and self.s2s.certfile:
            entries.insert(0, ("s2s.certfile", d, self.s2s.certfile))
        elif ours is None:
            step = Step("our-certificate", f"our certificate for {d}")
            if self.policy.tlsEnabled:
                step.fail(f"no certificate for {d}: neither s2s.certfile nor a "
                          f"domain_certfile entry covers it",
                          f"set s2s.certfile (PEM: certificate, chain and key) to a "
                          f"certificate that names {d}; use_starttls = "
                          f"{self.s2s.use_starttls!r} needs one")
            else:
                step.warn(f"no certificate for {d} (use_starttls = \"false\")",
                          "without TLS most of today's servers refuse to federate: "
                          f"get a certificate for {d} and set s2s.certfile")
            self._add(step)
        for label, domain, path in entries:
            isOurs = domain == d
            name = "our-certificate" if isOurs else "domain-certfile"
            step = Step(name, f"{label} ({domain})")
            step.data = {"config_key": label, "domain": domain, "certfile": path}
            try:
                cert = LocalCertificate.load(path, label)
            except TLSSetupError as e:
                advice = ("put the private key into the same PEM file, after the certificate "
                          "and its chain" if "key" in e.message else "")
                step.fail(f"{path}: {e.message}", advice, fatal=isOurs)
                self._add(step)
                continue
            from s2sgate.auth.certs import matchesDomain, verifyPeer

            leaf = cert.leaf
            notAfter = leaf.not_valid_after_utc
            days = _daysLeft(notAfter, self.now)
            covers = matchesDomain(cert.identities, domain)
            chain = verifyPeer(self.tls.trust, leaf, cert.chain, domain, now=self.now)
            step.data.update({"covers": covers, "names": cert.identities.describe(),
                              "not_after": notAfter.isoformat(), "days_left": days,
                              "key_matches": True,
                              "chain": "trusted" if chain.trusted else chain.status,
                              "chain_reason": None if chain.trusted else chain.reason})
            step.details = [f"names: {cert.identities.describe()}",
                            f"expires {_day(notAfter)} ({days} days left)",
                            "private key matches the certificate",
                            f"chain against {self.s2s.cafile or 'the system CA store'}: "
                            + ("trusted" if chain.trusted else chain.reason)]
            step.summary = f"{path}: " + ("covers" if covers else "does NOT cover") + \
                           f" {domain}, expires {_day(notAfter)}"
            if days is not None and days < 0:
                step.fail(f"{path} expired on {_day(notAfter)}",
                          "renew it and reload the gateway", fatal=isOurs)
            elif not covers:
                step.fail(f"{path} names only {cert.identities.describe()}, not {domain}",
                          f"get a certificate that covers {domain} (a DNS name {domain} "
                          "in its subjectAltName)", fatal=isOurs)
            elif chain.status in ("untrusted", "self-signed"):
                step.warn(None, "other servers will not trust this certificate unless it "
                                "comes from a public CA (e.g. Let's Encrypt) and the file "
                                "holds the full chain")
            elif days is not None and days < EXPIRY_WARNING_DAYS:
                step.warn(None, f"it expires in {days} days: renew it and reload the gateway")
            self._add(step)
        if self.tlsProblem and not entries:
            self._add(Step("our-certificate", "our certificates").fail(
                self.tlsProblem, fatal=False))


# --- output ---------------------------------------------------------------------------


class TextPrinter:
    """Prints each step as it finishes; ✔/✘ or a plain ASCII fallback."""

    UNICODE = {OK: "✔", WARN: "!", FAIL: "✘", SKIPPED: "-"}
    ASCII = {OK: "[ok]  ", WARN: "[warn]", FAIL: "[FAIL]", SKIPPED: "[skip]"}

    def __init__(self, out=None, ascii: bool | None = None):
        self.out = out if out is not None else sys.stdout
        if ascii is None:
            enc = getattr(self.out, "encoding", None) or "ascii"
            try:
                "✔✘→—".encode(enc)
                ascii = False
            except (UnicodeError, LookupError):
                ascii = True
        self.marks = self.ASCII if ascii else self.UNICODE
        self.arrow = "->" if ascii else "→"
        self.ascii = ascii
        self.closed = False

    def _text(self, text: str) -> str:
        if self.ascii:
            text = text.replace("→", "->").replace("—", "-")
            return text.encode("ascii", "replace").decode("ascii")
        return text

    def write(self, line: str) -> None:
        if self.closed:
            return
        try:
            self.out.write(self._text(line) + "\n")
            self.out.flush()
        except BrokenPipeError:  # e.g. `s2sgate check ... | head`
            self.closed = True

    def start(self, report: Report) -> None:
        self.write(f"Checking federation with {report.domain} "
                   f"(DNS: {report.nameservers})")

    def step(self, step: Step) -> None:
        mark = self.marks[step.status]
        self.write(f"{mark} {step.title}: {step.summary}")
        for line in step.details:
            self.write(f"      {line}")
        for line in step.advice:
            self.write(f"    {self.arrow} {line}")

    def verdict(self, report: Report) -> None:
        mark = self.marks[FAIL if report.fatal else OK]
        self.write(f"Verdict: {mark} {report.verdict()}")
