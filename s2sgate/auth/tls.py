# -*- test-case-name: tests.test_tls -*-
"""
TLS contexts for s2s streams, one certificate per local domain.

Every context requests the peer's certificate but never fails the handshake
because of it: the verify callback always says yes.  The stream judges the
certificate afterwards with L{TLSContexts.peerVerdict} / L{verify}
(L{s2sgate.auth.certs.verifyPeer}), by policy.  This is deliberate: Twisted's
C{optionsForClientTLS} identity check fails open for certificates without
DNS/SRV subjectAltNames (see DESIGN.md), so it is not used at all.

 - STARTTLS inbound: L{TLSContexts.serverCreator} with the stream's C{to}.
 - Outbound (STARTTLS or direct TLS): L{TLSContexts.clientCreator}; SNI is the
   remote domain, our certificate for the local domain is presented (SASL
   EXTERNAL), ALPN C{xmpp-server} for direct TLS.
 - Direct TLS inbound (XEP-0368): L{TLSContexts.directTLSServerCreator}
   chooses the certificate by SNI and selects ALPN C{xmpp-server}.

All contexts: TLS 1.2 or later, the configured cipher list (TLS 1.3 suites
are not affected by it), no compression, no renegotiation, no session
resumption (each stream is judged on a fresh certificate exchange).
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from typing import Any, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from zope.interface import implementer

from s2sgate.auth.certs import (
    NO_CERTIFICATE,
    Identities,
    PeerCertificate,
    TrustStore,
    identitiesOf,
    matchesDomain,
    verifyPeer,
)
from s2sgate.xmpp.domain import InvalidDomain, normalize

__all__ = [
    "ALPN_XMPP_SERVER",
    "TLSSetupError",
    "TLSContexts",
    "LocalCertificate",
    "peerVerdict",
    "peerCertificates",
    "describe",
]

ALPN_XMPP_SERVER = b"xmpp-server"

_MAX_PEM = 1 << 20
_KEY_RE = re.compile(
    rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.+?-----END \1-----", re.S)


class TLSSetupError(Exception):
    """A certificate or key cannot be used; C{str()} is one line."""

    def __init__(self, key: str, message: str):
        super().__init__(key, message)
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


@dataclass(frozen=True)
class LocalCertificate:
    """One of our certificates, loaded and checked."""

    path: str
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: Any  # a cryptography private key
    identities: Identities

    @classmethod
    def load(cls, path: str, configKey: str) -> "LocalCertificate":
        def fail(message: str) -> TLSSetupError:
            return TLSSetupError(configKey, f"{path!r}: {message}")

        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_PEM + 1)
        except OSError as e:
            raise fail(f"cannot read ({e.strerror or e})") from None
        if len(data) > _MAX_PEM:
            raise fail("file is larger than 1 MiB")
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as e:
            raise fail(f"holds no valid PEM certificate ({_first(e)})") from None
        keys = [m.group(0) for m in _KEY_RE.finditer(data)]
        if not keys:
            raise fail("holds no PEM private key (put the key in the same file "
                       "as the certificate and its chain)")
        if len(keys) > 1:
            raise fail("holds more than one private key")
        try:
            key = serialization.load_pem_private_key(keys[0], password=None)
        except TypeError:
            raise fail("the private key is encrypted; a key without a "
                       "passphrase is needed") from None
        except (ValueError, Exception) as e:
            raise fail(f"the private key is invalid ({_first(e)})") from None
        leaf = certs[0]
        try:
            pub = key.public_key().public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo)
            certPub = leaf.public_key().public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo)
        except Exception as e:
            raise fail(f"unusable key or certificate ({_first(e)})") from None
        if pub != certPub:
            raise fail("the private key does not belong to the first certificate "
                       "(the server certificate must come first, then its chain)")
        return cls(path, leaf, tuple(certs[1:]), key, identitiesOf(leaf))

    def install(self, ctx: SSL.Context, configKey: str) -> None:
        try:
            ctx.use_certificate(self.leaf)
            for c in self.chain:
                ctx.add_extra_chain_cert(c)
            ctx.use_privatekey(self.key)
            ctx.check_privatekey()
        except (SSL.Error, crypto.Error, TypeError, ValueError) as e:
            raise TLSSetupError(configKey, f"{self.path!r}: OpenSSL refuses the "
                                           f"certificate or key ({_first(e)})") from None


def _first(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    text = text.splitlines()[0] if text.splitlines() else text
    return "".join(c if c.isprintable() else "?" for c in text)[:160]


def _acceptAnyCertificate(conn, cert, errno, depth, ok) -> bool:
    # The certificate is requested, never judged here: see verifyPeer().
    return True


def _selectXmppServer(conn: SSL.Connection, offered: list[bytes]) -> Any:
    if ALPN_XMPP_SERVER in offered:
        return ALPN_XMPP_SERVER
    # No overlap: continue without ALPN (XEP-0368 peers may not send it).
    return SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    def __init__(self, ctx: SSL.Context):
        self.context = ctx

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        conn = SSL.Connection(self.context, None)
        conn.set_accept_state()
        return conn


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    def __init__(self, ctx: SSL.Context, serverName: str, alpn: bool):
        self.context = ctx
        self.serverName = serverName
        self.alpn = alpn

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        conn = SSL.Connection(self.context, None)
        conn.set_connect_state()
        conn.set_tlsext_host_name(self.serverName.encode("ascii"))
        if self.alpn:
            conn.set_alpn_protos([ALPN_XMPP_SERVER])
        return conn


class TLSContexts:
    """
    The TLS side of the gateway for its local domains.

    C{s2sConfig} is an L{s2sgate.config.S2SConfig} (C{certfile},
    C{domain_certfile}, C{cafile}, C{ciphers}).  Certificates are loaded and
    checked here; a problem raises L{TLSSetupError}.
    """

    def __init__(self, s2sConfig, localDomains: Iterable[str],
                 trust: TrustStore | None = None):
        self.localDomains = tuple(normalize(d) for d in localDomains)
        self.ciphers = s2sConfig.ciphers
        if trust is None:
            cafile = s2sConfig.cafile
            try:
                trust = TrustStore(cafile)
            except (OSError, ValueError) as e:
                raise TLSSetupError("s2s.cafile", f"{cafile!r}: cannot load CA "
                                                  f"certificates ({_first(e)})") from None
        self.trust = trust

        self._default: LocalCertificate | None = None
        self._perDomain: dict[str, LocalCertificate] = {}
        # One set of contexts per certificate (keyed by id of LocalCertificate)
        self._server: dict[int, SSL.Context] = {}
        self._direct: dict[int, SSL.Context] = {}
        self._client: dict[int, SSL.Context] = {}

        certfile = s2sConfig.certfile
        if certfile:
            self._default = self._load(os.fspath(certfile), "s2s.certfile")
        for i, entry in enumerate(s2sConfig.domain_certfile):
            key = f"s2s.domain_certfile[{i}].certfile"
            try:
                domain = normalize(entry.domain)
            except InvalidDomain:
                raise TLSSetupError(f"s2s.domain_certfile[{i}].domain",
                                    f"{entry.domain!r} is not a valid domain") from None
            self._perDomain[domain] = self._load(os.fspath(entry.certfile), key)
        self._noCertClient = self._makeContext(None, "s2s.certfile", server=False)

    def _load(self, path: str, configKey: str) -> LocalCertificate:
        cert = LocalCertificate.load(path, configKey)
        self._server[id(cert)] = self._makeContext(cert, configKey, server=True)
        self._direct[id(cert)] = self._makeContext(cert, configKey, server=True,
                                                   direct=True)
        self._client[id(cert)] = self._makeContext(cert, configKey, server=False)
        return cert

    def _makeContext(self, cert: LocalCertificate | None, configKey: str, *,
                     server: bool, direct: bool = False) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
                        | SSL.OP_NO_TICKET | SSL.OP_CIPHER_SERVER_PREFERENCE)
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        if self.ciphers:
            try:
                ctx.set_cipher_list(self.ciphers.encode("ascii"))
            except (SSL.Error, UnicodeError) as e:
                raise TLSSetupError("s2s.ciphers", f"OpenSSL selects no cipher from "
                                                   f"{self.ciphers!r} ({_first(e)})") from None
        # Request the peer's certificate, never fail the handshake on it.
        ctx.set_verify(SSL.VERIFY_PEER, _acceptAnyCertificate)
        if server:
            # No resumption: each stream gets a full handshake and a fresh
            # look at the peer's certificate.  The session id context is set
            # anyway, as OpenSSL requires with VERIFY_PEER.
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            ctx.set_session_id(secrets.token_bytes(16))
        if cert is not None:
            cert.install(ctx, configKey)
        if direct:
            ctx.set_alpn_select_callback(_selectXmppServer)
            ctx.set_tlsext_servername_callback(self._pickBySNI)
        return ctx

    # --- which certificate -----------------------------------------------------

    def _certFor(self, domain: str) -> LocalCertificate | None:
        try:
            domain = normalize(domain)
        except InvalidDomain:
            return self._default
        return self._perDomain.get(domain, self._default)

    def certificateFor(self, domain: str) -> LocalCertificate | None:
        """The certificate we present for local C{domain}, or C{None}."""
        return self._certFor(domain)

    def hasCertificateFor(self, domain: str) -> bool:
        """Whether we can offer TLS for C{domain} (a domain_certfile or certfile)."""
        return self._certFor(domain) is not None

    def ourCertificateCovers(self, domain: str) -> bool:
        """Whether the certificate presented for C{domain} names it."""
        cert = self._certFor(domain)
        return cert is not None and matchesDomain(cert.identities, domain)

    # --- connection creators ---------------------------------------------------

    def serverCreator(self, domain: str) -> _ServerCreator:
        """For inbound STARTTLS: the certificate for the stream's C{to} domain."""
        cert = self._certFor(domain)
        if cert is None:
            raise TLSSetupError("s2s.certfile", f"no certificate for {domain!r}")
        return _ServerCreator(self._server[id(cert)])

    def directTLSServerCreator(self) -> _ServerCreator:
        """For inbound direct TLS: certificate by SNI (default: C{certfile})."""
        cert = self._default
        if cert is None:
            if not self._perDomain:
                raise TLSSetupError("s2s.certfile", "no certificate configured "
                                                    "for direct TLS")
            cert = next(iter(self._perDomain.values()))
        return _ServerCreator(self._direct[id(cert)])

    def clientCreator(self, remote: str, local: str, alpn: bool = False) -> _ClientCreator:
        """
        For outbound streams from C{local} to C{remote}: SNI C{remote}, our
        certificate for C{local} (if any) for SASL EXTERNAL, ALPN
        C{xmpp-server} when C{alpn} (direct TLS).
        """
        remote = normalize(remote)
        cert = self._certFor(local)
        ctx = self._client[id(cert)] if cert is not None else self._noCertClient
        return _ClientCreator(ctx, remote, alpn)

    def _pickBySNI(self, conn: SSL.Connection) -> None:
        name = conn.get_servername()
        if not name:
            return
        try:
            domain = normalize(name.decode("ascii"))
        except (UnicodeError, InvalidDomain):
            return
        cert = self._perDomain.get(domain)
        if cert is not None:
            conn.set_context(self._direct[id(cert)])

    # --- peers -------------------------------------------------------------------

    def verify(self, leaf, chain, domain: str, now=None) -> PeerCertificate:
        """Judge a peer certificate for C{domain} against our trust anchors."""
        return verifyPeer(self.trust, leaf, chain, domain, now=now)

    def peerVerdict(self, conn: SSL.Connection, domain: str, now=None,
                    dane=None) -> PeerCertificate:
        """Judge the certificate the peer presented on C{conn} for C{domain} (and C{dane})."""
        return peerVerdict(conn, domain, self.trust, now=now, dane=dane)

    def describe(self, conn: SSL.Connection) -> dict:
        """See the module-level L{describe}."""
        return describe(conn)


