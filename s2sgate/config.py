# -*- test-case-name: tests.test_config -*-
"""
The gateway's configuration: one TOML file, read once, checked completely.

A federation gateway that starts with a half-understood config is worse than
one that does not start: a typo in C{use_starttls} or C{host_policy} silently
changes who may talk to the server.  So every key of every table is checked
here, before anything listens: unknown keys, types (a TOML C{true} is not an
integer, although Python's C{bool} is an C{int}), ranges, enumerations,
readable files and the rules that tie keys together.  Any problem raises
L{ConfigError}, whose text is one line::

    <file>: <key>: <problem>; allowed: <what is allowed>

The result is immutable (frozen dataclasses, tuples) so that the running
gateway can share it freely.  Domains are stored in the canonical form of
L{s2sgate.xmpp.domain.normalize}.  Relative paths (C{certfile}, C{secret_file}, ...)
are resolved against the directory of the config file, as Prosody does, and
stored resolved.  Secrets never appear in error messages or in C{repr()}.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
import stat
import tomllib
import urllib.parse
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping

from s2sgate.xmpp.domain import InvalidDomain, normalize

__all__ = [
    "ConfigError",
    "Config",
    "ComponentConfig",
    "S2SConfig",
    "OutgoingConfig",
    "DNSConfig",
    "HostPolicy",
    "DomainCert",
    "AddressOverride",
    "AdminConfig",
    "LogConfig",
    "load_config",
    "parse_config",
]

POLICIES = ("allow", "deny")
STARTTLS_MODES = ("false", "optional", "required", "required_trusted")
DANE_MODES = ("off", "opportunistic", "required")
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("text", "json")
MIN_STANZA_SIZE = 10000
_LISTEN_TYPES = ("tcp", "tcp6", "unix")
_MAX_FILE = 1 << 20  # bytes read from a PEM or secret file


class ConfigError(Exception):
    """
    The config cannot be used.  C{str()} is one line naming the file, the key,
    the problem and what is allowed; the parts are attributes too.
    """

    def __init__(self, file: str, key: str, problem: str, allowed: str):
        super().__init__(file, key, problem, allowed)
        self.file = file
        self.key = key
        self.problem = problem
        self.allowed = allowed

    def __str__(self) -> str:
        return _oneLine(
            f"{self.file}: {self.key}: {self.problem}; allowed: {self.allowed}"
        )


# --- the typed result ------------------------------------------------------


def _maskedRepr(obj: Any, secret: tuple[str, ...]) -> str:
    parts = []
    for f in fields(obj):
        if not f.repr:
            continue
        value = getattr(obj, f.name)
        shown = "'***'" if f.name in secret and value is not None else repr(value)
        parts.append(f"{f.name}={shown}")
    return f"{type(obj).__name__}({', '.join(parts)})"


@dataclass(frozen=True)
class ComponentConfig:
    """The XEP-0114 link to the c2s server.  C{repr} hides the secret."""

    jid: str
    host: str = "127.0.0.1"
    port: int = 5347
    secret: str = field(default="", compare=True)
    secret_file: str | None = None
    keepalive: float = 60
    max_retry_delay: float = 60
    auth_retry_delay: float = 300
    buffer_limit: int = 1000
    buffer_timeout: float = 60
    buffer_bytes: int = 16 * 1024 * 1024
    high_water: int = 4 * 1024 * 1024
    low_water: int = 1024 * 1024
    fast_retry_period: float = 30

    def __repr__(self) -> str:
        return _maskedRepr(self, ("secret",))


@dataclass(frozen=True)
class HostPolicy:
    """One C{[[s2s.host_policy]]} entry: C{policy} for exactly C{host}."""

    host: str
    policy: str


@dataclass(frozen=True)
class DomainCert:
    """A certificate used for one local domain instead of C{s2s.certfile}."""

    domain: str
    certfile: str


@dataclass(frozen=True)
class AddressOverride:
    """Connect to C{host} at C{ip_address}:C{port} instead of asking DNS."""

    host: str
    ip_address: str
    port: int


@dataclass(frozen=True)
class OutgoingConfig:
    """How outbound s2s connections are made."""

    port: int = 5269
    ip_versions: tuple[int, ...] = (4, 6)
    connection_timeout: float = 10
    connection_attempt_delay: float = 0.25   # RFC 8305: next address after this long


@dataclass(frozen=True)
class DNSConfig:
    """The resolver; empty C{nameservers} means /etc/resolv.conf."""

    timeout: float = 10
    retries: int = 2
    nameservers: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class PeerLimits:
    """Bounds on what a remote peer may make us do or hold (C{[s2s.limits]})."""

    verifies_per_stream: int = 10          # dialback verify legs in flight per inbound stream
    verifies_per_address: int = 30         # ... per peer IP address, over all its streams
    verifies_total: int = 300              # ... in total
    claims_per_stream: int = 50            # remote domains one stream may claim
    refused_claims: int = 3                # refused claims before the stream is ended
    unauthenticated_per_address: int = 32  # inbound streams not yet authenticated, per IP
    unauthenticated_total: int = 1000      # ... in total


@dataclass(frozen=True)
class StreamManagementConfig:
    """XEP-0198 on s2s streams: acks both ways, what happens to unacked stanzas."""

    enabled: bool = True
    request_every: int = 5
    on_loss: str = "resend"


@dataclass(frozen=True)
class MultiplexConfig:
    """
    Further (local, remote) pairs on an established outbound stream
    (XEP-0220 multiplexing): on or off, how long the peer may take to
    answer, and the bounded memory of peers that refused or did not answer.
    """

    enabled: bool = True
    answer_timeout: float = 10
    remember_peers: int = 1000
    forget_after: float = 86400


@dataclass(frozen=True)
class S2SConfig:
    """Server-to-server settings.  C{repr} hides C{shared}."""

    listen: tuple[str, ...] = ("tcp:5269",)
    direct_tls_listen: tuple[str, ...] = ()
    default_policy: str = "allow"
    host_policy: tuple[HostPolicy, ...] = ()
    use_starttls: str = "required"
    certfile: str | None = None
    domain_certfile: tuple[DomainCert, ...] = ()
    cafile: str | None = None
    ciphers: str | None = None
    shared: str | None = None
    secure_auth: bool = False
    insecure_domains: tuple[str, ...] = ()
    secure_domains: tuple[str, ...] = ()
    dane: str = "off"
    dane_domains: tuple[str, ...] = ()
    stanza_size_limit: int = 524288
    max_retry_delay: float = 300
    address: tuple[AddressOverride, ...] = ()
    allow_anonymous_s2s: bool = False
    anonymous_domains: tuple[str, ...] = ()
    disabled_domains: tuple[str, ...] = ()
    queue_limit: int = 1000
    idle_timeout: float = 600
    negotiation_timeout: float = 30
    shutdown_timeout: float = 10
    bidi: bool = True
    stream_management: StreamManagementConfig = field(default_factory=StreamManagementConfig)
    multiplex: MultiplexConfig = field(default_factory=MultiplexConfig)
    outgoing: OutgoingConfig = field(default_factory=OutgoingConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    limits: PeerLimits = field(default_factory=PeerLimits)
    _policies: Mapping[str, str] = field(
        init=False, repr=False, compare=False, hash=False
    )
    _addresses: Mapping[str, AddressOverride] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "_policies",
            MappingProxyType({p.host: p.policy for p in self.host_policy}),
        )
        object.__setattr__(
            self, "_addresses", MappingProxyType({a.host: a for a in self.address})
        )

    def __repr__(self) -> str:
        return _maskedRepr(self, ("shared",))


@dataclass(frozen=True)
class AdminConfig:
    """
    The admin endpoint; C{listen} is C{None} when disabled (C{""}).
    C{token}, when set, is required as C{Authorization: Bearer ...} on every
    request; C{repr} hides it.
    """

    listen: str | None = "tcp:5281:interface=127.0.0.1"
    token: str | None = None
    peers: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return _maskedRepr(self, ("token",))


@dataclass(frozen=True)
class LogConfig:
    """Logging: level and output format."""

    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class Config:
    """The whole, checked configuration."""

    path: str
    local_domains: tuple[str, ...]
    component: ComponentConfig
    s2s: S2SConfig = field(default_factory=S2SConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def policy_for(self, remote_domain: str) -> str:
        """
        Return C{"allow"} or C{"deny"} for C{remote_domain}: its exact
        C{host_policy} entry, else C{default_policy}.  The name is
        normalised first; a name that is not a valid domain is denied.
        """
        policies = self.s2s._policies
        found = policies.get(remote_domain)
        if found is not None:
            return found
        try:
            canonical = normalize(remote_domain)
        except InvalidDomain:
            return "deny"
        return policies.get(canonical, self.s2s.default_policy)

    def address_for(self, domain: str) -> AddressOverride | None:
        """Return the C{s2s.address} override for C{domain}, or C{None}."""
        found = self.s2s._addresses.get(domain)
        if found is not None:
            return found
        try:
            return self.s2s._addresses.get(normalize(domain))
        except InvalidDomain:
            return None


# --- reading ---------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check the TOML file at C{path}; raise L{ConfigError}."""
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(
            filename, "-", f"cannot read {filename!r} ({_reason(e)})",
            "a readable TOML file",
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            filename, f"byte {e.start}", "not valid UTF-8", "a UTF-8 TOML file"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        where = re.search(r"\s*\(at (line \d+, column \d+|end of document)\)$", message)
        key = "-"
        if where:
            key = where.group(1)
            message = message[: where.start()]
        raise ConfigError(
            filename, key, f"TOML syntax error: {message}",
            "TOML 1.0 (https://toml.io/en/v1.0.0)",
        ) from None
    return parse_config(data, filename)


def parse_config(data: Any, filename: str) -> Config:
    """
    Check C{data} (what C{tomllib} returned) and build the L{Config}.
    C{filename} names the file in errors; relative paths are resolved
    against its directory.
    """
    ctx = _Context(filename)
    top = _Table(ctx, data, "", ("local_domains", "component", "s2s", "admin", "log"))

    local = _domainList(ctx, top, "local_domains", required=True)
    if not local:
        ctx.fail("local_domains", "got []", "a non-empty list of domains")
    component = _component(ctx, top)
    s2s = _s2s(ctx, top, local)
    admin = _admin(ctx, top)
    if admin.peers and s2s.shared is None:
        # Several processes: a remote server checks our dialback key with
        # whichever process its connection reaches.
        ctx.fail("s2s.shared", "unset while admin.peers names other gateway processes",
                 "the same dialback secret on every process of the site")
    log = _log(ctx, top)
    return Config(
        path=filename, local_domains=local, component=component, s2s=s2s,
        admin=admin, log=log,
    )


# --- tables ----------------------------------------------------------------


def _component(ctx: _Context, top: _Table) -> ComponentConfig:
    t = top.table(
        "component",
        ("jid", "host", "port", "secret", "secret_file", "keepalive",
         "max_retry_delay", "auth_retry_delay", "buffer_limit", "buffer_timeout",
         "buffer_bytes", "high_water", "low_water", "fast_retry_period"),
        required=True,
    )
    jid = t.get("jid", required=True)
    jid = _domain(ctx, t.key("jid"), jid)
    host = _string(ctx, t, "host", "127.0.0.1", nonEmpty=True,
                   allowed="a host name or IP address")
    port = _integer(ctx, t, "port", 5347, 1, 65535)

    hasSecret = "secret" in t.data
    hasFile = "secret_file" in t.data
    if hasSecret and hasFile:
        ctx.fail("component", "both secret and secret_file are set",
                 "exactly one of secret, secret_file")
    secretFile = None
    if hasSecret:
        secret = t.data["secret"]
        if not isinstance(secret, str) or not secret:
            # Never show the value: it may be the secret, or half of it.
            what = "an empty string" if secret == "" else _typeName(secret)
            ctx.fail(t.key("secret"), f"got {what}", "a non-empty string")
    elif hasFile:
        secretFile = _path(ctx, t, "secret_file")
        secret = _readSecret(ctx, t.key("secret_file"), secretFile)
    else:
        ctx.fail(t.key("secret"), "missing",
                 'secret = "..." or secret_file = "/path/to/file"')

    highWater = _integer(ctx, t, "high_water", 4 * 1024 * 1024, 65536)
    lowWater = _integer(ctx, t, "low_water", min(1024 * 1024, highWater // 2), 0,
                        highWater - 1)
    return ComponentConfig(
        jid=jid, host=host, port=port, secret=secret, secret_file=secretFile,
        buffer_bytes=_integer(ctx, t, "buffer_bytes", 16 * 1024 * 1024, 0),
        high_water=highWater, low_water=lowWater,
        keepalive=_seconds(ctx, t, "keepalive", 60, above=0),
        max_retry_delay=_seconds(ctx, t, "max_retry_delay", 60, atLeast=1),
        auth_retry_delay=_seconds(ctx, t, "auth_retry_delay", 300, atLeast=1),
        buffer_limit=_integer(ctx, t, "buffer_limit", 1000, 0),
        buffer_timeout=_seconds(ctx, t, "buffer_timeout", 60, above=0),
        fast_retry_period=_seconds(ctx, t, "fast_retry_period", 30, atLeast=0),
    )


_S2S_KEYS = (
    "listen", "direct_tls_listen", "default_policy", "host_policy",
    "use_starttls", "certfile", "domain_certfile", "cafile", "ciphers",
    "shared", "secure_auth", "insecure_domains", "secure_domains", "dane", "dane_domains",
    "stanza_size_limit", "max_retry_delay", "address", "allow_anonymous_s2s",
    "anonymous_domains", "disabled_domains", "queue_limit", "idle_timeout",
    "negotiation_timeout", "shutdown_timeout", "bidi", "stream_management", "multiplex",
    "outgoing",
    "dns", "limits",
)

LOSS_POLICIES = ("resend", "bounce")


def _s2s(ctx: _Context, top: _Table, local: tuple[str, ...]) -> S2SConfig:
    t = top.table("s2s", _S2S_KEYS)
    listen = _endpoints(ctx, t, "listen", ("tcp:5269",))
    directTLS = _endpoints(ctx, t, "direct_tls_listen", ())
    defaultPolicy = _choice(ctx, t, "default_policy", "allow", POLICIES)
    hostPolicy = _hostPolicy(ctx, t)
    useStartTLS = _choice(ctx, t, "use_starttls", "required", STARTTLS_MODES)
    certfile = _pemFile(ctx, t, "certfile", needKey=True)
    domainCerts = _domainCerts(ctx, t, local)
    cafile = _pemFile(ctx, t, "cafile", needKey=False)
    ciphers = _ciphers(ctx, t)
    shared = t.get("shared", "")
    if not isinstance(shared, str):
        ctx.fail(t.key("shared"), f"got {_typeName(shared)}",
                 'a string; "" or unset makes a random secret per start')
    shared = shared or None
    secureAuth = _bool(ctx, t, "secure_auth", False)
    insecure = _domainList(ctx, t, "insecure_domains")
    secure = _domainList(ctx, t, "secure_domains")
    for i, d in enumerate(secure):
        if d in insecure:
            ctx.fail(f"{t.key('secure_domains')}[{i}]",
                     f"{d!r} is also in s2s.insecure_domains",
                     "a domain in at most one of secure_domains, insecure_domains")
    dane = _choice(ctx, t, "dane", "off", DANE_MODES)
    daneDomains = _domainList(ctx, t, "dane_domains")
    for i, d in enumerate(daneDomains):
        if d in insecure:
            ctx.fail(f"{t.key('dane_domains')}[{i}]",
                     f"{d!r} is also in s2s.insecure_domains",
                     "a domain in at most one of dane_domains, insecure_domains")
    sizeLimit = _integer(ctx, t, "stanza_size_limit", 524288, MIN_STANZA_SIZE)
    maxRetry = _seconds(ctx, t, "max_retry_delay", 300, atLeast=1)
    outgoing = _outgoing(ctx, t)
    address = _addresses(ctx, t, outgoing.port)
    allowAnon = _bool(ctx, t, "allow_anonymous_s2s", False)
    anon = _domainList(ctx, t, "anonymous_domains")
    _subset(ctx, t.key("anonymous_domains"), anon, local)
    disabled = _domainList(ctx, t, "disabled_domains")
    _subset(ctx, t.key("disabled_domains"), disabled, local)
    queueLimit = _integer(ctx, t, "queue_limit", 1000, 1)
    idle = _seconds(ctx, t, "idle_timeout", 600, above=0)
    negotiation = _seconds(ctx, t, "negotiation_timeout", 30, above=0)
    shutdown = _seconds(ctx, t, "shutdown_timeout", 10, atLeast=0)
    bidi = _bool(ctx, t, "bidi", True)
    sm = _streamManagement(ctx, t)
    multiplex = _multiplex(ctx, t)
    dns = _dns(ctx, t)
    limits = _limits(ctx, t)

    # Rules that tie keys together.
    covered = {c.domain for c in domainCerts}
    haveCert = certfile is not None or all(d in covered for d in local)
    if useStartTLS != "false" and not haveCert:
        missing = [d for d in local if d not in covered]
        ctx.fail(t.key("use_starttls"),
                 f"{useStartTLS!r} needs s2s.certfile (no certificate for "
                 f"{', '.join(missing)})",
                 'set s2s.certfile, or use_starttls = "false"')
    if secureAuth and useStartTLS == "false":
        ctx.fail(t.key("secure_auth"),
                 'true needs TLS but use_starttls = "false"',
                 'secure_auth = false, or use_starttls = "required" or '
                 '"required_trusted" with s2s.certfile')
    if secure and useStartTLS == "false":
        ctx.fail(t.key("secure_domains"),
                 'certificates need TLS but use_starttls = "false"',
                 'secure_domains = [], or use_starttls other than "false"')
    daneKey = t.key("dane") if dane != "off" else t.key("dane_domains")
    if (dane != "off" or daneDomains) and not dns.nameservers:
        ctx.fail(daneKey, "DANE needs a trusted validating resolver in s2s.dns.nameservers",
                 'set s2s.dns.nameservers (e.g. ["127.0.0.1"], a local validating '
                 'resolver), or dane = "off" and dane_domains = []')
    if (dane != "off" or daneDomains) and useStartTLS == "false":
        ctx.fail(daneKey, 'DANE needs TLS but use_starttls = "false"',
                 'dane = "off" and dane_domains = [], or use_starttls other than "false"')
    if directTLS and not haveCert:
        ctx.fail(t.key("direct_tls_listen"), "direct TLS needs s2s.certfile",
                 "set s2s.certfile, or direct_tls_listen = []")

    return S2SConfig(
        listen=listen, direct_tls_listen=directTLS,
        default_policy=defaultPolicy, host_policy=hostPolicy,
        use_starttls=useStartTLS, certfile=certfile,
        domain_certfile=domainCerts, cafile=cafile, ciphers=ciphers,
        shared=shared, secure_auth=secureAuth, insecure_domains=insecure,
        secure_domains=secure, dane=dane, dane_domains=daneDomains,
        stanza_size_limit=sizeLimit,
        max_retry_delay=maxRetry, address=address,
        allow_anonymous_s2s=allowAnon, anonymous_domains=anon,
        disabled_domains=disabled, queue_limit=queueLimit, idle_timeout=idle,
        negotiation_timeout=negotiation, shutdown_timeout=shutdown, bidi=bidi,
        stream_management=sm, multiplex=multiplex, outgoing=outgoing, dns=dns, limits=limits,
    )


def _streamManagement(ctx: _Context, s2s: _Table) -> StreamManagementConfig:
    t = s2s.table("stream_management", ("enabled", "request_every", "on_loss"))
    return StreamManagementConfig(
        enabled=_bool(ctx, t, "enabled", True),
        request_every=_integer(ctx, t, "request_every", 5, 1, 1000),
        on_loss=_choice(ctx, t, "on_loss", "resend", LOSS_POLICIES),
    )


def _multiplex(ctx: _Context, s2s: _Table) -> MultiplexConfig:
    t = s2s.table("multiplex", ("enabled", "answer_timeout", "remember_peers", "forget_after"))
    return MultiplexConfig(
        enabled=_bool(ctx, t, "enabled", True),
        answer_timeout=_seconds(ctx, t, "answer_timeout", 10, above=0),
        remember_peers=_integer(ctx, t, "remember_peers", 1000, 1),
        forget_after=_seconds(ctx, t, "forget_after", 86400, above=0),
    )


def _hostPolicy(ctx: _Context, t: _Table) -> tuple[HostPolicy, ...]:
    result: list[HostPolicy] = []
    seen: dict[str, str] = {}
    for key, item in _arrayOfTables(ctx, t, "host_policy",
                                    "a list of { host = ..., policy = ... }"):
        e = _Table(ctx, item, key, ("host", "policy"))
        host = _domain(ctx, e.key("host"), e.get("host", required=True))
        policy = e.get("policy", required=True, allowed=_choices(POLICIES))
        if policy not in POLICIES:
            ctx.fail(e.key("policy"), f"got {_show(policy)}", _choices(POLICIES))
        if host in seen:
            ctx.fail(e.key("host"), f"{host!r} is already listed at {seen[host]}",
                     "each host once")
        seen[host] = key
        result.append(HostPolicy(host, policy))
    return tuple(result)


def _domainCerts(ctx: _Context, t: _Table, local: tuple[str, ...]) -> tuple[DomainCert, ...]:
    result: list[DomainCert] = []
    seen: dict[str, str] = {}
    for key, item in _arrayOfTables(ctx, t, "domain_certfile",
                                    "a list of { domain = ..., certfile = ... }"):
        e = _Table(ctx, item, key, ("domain", "certfile"))
        domain = _domain(ctx, e.key("domain"), e.get("domain", required=True))
        if domain not in local:
            ctx.fail(e.key("domain"), f"{domain!r} is not in local_domains",
                     "one of " + ", ".join(repr(d) for d in local))
        if domain in seen:
            ctx.fail(e.key("domain"), f"{domain!r} is already listed at {seen[domain]}",
                     "each domain once")
        seen[domain] = key
        e.get("certfile", required=True, allowed=_PEM_ALLOWED)
        certfile = _pemFile(ctx, e, "certfile", needKey=True)
        assert certfile is not None
        result.append(DomainCert(domain, certfile))
    return tuple(result)


def _addresses(ctx: _Context, t: _Table, defaultPort: int) -> tuple[AddressOverride, ...]:
    result: list[AddressOverride] = []
    seen: dict[str, str] = {}
    for key, item in _arrayOfTables(
            ctx, t, "address",
            "a list of { host = ..., ip_address = ..., port = ... }"):
        e = _Table(ctx, item, key, ("host", "ip_address", "port"))
        host = _domain(ctx, e.key("host"), e.get("host", required=True))
        if host in seen:
            ctx.fail(e.key("host"), f"{host!r} is already listed at {seen[host]}",
                     "each host once")
        seen[host] = key
        allowedIP = 'an IPv4 or IPv6 address such as "192.0.2.7" or "2001:db8::7"'
        ip = e.get("ip_address", required=True, allowed=allowedIP)
        try:
            if not isinstance(ip, str):
                raise ValueError
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            ctx.fail(e.key("ip_address"), f"got {_show(ip)}", allowedIP)
        port = _integer(ctx, e, "port", defaultPort, 1, 65535)
        result.append(AddressOverride(host, ip, port))
    return tuple(result)


def _outgoing(ctx: _Context, s2s: _Table) -> OutgoingConfig:
    t = s2s.table("outgoing", ("port", "ip_versions", "connection_timeout",
                               "connection_attempt_delay"))
    port = _integer(ctx, t, "port", 5269, 1, 65535)
    allowed = "a non-empty list drawn from 4 and 6, each once, e.g. [4, 6]"
    versions = t.get("ip_versions", [4, 6])
    if not isinstance(versions, list) or not versions:
        ctx.fail(t.key("ip_versions"), f"got {_show(versions)}", allowed)
    for i, v in enumerate(versions):
        if not _isInt(v) or v not in (4, 6):
            ctx.fail(f"{t.key('ip_versions')}[{i}]", f"got {_show(v)}", allowed)
        if v in versions[:i]:
            ctx.fail(f"{t.key('ip_versions')}[{i}]", f"{v} is listed twice", allowed)
    return OutgoingConfig(
        port=port, ip_versions=tuple(versions),
        connection_timeout=_seconds(ctx, t, "connection_timeout", 10, above=0),
        connection_attempt_delay=_attemptDelay(ctx, t),
    )


def _attemptDelay(ctx: _Context, t: _Table) -> float:
    # RFC 8305 section 5: at least 10 ms, at most 2 s is recommended.
    delay = _seconds(ctx, t, "connection_attempt_delay", 0.25, atLeast=0.01)
    if delay > 2:
        ctx.fail(t.key("connection_attempt_delay"), f"got {_show(delay)}",
                 "a number of seconds from 0.01 to 2")
    return delay


def _limits(ctx: _Context, s2s: _Table) -> PeerLimits:
    names = tuple(f.name for f in fields(PeerLimits))
    t = s2s.table("limits", names)
    default = PeerLimits()
    values = {name: _integer(ctx, t, name, getattr(default, name), 1) for name in names}
    for low, high in (("verifies_per_stream", "verifies_per_address"),
                      ("verifies_per_address", "verifies_total"),
                      ("unauthenticated_per_address", "unauthenticated_total")):
        if values[low] > values[high]:
            ctx.fail(t.key(low), f"got {values[low]}, above {high} = {values[high]}",
                     f"an integer from 1 to s2s.limits.{high}")
    return PeerLimits(**values)


def _dns(ctx: _Context, s2s: _Table) -> DNSConfig:
    t = s2s.table("dns", ("timeout", "retries", "nameservers"))
    timeout = _seconds(ctx, t, "timeout", 10, above=0)
    retries = _integer(ctx, t, "retries", 2, 0, 10)
    allowed = ('a list of "IP", "IP:PORT" or "[IPv6]:PORT" strings, '
               'e.g. ["127.0.0.53", "[::1]:5353"]')
    raw = t.get("nameservers", [])
    if not isinstance(raw, list):
        ctx.fail(t.key("nameservers"), f"got {_show(raw)}", allowed)
    servers = []
    for i, s in enumerate(raw):
        parsed = parseNameserver(s)
        if parsed is None:
            ctx.fail(f"{t.key('nameservers')}[{i}]", f"got {_show(s)}", allowed)
        servers.append(parsed)
    return DNSConfig(timeout=timeout, retries=retries, nameservers=tuple(servers))


def parseNameserver(text: Any) -> tuple[str, int] | None:
    """
    Parse C{"IP"}, C{"IP:PORT"} or C{"[IPv6]:PORT"} into C{(ip, port)} with
    port 53 by default; return C{None} when C{text} is none of these.
    """
    if not isinstance(text, str) or not text:
        return None
    host, port = text, "53"
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]+)\](?::(\d{1,5}))?", text)
        if m is None:
            return None
        host, port = m.group(1), m.group(2) or "53"
        if ":" not in host:
            return None  # brackets are for IPv6 only
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not re.fullmatch(r"\d{1,5}", port) or not 1 <= int(port) <= 65535:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return str(ip), int(port)


