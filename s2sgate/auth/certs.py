# -*- test-case-name: tests.test_certs -*-
"""
Verdicts on a peer's certificate: is the chain trusted, and does the
certificate name the peer's domain?  (RFC 6120 §13.7, RFC 6125, RFC 7712.)

The TLS handshake itself never fails on the peer's certificate (see
L{s2sgate.auth.tls}); the stream asks L{verifyPeer} afterwards and decides by
policy.  Everything here fails closed: a certificate, name or encoding that
cannot be understood is "no match" or "untrusted", never an error that could
be mistaken for success.

Identities accepted for a domain (XMPP's "any of them" rule):

 - DNS-ID (dNSName SAN): exact, case-insensitive, A-labels; a wildcard only
   as the complete left-most label of a name with at least three labels.
 - SRV-ID (SRVName otherName, RFC 4985): C{_xmpp-server.<domain>} or
   C{_xmpps-server.<domain>}.
 - XmppAddr (otherName 1.3.6.1.5.5.7.8.5): a bare domain equal to the domain.

The subject common name is never used.

Name constraints (RFC 5280 §4.2.1.10): OpenSSL applies a CA's
nameConstraints to dNSName entries only, so an XmppAddr or SRV-ID would pass
a CA constrained to another domain.  L{verifyPeer} therefore checks every
identity it accepts -- DNS-ID, SRV-ID's domain, XmppAddr's domain -- and the
domain itself against the dNSName subtrees of every CA in the verified chain;
an identity outside them is no identity.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import ssl
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, ObjectIdentifier
from OpenSSL import crypto
from service_identity import hazmat as _si

from s2sgate.xmpp.domain import normalize

__all__ = [
    "Identities",
    "PeerCertificate",
    "TrustStore",
    "identitiesOf",
    "matchesDomain",
    "NameConstraints",
    "constraintsOf",
    "verifyPeer",
    "STATUSES",
]

OID_XMPP_ADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")  # id-on-xmppAddr (RFC 6120)
OID_SRV_NAME = ObjectIdentifier("1.3.6.1.5.5.7.8.7")  # id-on-dnsSRV (RFC 4985)

SRV_SERVICES = ("xmpp-server", "xmpps-server")

STATUSES = ("valid", "none", "expired", "not-yet-valid", "self-signed",
            "untrusted", "name-mismatch", "dane-mismatch")

# OpenSSL X509_V_ERR_* codes we name; every other code is "untrusted".
_ERR_NOT_YET_VALID = 9
_ERR_EXPIRED = 10
_ERR_DEPTH_ZERO_SELF_SIGNED = 18

_MAX_NAMES_SHOWN = 8
_MAX_NAME_LEN = 80


# --- identities ---------------------------------------------------------------


@dataclass(frozen=True)
class Identities:
    """The reference identifiers a certificate presents (SAN only)."""

    dns: tuple[str, ...] = ()
    srv: tuple[str, ...] = ()  # e.g. "_xmpp-server.example.com"
    xmpp: tuple[str, ...] = ()  # XmppAddr values

    def describe(self) -> str:
        """Short one-line list: C{DNS:a.test, SRV:_xmpp-server.b.test, ...}."""
        names = ([f"DNS:{_printable(n)}" for n in self.dns]
                 + [f"SRV:{_printable(n)}" for n in self.srv]
                 + [f"XmppAddr:{_printable(n)}" for n in self.xmpp])
        if not names:
            return "no DNS, SRV or XmppAddr identity"
        shown = ", ".join(names[:_MAX_NAMES_SHOWN])
        if len(names) > _MAX_NAMES_SHOWN:
            shown += f" and {len(names) - _MAX_NAMES_SHOWN} more"
        return shown


def _printable(name: str) -> str:
    """C{name} for a one-line list: control characters and commas escaped, so
    that a name can neither break the line nor pose as two names."""
    text = "".join(map(_escaped, name))
    if len(text) > _MAX_NAME_LEN:
        text = text[:_MAX_NAME_LEN - 3] + "..."
    return text


def _escaped(c: str) -> str:
    if c == ",":
        return "\\x2c"   # repr() leaves a comma as it is
    return c if c.isprintable() else repr(c)[1:-1]


def _derLength(data: bytes, i: int) -> tuple[int, int]:
    if i >= len(data):
        raise ValueError("truncated DER length")
    first = data[i]
    i += 1
    if first < 0x80:
        return first, i
    n = first & 0x7F
    if n == 0 or n > 4:  # indefinite form is not DER; >4 bytes is absurd here
        raise ValueError("unsupported DER length")
    if i + n > len(data):
        raise ValueError("truncated DER length")
    length = int.from_bytes(data[i:i + n], "big")
    if length < 0x80 or data[i] == 0:
        raise ValueError("non-minimal DER length")
    return length, i + n


def decodeDERString(data: bytes, tag: int) -> bytes:
    """
    Return the content octets of a single primitive DER value with C{tag}
    (0x0C UTF8String, 0x16 IA5String) that fills C{data} exactly; raise
    L{ValueError} otherwise.
    """
    if len(data) < 2 or data[0] != tag:
        raise ValueError(f"expected DER tag 0x{tag:02x}")
    length, i = _derLength(data, 1)
    if i + length != len(data):
        raise ValueError("DER length does not match the value")
    return data[i:]


def _decodeOther(value: bytes, tag: int, encoding: str) -> str | None:
    try:
        text = decodeDERString(value, tag).decode(encoding)
    except (ValueError, UnicodeError):
        return None
    if not text or "\0" in text:
        return None
    return text


def _toCryptography(cert: Any) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    if isinstance(cert, crypto.X509):
        return cert.to_cryptography()
    raise TypeError(f"not a certificate: {type(cert).__name__}")


def _toOpenSSL(cert: Any) -> crypto.X509:
    if isinstance(cert, crypto.X509):
        return cert
    if isinstance(cert, x509.Certificate):
        return crypto.X509.from_cryptography(cert)
    raise TypeError(f"not a certificate: {type(cert).__name__}")


def identitiesOf(cert: Any) -> Identities:
    """
    The DNS-IDs, SRV-IDs and XmppAddrs in C{cert}'s subjectAltName.

    C{cert} is a cryptography C{x509.Certificate} or a pyOpenSSL C{X509}.
    A missing or unparsable SAN gives no identities; an otherName value that
    does not decode is skipped.  Never raises for a certificate object.
    """
    try:
        cert = _toCryptography(cert)
        san = cert.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except Exception:
        return Identities()
    dns: list[str] = []
    srv: list[str] = []
    xmpp: list[str] = []
    for name in san:
        try:
            if isinstance(name, x509.DNSName):
                if isinstance(name.value, str) and name.value:
                    dns.append(name.value)
            elif isinstance(name, x509.OtherName):
                if name.type_id == OID_XMPP_ADDR:
                    text = _decodeOther(name.value, 0x0C, "utf-8")
                    if text is not None:
                        xmpp.append(text)
                elif name.type_id == OID_SRV_NAME:
                    text = _decodeOther(name.value, 0x16, "ascii")
                    if text is not None:
                        srv.append(text)
        except Exception:
            continue
    return Identities(tuple(dns), tuple(srv), tuple(xmpp))


# --- matching -----------------------------------------------------------------


def _dnsMatches(pattern: str, domain: str) -> bool:
    if not pattern.isascii():
        return False
    labels = pattern.split(".")
    if "*" in pattern:
        # Only "*" as the whole left-most label, with >= 3 labels in total.
        if labels[0] != "*" or "*" in ".".join(labels[1:]) or len(labels) < 3:
            return False
    p = _si.DNSPattern.from_bytes(pattern.encode("ascii"))
    _si.verify_service_identity([p], [_si.DNS_ID(domain)], [])
    return True


def _srvMatches(pattern: str, domain: str) -> bool:
    if not pattern.isascii() or "*" in pattern:
        return False
    p = _si.SRVPattern.from_bytes(pattern.encode("ascii"))
    for service in SRV_SERVICES:
        try:
            _si.verify_service_identity([p], [_si.SRV_ID(f"_{service}.{domain}")], [])
            return True
        except Exception:
            continue
    return False


def _xmppMatches(value: str, domain: str) -> bool:
    if "@" in value or "/" in value:
        return False  # a full JID names a user or resource, not the server
    return normalize(value) == domain


def _anyMatch(check: Callable[[str, str], bool], names: Iterable[str],
              domain: str) -> bool:
    for name in names:
        try:
            if check(name, domain) is True:
                return True
        except Exception:
            continue
    return False


def matchesDomain(identities: Identities | None, domain: str) -> bool:
    """
    True if any DNS-ID, SRV-ID or XmppAddr in C{identities} names C{domain}.

    Never raises: anything that cannot be understood is no match.
    """
    try:
        if identities is None:
            return False
        domain = normalize(domain)  # canonical A-labels, lower case
        return (_anyMatch(_dnsMatches, identities.dns, domain)
                or _anyMatch(_srvMatches, identities.srv, domain)
                or _anyMatch(_xmppMatches, identities.xmpp, domain))
    except Exception:
        return False


# --- name constraints ---------------------------------------------------------


class UnreadableConstraints(ValueError):
    """A CA's nameConstraints that cannot be understood: nothing it issued counts."""


