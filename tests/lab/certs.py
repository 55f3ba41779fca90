"""A small test CA built with ``cryptography``."""
from __future__ import annotations

import datetime as _dt
import itertools
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

OID_SRV_NAME = ObjectIdentifier("1.3.6.1.5.5.7.8.7")   # id-on-dnsSRV (RFC 4985)
OID_XMPP_ADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")  # id-on-xmppAddr (RFC 6120)

_EKU = {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
        "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH}


def _der_string(tag: int, data: bytes) -> bytes:
    n = len(data)
    if n < 0x80:
        length = bytes([n])
    else:
        b = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(b)]) + b
    return bytes([tag]) + length + data


def _ia5(s: str) -> bytes:
    return _der_string(0x16, s.encode("ascii"))


def _utf8(s: str) -> bytes:
    return _der_string(0x0C, s.encode("utf-8"))


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class _CA:
    """A root (``parent=None``) or an intermediate signed by ``parent``, optionally with
    nameConstraints (``permitted`` / ``excluded`` dNSName subtrees)."""

    def __init__(self, cn: str, parent: "_CA | None" = None, permitted=None, excluded=None,
                 constraints=None):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.parent = parent
        now = _dt.datetime.now(_dt.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        self.name = name
        issuerName, issuerKey = (parent.name, parent.key) if parent else (name, self.key)
        b = (x509.CertificateBuilder()
             .subject_name(name).issuer_name(issuerName)
             .public_key(self.key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - _dt.timedelta(days=1))
             .not_valid_after(now + _dt.timedelta(days=3650))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                          False), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                            critical=False))
        if parent is not None:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                parent.key.public_key()), critical=False)
        if constraints is None and (permitted is not None or excluded is not None):
            constraints = x509.NameConstraints(
                [x509.DNSName(d) for d in permitted] if permitted is not None else None,
                [x509.DNSName(d) for d in excluded] if excluded is not None else None)
        if constraints is not None:
            b = b.add_extension(constraints, critical=True)
        self.cert = b.sign(issuerKey, hashes.SHA256())

    def chain(self) -> list:
        """This CA's certificate and those above it, up to the root."""
        certs, ca = [], self
        while ca is not None:
            certs.append(ca.cert)
            ca = ca.parent
        return certs


class TestCA:
    """``TestCA(workdir)``: ``.cafile`` (trusted CA PEM); ``.issue(...)`` leaves."""

    __test__ = False

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._ca = _CA("s2sgate test CA")
        self._rogue = None  # untrusted CA, made on demand
        self.cafile = self.workdir / "ca.pem"
        self.cafile.write_bytes(_pem_cert(self._ca.cert))
        self.cafile.chmod(0o644)
        self._seq = itertools.count()

    @property
    def untrusted_cafile(self) -> Path:
        """PEM of the second, untrusted CA (made on first use): trust it explicitly to
        test "right chain, wrong anchor" cases."""
        path = self.workdir / "untrusted-ca.pem"
        if not path.exists():
            path.write_bytes(_pem_cert(self._untrusted_ca().cert))
            path.chmod(0o644)
        return path

    def _untrusted_ca(self):
        if self._rogue is None:
            self._rogue = _CA("untrusted test CA")
        return self._rogue

    def intermediate(self, cn="s2sgate test intermediate", *, permitted=None, excluded=None,
                     constraints=None, parent=None):
        """An intermediate CA under the trusted root (or under ``parent``, another
        intermediate), with a critical nameConstraints extension when ``permitted`` /
        ``excluded`` (dNSName subtrees) or ``constraints`` (an ``x509.NameConstraints``) is
        given. Pass it to :meth:`issue` as ``issuer``."""
        return _CA(cn, parent=parent or self._ca, permitted=permitted, excluded=excluded,
                   constraints=constraints)

    def issue(self, name, *, dns=(), srv=(), xmpp=(), expired=False,
              eku=("serverAuth", "clientAuth"), untrusted=False, self_signed=False,
              srv_service="_xmpp-server", cn=None, days=365, issuer=None):
        """Issue a leaf for CN ``name`` (``cn``: other CN; ``cn=""``: empty subject).

        ``dns``: dNSName SANs (``"*.example.test"`` gives a wildcard DNS-ID);
        ``srv``: domains for SRV-ID ``<srv_service>.<domain>`` (otherName
        1.3.6.1.5.5.7.8.7, IA5String; ``srv_service="_xmpps-server"`` for RFC 9525 style);
        ``xmpp``: XmppAddr values (otherName 1.3.6.1.5.5.7.8.5, UTF8String);
        ``eku``: names from ("serverAuth", "clientAuth"), ``()`` for no EKU extension;
        ``expired``: valid from -30 days to -1 day; ``untrusted``: signed by a second
        CA that is not in :attr:`cafile`; ``self_signed``: the leaf signs itself (no chain);
        ``issuer``: an :meth:`intermediate` that signs the leaf (the chain in the PEM is
        leaf, intermediates, root).

        Returns ``(certfile, keyfile)``; certfile holds leaf + CA chain + key in one PEM,
        keyfile the key alone. Files are mode 0644 (servers running as other users read
        them); the directory may still be private (pytest's basetemp is 0700): copy them
        for ejabberd (tests/lab/ejabberd.py does).

        Note: ejabberd 23.01 crashes on an outgoing s2s connection whose *peer* presents
        an XmppAddr; certificates meant to be seen by ejabberd must carry DNS/SRV-IDs only.
        """
        if untrusted and self_signed:
            raise ValueError("untrusted and self_signed exclude each other")
        ca = issuer or (self._untrusted_ca() if untrusted else self._ca)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _dt.datetime.now(_dt.timezone.utc)
        if expired:
            nb, na = now - _dt.timedelta(days=30), now - _dt.timedelta(days=1)
        else:
            nb, na = now - _dt.timedelta(days=1), now + _dt.timedelta(days=days)
        sans = [x509.DNSName(d) for d in dns]
        sans += [x509.OtherName(OID_SRV_NAME, _ia5(f"{srv_service}.{d}")) for d in srv]
        sans += [x509.OtherName(OID_XMPP_ADDR, _utf8(a)) for a in xmpp]
        cn = name if cn is None else cn
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        if self_signed:
            issuer_name, issuer_key = subject, key
        else:
            issuer_name, issuer_key = ca.name, ca.key
        b = (x509.CertificateBuilder()
             .subject_name(subject)
             .issuer_name(issuer_name)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(nb).not_valid_after(na)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 issuer_key.public_key()), critical=False))
        if sans:
            # RFC 5280: an empty subject needs a critical subjectAltName
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=not cn)
        if eku:
            b = b.add_extension(x509.ExtendedKeyUsage([_EKU[e] for e in eku]), critical=False)
        cert = b.sign(issuer_key, hashes.SHA256())
        stem = f"{name.replace('*', '_')}-{next(self._seq)}"
        certfile = self.workdir / f"{stem}.pem"
        keyfile = self.workdir / f"{stem}.key"
        keyfile.write_bytes(_pem_key(key))
        chain = b"" if self_signed else b"".join(_pem_cert(c) for c in ca.chain())
        certfile.write_bytes(_pem_cert(cert) + chain + _pem_key(key))
        for f in (certfile, keyfile):
            f.chmod(0o644)  # servers running as other users (ejabberd, prosody) must read them
        return certfile, keyfile
