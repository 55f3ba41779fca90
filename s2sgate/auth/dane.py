# -*- test-case-name: tests.test_dane -*-
"""
The DANE verdict on a peer's certificate (RFC 6698, RFC 7671, RFC 7673).

Used only with TLSA records from a DNSSEC-authenticated answer for a target
found through an authenticated SRV answer (L{S2SResolver.tlsa}). Usable
records are DANE-EE (3) and DANE-TA (2), selector full certificate (0) or
SubjectPublicKeyInfo (1), matching type exact (0), SHA-256 (1) or SHA-512
(2); PKIX-TA/PKIX-EE (0, 1) are treated as unusable, as Postfix does for
SMTP (RFC 7672 section 3.1.3). No usable record means no DANE: the PKIX
verdict stands.

 - DANE-EE: the leaf matches; names and dates are not checked (RFC 7671
   section 5.1): the DNSSEC-signed record is the authentication.
 - DANE-TA: a certificate the peer sent above the leaf matches; the leaf
   must chain to it (in date) and name the domain or the SRV target
   (RFC 7673 section 4).

A usable set that nothing matches is C{dane-mismatch}: the peer is refused,
whatever its chain says.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto

from s2sgate.auth.certs import PeerCertificate, identitiesOf, matchesDomain
from s2sgate.net.resolver import TLSARecord, TLSASet

__all__ = ["daneVerdict", "usable", "associationData"]

DANE_TA, DANE_EE = 2, 3


def usable(records: Sequence[TLSARecord]) -> list[TLSARecord]:
    """The records this module can use (DANE-TA/EE, selectors 0/1, matching 0/1/2)."""
    return [r for r in records
            if r.usage in (DANE_TA, DANE_EE) and r.selector in (0, 1) and r.mtype in (0, 1, 2)]


def associationData(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    """What a TLSA record with C{selector} and C{mtype} holds for C{cert}."""
    if selector == 0:
        data = cert.public_bytes(serialization.Encoding.DER)
    else:
        data = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def _matches(record: TLSARecord, cert: x509.Certificate) -> bool:
    try:
        return hmac.compare_digest(associationData(cert, record.selector, record.mtype),
                                   record.data)
    except Exception:
        return False


def daneVerdict(leaf: crypto.X509, chain: Sequence[crypto.X509], tlsa: TLSASet, domain: str,
                now: _dt.datetime | None = None) -> PeerCertificate | None:
    """
    The verdict on C{leaf} (and the certificates C{chain} the peer sent
    above it) by C{tlsa}, or None when the set has no usable record.
    """
    records = usable(tlsa.records)
    if not records:
        return None
    leafCrypto = leaf.to_cryptography()
    identities = identitiesOf(leafCrypto)
    notAfter: Any
    try:
        notAfter = leafCrypto.not_valid_after_utc
    except Exception:
        notAfter = None

    for r in records:
        if r.usage == DANE_EE and _matches(r, leafCrypto):
            return PeerCertificate("valid", f"certificate matches DANE-EE TLSA {r} at "
                                            f"{tlsa.name} (DNSSEC)", identities, notAfter,
                                   dane="dane-ee")
    reasons = []
    for i, anchor in enumerate(chain):
        anchorCrypto = anchor.to_cryptography()
        record = next((r for r in records
                       if r.usage == DANE_TA and _matches(r, anchorCrypto)), None)
        if record is None:
            continue
        problem = _chainsTo(leaf, anchor, [c for j, c in enumerate(chain) if j != i], now)
        if problem is not None:
            reasons.append(f"does not chain to the DANE-TA {record} ({problem})")
            continue
        if matchesDomain(identities, domain) or matchesDomain(identities, tlsa.host):
            return PeerCertificate("valid", f"certificate chains to DANE-TA TLSA {record} at "
                                            f"{tlsa.name} (DNSSEC)", identities, notAfter,
                                   dane="dane-ta")
        reasons.append(f"chains to the DANE-TA {record} but names "
                       f"{identities.describe()}, not {domain} or {tlsa.host}")
    why = "; ".join(reasons) or "matches none of them"
    return PeerCertificate("dane-mismatch", f"certificate does not match the DNSSEC-"
                                            f"authenticated TLSA records of {tlsa.name}: {why}",
                           identities, notAfter, dane="mismatch")


def _chainsTo(leaf, anchor, intermediates, now) -> str | None:
    """None when C{leaf} verifies up to C{anchor} (taken as the only trust anchor)."""
    store = crypto.X509Store()
    store.add_cert(anchor)
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    if now is not None:
        if now.tzinfo is None:
            now = now.replace(tzinfo=_dt.timezone.utc)
        store.set_time(now.astimezone(_dt.timezone.utc).replace(tzinfo=None))
    try:
        crypto.X509StoreContext(store, leaf, chain=list(intermediates)).verify_certificate()
    except crypto.X509StoreContextError as e:
        return str(e)[:120]
    except Exception as e:
        return f"cannot verify ({type(e).__name__})"
    return None