def _constraintName(value: str) -> str:
    """A dNSName subtree base in comparable form: lower case, no trailing dot."""
    if (not isinstance(value, str) or not value.isascii() or "*" in value
            or value == "." or value.endswith("..")):
        raise UnreadableConstraints(f"dNSName constraint {value!r} is not a DNS name")
    return value.lower().removesuffix(".")  # "." itself is refused above


def withinSubtree(name: str, base: str) -> bool:
    """
    RFC 5280 §4.2.1.10: C{name} is in the dNSName subtree C{base} when it
    is C{base} with zero or more labels added on the left (C{www.host.test}
    is in C{host.test}, C{host1.test} is not).  An empty base holds every
    name; a base with a leading dot (not in RFC 5280, but OpenSSL, NSS and Go
    accept it) holds only names below it.
    """
    if base == "":
        return True
    if base.startswith("."):
        return name.endswith(base) and len(name) > len(base)
    return name == base or name.endswith("." + base)


@dataclass(frozen=True)
class NameConstraints:
    """The dNSName subtrees of one CA, and which identity kinds it bars."""

    subject: str
    permitted: tuple[str, ...] | None  # None: no permitted dNSName subtree
    excluded: tuple[str, ...] = ()
    # otherName forms (XmppAddr, SRVName) the CA constrains with subtrees of
    # their own: we do not process those, so such identities are refused
    # (RFC 5280: process the constraint or reject the certificate).
    barred: frozenset[str] = frozenset()

    def allows(self, name: str) -> bool:
        """Whether DNS name C{name} (A-labels, any case) satisfies these subtrees."""
        name = name.lower().rstrip(".")
        if any(withinSubtree(name, base) for base in self.excluded):
            return False
        if self.permitted is None:
            return True
        return any(withinSubtree(name, base) for base in self.permitted)

    def describe(self) -> str:
        parts = []
        if self.permitted is not None:
            parts.append("permitted " + (", ".join(map(_printable, self.permitted)) or "nothing"))
        if self.excluded:
            parts.append("excluded " + ", ".join(map(_printable, self.excluded)))
        if self.barred:
            parts.append("unprocessed " + ", ".join(sorted(self.barred)) + " subtrees")
        return f"CA {_printable(self.subject)!r} ({'; '.join(parts)})"


