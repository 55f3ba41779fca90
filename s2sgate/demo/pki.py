# -*- test-case-name: tests.test_demo -*-
"""
A throw-away certificate authority for the demo.

L{DemoCA} makes a CA key and certificate in a directory, then issues leaf
certificates for XMPP domains with the identities s2s peers check
(RFC 6120 §13.7.1.2, RFC 7712): a DNS-ID (dNSName) and an SRV-ID
(SRVName otherName C{_xmpp-server.<domain>}, RFC 4985).  Each leaf is
written as one PEM file holding the certificate, the CA certificate and the
private key, the layout C{s2s.certfile} expects.  Keys are ECDSA P-256:
quick to make, so the demo starts in a fraction of a second.

Nothing here is meant for production certificates.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

__all__ = ["DemoCA", "Issued", "OID_SRV_NAME"]

OID_SRV_NAME = ObjectIdentifier("1.3.6.1.5.5.7.8.7")  # id-on-dnsSRV (RFC 4985)

# Long enough that --keep-running's status pages and `s2sgate check` show no
# expiry warning (they warn under 14 days); the key is deleted when the demo ends.
_VALIDITY = _dt.timedelta(days=30)
_BACKDATE = _dt.timedelta(minutes=5)   # tolerate clocks a little behind


def _derIA5(text: str) -> bytes:
    """DER of an IA5String: what an SRVName otherName holds."""
    data = text.encode("ascii")
    n = len(data)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return b"\x16" + length + data


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pemKey(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _private(path: Path, data: bytes) -> None:
    """Write C{data} to a new file only its owner can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True)
class Issued:
    """A leaf certificate: C{certfile} holds leaf + CA + key; C{cert} and C{key} too."""

    certfile: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


class DemoCA:
    """
    A CA living in C{directory}: C{cafile} is its certificate (the trust
    anchor to give C{s2s.cafile}); L{issue} makes leaves.
    """

    def __init__(self, directory: str | os.PathLike[str], name: str = "s2sgate demo CA"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = _dt.datetime.now(_dt.timezone.utc)
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))
        self.cafile = self.directory / "ca.pem"
        self.cafile.write_bytes(_pem(self.cert))

    def issue(self, domain: str, dns: Iterable[str] | None = None,
              srv: Iterable[str] | None = None) -> Issued:
        """
        Issue a certificate for the XMPP domain C{domain}.

        @param dns: the DNS-IDs; default C{[domain]}.
        @param srv: the domains to name with an SRV-ID C{_xmpp-server.<d>};
            default C{[domain]}.
        """
        dns = [domain] if dns is None else list(dns)
        srv = [domain] if srv is None else list(srv)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _dt.datetime.now(_dt.timezone.utc)
        names = [x509.DNSName(d) for d in dns]
        names += [x509.OtherName(OID_SRV_NAME, _derIA5(f"_xmpp-server.{d}")) for d in srv]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            # s2s peers are TLS servers and clients (SASL EXTERNAL).
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        certfile = self.directory / f"{domain.replace('*', '_')}.pem"
        _private(certfile, _pem(cert) + _pem(self.cert) + _pemKey(key))
        return Issued(certfile, cert, key)