def _admin(ctx: _Context, top: _Table) -> AdminConfig:
    t = top.table("admin", ("listen", "token", "peers"))
    peers = _peers(ctx, t)
    token = t.get("token", None)
    if token is not None:
        # Never show the value, not even part of it.
        if not isinstance(token, str):
            ctx.fail(t.key("token"), f"got {_typeName(token)}", _TOKEN_ALLOWED)
        if not re.fullmatch(r"[\x21-\x7e]+", token):
            what = "an empty string" if token == "" else "a string with spaces or other characters"
            ctx.fail(t.key("token"), f"got {what}", _TOKEN_ALLOWED)
    listen = t.get("listen", "tcp:5281:interface=127.0.0.1")
    if listen == "":
        return AdminConfig(listen=None, token=token, peers=peers)
    listen = _endpoint(ctx, t.key("listen"), listen, extra=' or "" to disable')
    if token is None and not _isLoopbackEndpoint(listen):
        ctx.fail(t.key("listen"),
                 f"{_show(listen)} is reachable from other machines and admin.token is not set",
                 "a loopback interface, or set admin.token")
    return AdminConfig(listen=listen, token=token, peers=peers)


_PEERS_ALLOWED = ('a list of admin API URLs of the other gateway processes, '
                  'such as ["http://127.0.0.1:5282"] or ["unix:/run/s2sgate/2.sock"]')