_BARRABLE = {OID_XMPP_ADDR: "xmpp", OID_SRV_NAME: "srv"}


def constraintsOf(cert: Any) -> NameConstraints | None:
    """
    The name constraints of one CA certificate, or C{None} when it has none.
    Raises L{UnreadableConstraints} for an extension that cannot be read.
    """
    cert = _toCryptography(cert)
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.NAME_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        return None
    except Exception as e:
        raise UnreadableConstraints(f"unreadable nameConstraints ({_oneLine(e)})") from e
    try:
        subject = cert.subject.rfc4514_string()
    except Exception:
        subject = "?"
    barred = set()

    def subtrees(names: Iterable[x509.GeneralName] | None) -> tuple[str, ...] | None:
        if names is None:
            return None
        bases = []
        for n in names:
            if isinstance(n, x509.DNSName):
                bases.append(_constraintName(n.value))
            elif isinstance(n, x509.OtherName) and n.type_id in _BARRABLE:
                barred.add(_BARRABLE[n.type_id])
        return tuple(bases)

    permitted = subtrees(ext.permitted_subtrees)
    excluded = subtrees(ext.excluded_subtrees) or ()
    hasDNSPermitted = ext.permitted_subtrees is not None and any(
        isinstance(n, x509.DNSName) for n in ext.permitted_subtrees)
    return NameConstraints(subject, permitted if hasDNSPermitted else None, excluded,
                           frozenset(barred))