def peerCertificates(conn: SSL.Connection) -> tuple[crypto.X509 | None, list[crypto.X509]]:
    """
    The peer's leaf and the other certificates it sent.  OpenSSL's
    C{get_peer_cert_chain} includes the leaf on the client side and not on
    the server side; the leaf is removed here either way.
    """
    leaf = conn.get_peer_certificate()
    if leaf is None:
        return None, []
    chain = conn.get_peer_cert_chain() or []
    leafDER = crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf)
    rest = [c for c in chain
            if crypto.dump_certificate(crypto.FILETYPE_ASN1, c) != leafDER]
    return leaf, rest


def peerVerdict(conn: SSL.Connection, domain: str, trust: TrustStore,
                now=None, dane=None) -> PeerCertificate:
    """
    Judge the peer's certificate on a completed handshake for C{domain};
    C{dane} is the target's authenticated L{TLSASet} or None.
    """
    try:
        leaf, chain = peerCertificates(conn)
    except Exception as e:
        return PeerCertificate("untrusted", f"cannot read the peer certificate ({_first(e)})")
    if leaf is None:
        return NO_CERTIFICATE
    return verifyPeer(trust, leaf, chain, domain, now=now, dane=dane)


def describe(conn: SSL.Connection) -> dict:
    """Protocol version and cipher of a connection, e.g. for logs and status."""
    alpn = None
    try:
        alpn = conn.get_alpn_proto_negotiated() or None
    except Exception:
        pass
    return {
        "version": conn.get_protocol_version_name(),
        "cipher": conn.get_cipher_name(),
        "alpn": alpn.decode("ascii", "replace") if alpn else None,
    }