def _peers(ctx: _Context, t: _Table) -> tuple[str, ...]:
    """The other processes' admin APIs (for C{s2sgate sessions --all})."""
    v = t.get("peers", [])
    if not isinstance(v, list):
        ctx.fail(t.key("peers"), f"got {_kind(v)}", _PEERS_ALLOWED)
    seen = set()
    for i, url in enumerate(v):
        key = f"{t.key('peers')}[{i}]"
        if not isinstance(url, str):
            ctx.fail(key, f"got {_kind(url)}", _PEERS_ALLOWED)
        if url.startswith("unix:"):
            ok = len(url) > len("unix:") and "\0" not in url
        else:
            parts = urllib.parse.urlsplit(url)
            ok = (parts.scheme in ("http", "https") and bool(parts.hostname)
                  and parts.path in ("", "/") and not parts.query and not parts.fragment
                  and not any(c.isspace() for c in url))
            try:
                parts.port
            except ValueError:
                ok = False
        if not ok:
            ctx.fail(key, f"got {_show(url)}", _PEERS_ALLOWED)
        if url.rstrip("/") in seen:
            ctx.fail(key, f"{_show(url)} is listed twice", _PEERS_ALLOWED)
        seen.add(url.rstrip("/"))
    return tuple(u.rstrip("/") for u in v)