def _srvDomain(srv: str) -> str | None:
    for service in SRV_SERVICES:
        prefix = f"_{service}."
        if srv.lower().startswith(prefix):
            return srv[len(prefix):]
    return None


def _xmppDomain(value: str) -> str:
    return value.split("/", 1)[0].rsplit("@", 1)[-1]


def _dnsForm(name: str) -> str | None:
    """C{name} as A-labels for comparison with subtrees; None if it is no DNS name."""
    try:
        if name.startswith("*."):
            if not name.isascii():
                return None
            return "*." + normalize(name[2:])
        return normalize(name)
    except Exception:
        return None


def constrain(identities: Identities,
              constraints: Sequence[NameConstraints]) -> tuple[Identities, Identities]:
    """
    Split C{identities} into those every CA's constraints allow and those
    outside them.  A name that cannot be put in DNS form is outside.
    """
    if not constraints:
        return identities, Identities()

    def ok(kind: str, name: str | None) -> bool:
        if name is None:
            return False
        form = _dnsForm(name)
        return form is not None and all(kind not in c.barred and c.allows(form)
                                        for c in constraints)

    inside: dict[str, list[str]] = {"dns": [], "srv": [], "xmpp": []}
    outside: dict[str, list[str]] = {"dns": [], "srv": [], "xmpp": []}
    for kind, names, domainOf in (("dns", identities.dns, lambda n: n),
                                  ("srv", identities.srv, _srvDomain),
                                  ("xmpp", identities.xmpp, _xmppDomain)):
        for name in names:
            (inside if ok(kind, domainOf(name)) else outside)[kind].append(name)
    return (Identities(tuple(inside["dns"]), tuple(inside["srv"]), tuple(inside["xmpp"])),
            Identities(tuple(outside["dns"]), tuple(outside["srv"]), tuple(outside["xmpp"])))


# --- trust anchors --------------------------------------------------------------


_SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # BSD, macOS
)


def _systemBundle() -> str | None:
    env = os.environ.get("SSL_CERT_FILE")
    candidates: list[str] = [env] if env else []
    paths = ssl.get_default_verify_paths()
    candidates += [p for p in (paths.cafile, paths.openssl_cafile) if p]
    candidates += list(_SYSTEM_BUNDLES)
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


def _systemDirectory() -> str | None:
    env = os.environ.get("SSL_CERT_DIR")
    paths = ssl.get_default_verify_paths()
    for path in (env, paths.capath, paths.openssl_capath, "/etc/ssl/certs"):
        if path and os.path.isdir(path):
            return path
    return None


_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.S)


def _loadPEMCertificates(path: str) -> list[crypto.X509]:
    """Every certificate OpenSSL can read from the PEM file (others are
    skipped); L{ValueError} when there is none."""
    with open(path, "rb") as f:
        data = f.read()
    certs = []
    for block in _PEM_CERT.findall(data):
        try:
            certs.append(crypto.load_certificate(crypto.FILETYPE_PEM, block))
        except crypto.Error:
            continue
    if not certs:
        raise ValueError(f"no PEM certificate in {path!r}")
    return certs


class TrustStore:
    """
    The trust anchors for peer certificates: C{cafile}, or the system store
    when C{cafile} is C{None}.  L{store} gives a fresh C{X509Store} each
    time (a store is mutated by verification settings such as the time).

    The system store is read from the system's CA bundle, because the
    OpenSSL inside the cryptography wheel looks for its default paths under
    its own build directory, where no certificates are.
    """

    def __init__(self, cafile: str | os.PathLike[str] | None = None):
        self.cafile = os.fspath(cafile) if cafile is not None else None
        self._anchors: list[crypto.X509] | None = None
        if self.cafile is not None:
            # Raises OSError / ValueError for an unreadable or empty file.
            self._anchors = _loadPEMCertificates(self.cafile)
        else:
            self._anchors = None  # loaded on first use
        self._capath: str | None = None

    def _systemAnchors(self) -> list[crypto.X509]:
        if self._anchors is None:
            path = _systemBundle()
            anchors: list[crypto.X509] = []
            if path is not None:
                try:
                    anchors = _loadPEMCertificates(path)
                except (OSError, ValueError):
                    anchors = []
            self._anchors = anchors
            self._capath = None if anchors else _systemDirectory()
        return self._anchors

    def store(self) -> crypto.X509Store:
        store = crypto.X509Store()
        if self.cafile is None:
            anchors = self._systemAnchors()
            if self._capath is not None:
                store.load_locations(None, self._capath)  # hashed c_rehash directory
        else:
            anchors = self._anchors or []
        for cert in anchors:
            try:
                store.add_cert(cert)
            except crypto.Error:
                pass  # duplicate
        return store

    def __repr__(self) -> str:
        return f"TrustStore(cafile={self.cafile!r})"


# --- the verdict ----------------------------------------------------------------


@dataclass(frozen=True)
class PeerCertificate:
    """What we think of the certificate a peer presented."""

    status: str
    reason: str
    identities: Identities | None = None
    notAfter: _dt.datetime | None = None
    # DANE (s2sgate.auth.dane): None when not used, else "dane-ee" / "dane-ta"
    # (the match that made it valid) or "mismatch".
    dane: str | None = None

    @property
    def trusted(self) -> bool:
        """The chain leads to a trusted CA and is in date."""
        return self.status in ("valid", "name-mismatch")

    @property
    def valid(self) -> bool:
        """Trusted and names the domain it was checked against."""
        return self.status == "valid"


NO_CERTIFICATE = PeerCertificate("none", "no certificate presented")