_TOKEN_ALLOWED = "a non-empty string of printable ASCII without spaces"


def _isLoopbackEndpoint(description: str) -> bool:
    """Whether the (already checked) endpoint string listens on loopback only."""
    from twisted.internet.endpoints import serverFromString

    kind = description.split(":", 1)[0]
    if kind == "unix":
        return True          # a local socket; its file mode guards it
    probe = "tcp" + description[4:] if kind == "tcp6" else description
    interface = getattr(serverFromString(_NoReactor(), probe), "_interface", "")
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface.split("%", 1)[0]).is_loopback
    except ValueError:
        return False         # "" (every interface) or a host name


def _log(ctx: _Context, top: _Table) -> LogConfig:
    t = top.table("log", ("level", "format"))
    return LogConfig(
        level=_choice(ctx, t, "level", "info", LOG_LEVELS),
        format=_choice(ctx, t, "format", "text", LOG_FORMATS),
    )


# --- value checks ----------------------------------------------------------

_MISSING = object()


class _Context:
    """What every check needs: the file name for errors, the base for paths."""

    def __init__(self, filename: str):
        self.filename = filename
        self.base = os.path.dirname(filename)

    def fail(self, key: str, problem: str, allowed: str):
        raise ConfigError(self.filename, key, problem, allowed)