def _day(when: _dt.datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%SZ") if when else "?"


def _storeOf(storeBuilder: Any) -> crypto.X509Store:
    if isinstance(storeBuilder, crypto.X509Store):
        return storeBuilder
    if hasattr(storeBuilder, "store"):
        return storeBuilder.store()
    return storeBuilder()


def verifyPeer(storeBuilder: Any, leaf: Any, chain: Sequence[Any] | None,
               domain: str, now: _dt.datetime | None = None,
               dane: Any = None) -> PeerCertificate:
    """
    Judge C{leaf} (with untrusted intermediates C{chain}, which may also
    hold the leaf itself) as a certificate for C{domain}.

    With C{dane} (the target's authenticated L{TLSASet}) holding a usable
    record, the DANE verdict replaces the PKIX one (L{s2sgate.auth.dane}).

    C{storeBuilder} is a L{TrustStore}, a callable returning a fresh
    C{X509Store}, or an C{X509Store}.  Extended key usage is not checked:
    a serverAuth-only certificate is fine for an inbound s2s peer.
    """
    if leaf is None:
        return NO_CERTIFICATE
    try:
        leafCrypto = _toCryptography(leaf)
        leafSSL = _toOpenSSL(leaf)
    except Exception as e:
        return PeerCertificate("untrusted", f"unreadable certificate ({_oneLine(e)})")
    identities = identitiesOf(leafCrypto)
    notAfter: _dt.datetime | None
    notBefore: _dt.datetime | None
    try:
        notAfter = leafCrypto.not_valid_after_utc
        notBefore = leafCrypto.not_valid_before_utc
    except Exception:
        notAfter = notBefore = None

    def verdict(status: str, reason: str) -> PeerCertificate:
        return PeerCertificate(status, reason, identities, notAfter)

    # The untrusted intermediates, without the leaf.
    leafDER = leafCrypto.public_bytes(serialization.Encoding.DER)
    intermediates: list[crypto.X509] = []
    for c in chain or ():
        try:
            cc = _toCryptography(c)
            if cc.public_bytes(serialization.Encoding.DER) == leafDER:
                continue
            intermediates.append(_toOpenSSL(c))
        except Exception:
            continue

    if dane is not None:
        from s2sgate.auth.dane import daneVerdict
        try:
            byDANE = daneVerdict(leafSSL, intermediates, dane, domain, now=now)
        except Exception as e:  # fail closed: a DNSSEC-signed TLSA set that cannot be checked
            byDANE = PeerCertificate("dane-mismatch", "certificate cannot be checked against "
                                     f"the TLSA records ({_oneLine(e)})", identities, notAfter,
                                     dane="mismatch")
        if byDANE is not None:
            return byDANE

    try:
        store = _storeOf(storeBuilder)
        if now is not None:
            if now.tzinfo is None:
                now = now.replace(tzinfo=_dt.timezone.utc)
            store.set_time(now.astimezone(_dt.timezone.utc).replace(tzinfo=None))
        verified = crypto.X509StoreContext(store, leafSSL,
                                           chain=intermediates).get_verified_chain()
    except crypto.X509StoreContextError as e:
        code, depth, message = _errorOf(e)
        which = f"a CA certificate (depth {depth}) in the chain"
        if code == _ERR_EXPIRED:
            if depth == 0:
                return verdict("expired", f"certificate for {domain} has expired "
                                          f"(notAfter {_day(notAfter)})")
            return verdict("expired", f"{which} for {domain} has expired")
        if code == _ERR_NOT_YET_VALID:
            if depth == 0:
                return verdict("not-yet-valid", f"certificate for {domain} is not "
                                                f"yet valid (notBefore {_day(notBefore)})")
            return verdict("not-yet-valid", f"{which} for {domain} is not yet valid")
        if code == _ERR_DEPTH_ZERO_SELF_SIGNED:
            return verdict("self-signed", "self-signed certificate")
        return verdict("untrusted", "certificate chain does not lead to a trusted "
                                    f"CA ({message})")
    except Exception as e:  # anything unexpected: not trusted
        return verdict("untrusted", f"certificate chain cannot be verified ({_oneLine(e)})")

    # Every CA above the leaf, the trust anchor included, as OpenSSL does.
    try:
        constraints = [c for c in (constraintsOf(ca) for ca in verified[1:]) if c is not None]
    except Exception as e:
        return verdict("untrusted", f"a CA in the chain has name constraints that cannot "
                                    f"be read ({_oneLine(e)})")
    presented = identities
    identities, outside = constrain(presented, constraints)
    domainForm = _dnsForm(domain)
    domainAllowed = domainForm is not None and all(c.allows(domainForm) for c in constraints)
    if not (domainAllowed and matchesDomain(identities, domain)):
        reason = f"certificate is not valid for {domain}: it names {presented.describe()}"
        if constraints and (not domainAllowed or matchesDomain(outside, domain)):
            reason += ("; outside the name constraints of "
                       + ", ".join(c.describe() for c in constraints))
        return verdict("name-mismatch", reason)
    return verdict("valid", f"certificate is valid for {domain}")


def _errorOf(e: crypto.X509StoreContextError) -> tuple[int, int, str]:
    errors = getattr(e, "errors", None) or []
    try:
        code, depth, message = int(errors[0]), int(errors[1]), str(errors[2])
    except Exception:
        code, depth, message = -1, 0, str(e)
    return code, depth, _oneLine(message)


def _oneLine(text: Any) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))[:200]