class _Table:
    """A TOML table at C{path}; refuses keys outside C{keys}."""

    def __init__(self, ctx: _Context, data: Any, path: str, keys: tuple[str, ...]):
        self.ctx = ctx
        self.path = path
        self.keys = keys
        if not isinstance(data, dict):
            ctx.fail(path or "-", f"got {_kind(data)}",
                     "a table with keys " + ", ".join(keys))
        for k in data:
            if k not in keys:
                ctx.fail(self.key(k), "unknown key", ", ".join(keys))
        self.data = data

    def key(self, name: Any) -> str:
        name = name if isinstance(name, str) and re.fullmatch(
            r"[A-Za-z0-9_-]+", name) else repr(name)
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, default: Any = _MISSING, *, required: bool = False,
            allowed: str = "a value") -> Any:
        if name in self.data:
            return self.data[name]
        if required or default is _MISSING:
            self.ctx.fail(self.key(name), "missing", allowed)
        return default

    def table(self, name: str, keys: tuple[str, ...], required: bool = False) -> _Table:
        if required and name not in self.data:
            self.ctx.fail(self.key(name), "missing",
                          "a table with keys " + ", ".join(keys))
        return _Table(self.ctx, self.data.get(name, {}), self.key(name), keys)


def _isInt(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _integer(ctx: _Context, t: _Table, name: str, default: int,
             low: int, high: int | None = None) -> int:
    allowed = (f"an integer from {low} to {high}" if high is not None
               else f"an integer >= {low}")
    v = t.get(name, default, allowed=allowed)
    if not _isInt(v):
        ctx.fail(t.key(name), f"got {_kind(v)}", allowed)
    if v < low or (high is not None and v > high):
        ctx.fail(t.key(name), f"got {v}", allowed)
    return v


def _seconds(ctx: _Context, t: _Table, name: str, default: float, *,
             above: float | None = None, atLeast: float | None = None) -> float:
    allowed = (f"a number of seconds > {above}" if above is not None
               else f"a number of seconds >= {atLeast}")
    v = t.get(name, default)
    if not (_isInt(v) or isinstance(v, float)):
        ctx.fail(t.key(name), f"got {_kind(v)}", allowed)
    if (isinstance(v, float) and not math.isfinite(v)) \
            or (above is not None and not v > above) \
            or (atLeast is not None and not v >= atLeast):
        ctx.fail(t.key(name), f"got {_show(v)}", allowed)
    return v


def _bool(ctx: _Context, t: _Table, name: str, default: bool) -> bool:
    v = t.get(name, default)
    if not isinstance(v, bool):
        ctx.fail(t.key(name), f"got {_kind(v)}", "true or false")
    return v


def _choices(options: tuple[str, ...]) -> str:
    quoted = [f'"{o}"' for o in options]
    if len(quoted) == 2:
        return " or ".join(quoted)
    return ", ".join(quoted)


def _choice(ctx: _Context, t: _Table, name: str, default: str,
            options: tuple[str, ...]) -> str:
    v = t.get(name, default)
    if not isinstance(v, str) or v not in options:
        ctx.fail(t.key(name), f"got {_kind(v) if not isinstance(v, str) else _show(v)}",
                 _choices(options))
    return v


def _string(ctx: _Context, t: _Table, name: str, default: str, *,
            nonEmpty: bool = False, allowed: str = "a string") -> str:
    v = t.get(name, default)
    if not isinstance(v, str) or (nonEmpty and not v.strip()):
        ctx.fail(t.key(name), f"got {_kind(v)}", allowed)
    return v


_DOMAIN_ALLOWED = ('a domain name such as "example.com" '
                   "(IDNA, no trailing dot, no IP literal)")


def _domain(ctx: _Context, key: str, v: Any) -> str:
    if not isinstance(v, str):
        ctx.fail(key, f"got {_kind(v)}", _DOMAIN_ALLOWED)
    try:
        return normalize(v)
    except InvalidDomain:
        ctx.fail(key, f"{_show(v)} is not a valid IDNA domain", _DOMAIN_ALLOWED)


def _domainList(ctx: _Context, t: _Table, name: str,
                required: bool = False) -> tuple[str, ...]:
    allowed = "a list of domain names, each once"
    v = t.get(name, _MISSING if required else [], allowed=allowed)
    if not isinstance(v, list):
        ctx.fail(t.key(name), f"got {_kind(v)}", allowed)
    result: list[str] = []
    for i, item in enumerate(v):
        key = f"{t.key(name)}[{i}]"
        d = _domain(ctx, key, item)
        if d in result:
            j = result.index(d)
            ctx.fail(key, f"{_show(item)} repeats {t.key(name)}[{j}] "
                          f"(both are {d!r})", allowed)
        result.append(d)
    return tuple(result)


def _subset(ctx: _Context, key: str, domains: tuple[str, ...],
            local: tuple[str, ...]) -> None:
    for i, d in enumerate(domains):
        if d not in local:
            ctx.fail(f"{key}[{i}]", f"{d!r} is not in local_domains",
                     "domains from local_domains: "
                     + ", ".join(repr(x) for x in local))


def _arrayOfTables(ctx: _Context, t: _Table, name: str, allowed: str):
    v = t.get(name, [])
    if not isinstance(v, list):
        ctx.fail(t.key(name), f"got {_kind(v)}", allowed)
    return [(f"{t.key(name)}[{i}]", item) for i, item in enumerate(v)]


def _endpoint(ctx: _Context, key: str, v: Any, extra: str = "") -> str:
    from twisted.internet.endpoints import serverFromString

    allowed = ('a Twisted endpoint string of type tcp, tcp6 or unix, such as '
               '"tcp:5269" or "tcp:5269:interface=10.0.0.5"' + extra)
    if not isinstance(v, str) or not v.strip():
        ctx.fail(key, f"got {_kind(v)}", allowed)
    kind = v.split(":", 1)[0]
    if kind not in _LISTEN_TYPES:
        ctx.fail(key, f"got {_show(v)}", allowed)
    # tcp6 takes tcp's arguments; parsing it as tcp avoids a plugin scan.
    probe = "tcp" + v[4:] if kind == "tcp6" else v
    try:
        endpoint = serverFromString(_NoReactor(), probe)
    except Exception as e:
        ctx.fail(key, f"cannot parse {_show(v)} ({_oneLine(str(e))[:80]})", allowed)
    port = getattr(endpoint, "_port", 0)
    if not 0 <= port <= 65535:
        ctx.fail(key, f"port {port} in {_show(v)} is out of range", allowed)
    return v


def _endpoints(ctx: _Context, t: _Table, name: str,
               default: tuple[str, ...]) -> tuple[str, ...]:
    v = t.get(name, list(default))
    if not isinstance(v, list):
        ctx.fail(t.key(name), f"got {_kind(v)}",
                 'a list of Twisted endpoint strings, e.g. ["tcp:5269"]')
    return tuple(_endpoint(ctx, f"{t.key(name)}[{i}]", s) for i, s in enumerate(v))


class _NoReactor:
    """Stands in for the reactor while endpoint strings are only parsed."""


def _path(ctx: _Context, t: _Table, name: str) -> str | None:
    """A path key: C{None} when unset or C{""}, else resolved against the config."""
    v = t.get(name, "")
    if not isinstance(v, str) or "\0" in v:
        ctx.fail(t.key(name), f"got {_kind(v)}", "a file path")
    if v == "":
        return None
    return os.path.join(ctx.base, os.path.expanduser(v))


def _readFile(ctx: _Context, key: str, path: str, allowed: str) -> bytes:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            ctx.fail(key, f"{path!r} is not a regular file", allowed)
        with open(path, "rb") as f:
            return f.read(_MAX_FILE)
    except (OSError, ValueError) as e:
        ctx.fail(key, f"cannot read {path!r} ({_reason(e)})", allowed)


_PEM_ALLOWED = "a readable PEM file with key and chain"


def _pemFile(ctx: _Context, t: _Table, name: str, needKey: bool) -> str | None:
    path = _path(ctx, t, name)
    if path is None:
        return None
    allowed = _PEM_ALLOWED if needKey else "a readable PEM file of CA certificates"
    data = _readFile(ctx, t.key(name), path, allowed)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        ctx.fail(t.key(name), f"{path!r} holds no PEM certificate", allowed)
    if needKey and not re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", data):
        ctx.fail(t.key(name), f"{path!r} holds no PEM private key", allowed)
    return path


def _readSecret(ctx: _Context, key: str, path: str | None) -> str:
    allowed = "a readable file holding the secret on one line"
    if path is None:
        ctx.fail(key, "got ''", allowed)
    data = _readFile(ctx, key, path, allowed)
    try:
        secret = data.decode("utf-8")
    except UnicodeDecodeError:
        ctx.fail(key, f"{path!r} is not UTF-8 text", allowed)
    secret = secret.rstrip("\r\n")
    if not secret:
        ctx.fail(key, f"{path!r} is empty", allowed)
    return secret


def _ciphers(ctx: _Context, t: _Table) -> str | None:
    allowed = ('an OpenSSL cipher string such as "ECDHE+AESGCM:ECDHE+CHACHA20", '
               'or "" for the defaults')
    v = t.get("ciphers", "")
    if not isinstance(v, str):
        ctx.fail(t.key("ciphers"), f"got {_kind(v)}", allowed)
    if v == "":
        return None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(v)
    except (ssl.SSLError, ValueError):
        ctx.fail(t.key("ciphers"), f"OpenSSL selects no cipher from {_show(v)}",
                 allowed)
    return v


# --- showing values in one line ----------------------------------------------


def _typeName(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    import datetime
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return "a date/time"
    return f"a {type(v).__name__}"


def _show(v: Any) -> str:
    """A short, TOML-like rendering of a value for an error message."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list) and any(isinstance(x, (list, dict)) for x in v):
        return "an array"
    if hasattr(v, "isoformat"):  # TOML dates and times
        return v.isoformat()
    text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return text


def _kind(v: Any) -> str:
    """C{v} shown with its type, for type errors."""
    if isinstance(v, (dict, list)) and _show(v) in ("a table", "an array"):
        return _show(v)
    if isinstance(v, str):
        return f"{_show(v)} (a string)"
    return f"{_show(v)} ({_typeName(v)})"


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _oneLine(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
