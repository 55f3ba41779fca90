"""TLS contexts (s2sgate.auth.tls) with real handshakes over loopback sockets."""
from __future__ import annotations

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from s2sgate.auth.certs import TrustStore
from s2sgate.auth.tls import TLSContexts, TLSSetupError, describe, peerCertificates
from s2sgate.config import DomainCert, S2SConfig, parse_config
from tests.lab.certs import TestCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def certs(ca):
    """Certificates by label; each names the domain(s) shown."""
    return {
        "dns": ca.issue("dns.test", dns=["dns.test"])[0],              # DNS-ID only
        "srv": ca.issue("srv.test", srv=["srv.test"])[0],              # SRV-ID only
        "xmpp": ca.issue("xmpp.test", xmpp=["xmpp.test"])[0],          # XmppAddr only
        "wild": ca.issue("wild", dns=["*.wild.test"])[0],              # for a.wild.test
        "server": ca.issue("sa.test", dns=["sa.test"], eku=("serverAuth",))[0],
        "main": ca.issue("main.test", dns=["main.test"])[0],
        "rogue": ca.issue("rogue.test", dns=["rogue.test"], untrusted=True)[0],
        "other": ca.issue("other.test", dns=["other.test"])[0],
    }


DOMAIN = {"dns": "dns.test", "srv": "srv.test", "xmpp": "xmpp.test",
          "wild": "a.wild.test", "server": "sa.test", "main": "main.test",
          "rogue": "rogue.test", "other": "other.test"}


def gateway(ca, certs, default="main", perDomain=(), **kw):
    """TLSContexts for a gateway: certfile = certs[default], domain_certfile per label."""
    entries = tuple(DomainCert(DOMAIN[label], str(certs[label])) for label in perDomain)
    config = S2SConfig(certfile=str(certs[default]) if default else None,
                       domain_certfile=entries, cafile=str(ca.cafile), **kw)
    local = [DOMAIN[default]] if default else []
    local += [DOMAIN[label] for label in perDomain]
    return TLSContexts(config, local)


# --- a tiny STARTTLS / direct TLS harness -------------------------------------------


@implementer(IHandshakeListener)
class _Side(protocol.Protocol):
    """One end: optionally asks for STARTTLS, then reports the SSL connection."""

    def __init__(self, onLine=None, greeting=None):
        self.onLine = onLine
        self.greeting = greeting
        self.done = defer.Deferred()
        self.lost = defer.Deferred()
        self.buffer = b""
        self.tls = False

    def connectionMade(self):
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data):
        if self.tls:
            return
        self.buffer += data
        if b"\n" in self.buffer and self.onLine:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.tls = True
            self.onLine(self, line.decode())

    def handshakeCompleted(self):
        if not self.done.called:
            self.done.callback(self.transport.getHandle())

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.errback(reason)
        self.lost.callback(None)


async def _run(serverFactory, clientFactory):
    server = _SideFactory(serverFactory)
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    clientSide = clientFactory()
    try:
        endpoint_proto = protocol.ClientCreator(reactor, lambda: clientSide)
        await endpoint_proto.connectTCP("127.0.0.1", port.getHost().port)
        timeout = reactor.callLater(10, lambda: clientSide.transport.abortConnection())
        try:
            clientConn = await clientSide.done
            serverConn = await server.side.done
        finally:
            if timeout.active():
                timeout.cancel()
        return serverConn, clientConn
    finally:
        if clientSide.transport is not None:
            clientSide.transport.loseConnection()
            await clientSide.lost
        if server.side is not None:
            if not server.side.lost.called:
                server.side.transport.loseConnection()
            await server.side.lost
        await port.stopListening()


class _SideFactory(protocol.Factory):
    def __init__(self, make):
        self.make = make
        self.side = None

    def buildProtocol(self, addr):
        self.side = self.make()
        return self.side


async def starttls(serverGW, clientGW, remote, local, pickedBy=None):
    """
    Client (gateway C{clientGW}, domain C{local}) opens a stream to C{remote} at
    C{serverGW}: "STARTTLS <to>" / "PROCEED", then both sides call startTLS.
    Returns (serverConn, clientConn), both completed SSL.Connections.
    """
    def serverLine(side, line):
        _, to = line.split()
        side.transport.write(b"PROCEED\n")
        side.transport.startTLS(serverGW.serverCreator(to))

    def clientLine(side, line):
        assert line == "PROCEED"
        side.transport.startTLS(clientGW.clientCreator(remote, local))

    return await _run(lambda: _Side(serverLine),
                      lambda: _Side(clientLine, f"STARTTLS {remote}\n".encode()))


async def directtls(serverGW, clientGW, remote, local, alpn=True):
    # Build wrapped protocols by hand so that the inner _Side stays reachable.
    serverInner = []
    clientInner = _Side()

    class ServerTLS(protocol.Factory):
        def buildProtocol(self, addr):
            inner = _SideFactory(_Side)
            f = TLSMemoryBIOFactory(serverGW.directTLSServerCreator(), False, inner)
            p = f.buildProtocol(addr)
            serverInner.append(inner)
            return p

    clientTLS = TLSMemoryBIOFactory(clientGW.clientCreator(remote, local, alpn=alpn), True,
                                    _SideFactory(lambda: clientInner))
    port = reactor.listenTCP(0, ServerTLS(), interface="127.0.0.1")
    try:
        cc = protocol.ClientCreator(reactor, lambda: clientTLS.buildProtocol(None))
        await cc.connectTCP("127.0.0.1", port.getHost().port)
        timeout = reactor.callLater(10, lambda: clientInner.transport.abortConnection())
        try:
            clientConn = await clientInner.done
            serverConn = await serverInner[0].side.done
        finally:
            if timeout.active():
                timeout.cancel()
        return serverConn, clientConn
    finally:
        clientInner.transport.loseConnection()
        await clientInner.lost
        if serverInner and serverInner[0].side and not serverInner[0].side.lost.called:
            serverInner[0].side.transport.loseConnection()
            await serverInner[0].side.lost
        await port.stopListening()


# --- handshakes -------------------------------------------------------------------


@pytest.mark.parametrize("label", ["dns", "srv", "xmpp", "wild", "server"])
@pytest_twisted.ensureDeferred
async def test_starttls_both_sides_valid(ca, certs, label):
    """Server presents the certificate chosen by `to`; both verdicts are valid.
    The client gateway presents a certificate of the same kind for its domain."""
    serverGW = gateway(ca, certs, default="other", perDomain=[label])
    clientGW = gateway(ca, certs, default=label)
    remote = local = DOMAIN[label]
    serverConn, clientConn = await starttls(serverGW, clientGW, remote, local)

    onClient = clientGW.peerVerdict(clientConn, remote)
    assert onClient.status == "valid", onClient.reason
    onServer = serverGW.peerVerdict(serverConn, local)
    assert onServer.status == "valid", onServer.reason

    info = describe(serverConn)
    assert info["version"] in ("TLSv1.2", "TLSv1.3")
    assert info["cipher"]
    assert clientGW.describe(clientConn)["version"] == info["version"]
    assert info["alpn"] is None  # STARTTLS: no ALPN


@pytest_twisted.ensureDeferred
async def test_starttls_picks_certificate_by_to_and_falls_back_to_certfile(ca, certs):
    serverGW = gateway(ca, certs, default="main", perDomain=["dns", "srv"])
    clientGW = gateway(ca, certs, default=None)
    for to, expected in (("srv.test", "srv.test"), ("dns.test", "dns.test"),
                         ("unknown.test", "main.test")):
        serverConn, clientConn = await starttls(serverGW, clientGW, to, "x.test")
        verdict = clientGW.peerVerdict(clientConn, expected)
        assert verdict.status == "valid", (to, verdict.reason)
        # a client without a certificate: the server sees none, still no handshake failure
        assert serverGW.peerVerdict(serverConn, "x.test").status == "none"


@pytest_twisted.ensureDeferred
async def test_name_mismatch_both_ways(ca, certs):
    serverGW = gateway(ca, certs, default="main")
    clientGW = gateway(ca, certs, default="xmpp")
    # The client expects a.test but the server is main.test; the server expects
    # the client to be main2.test but it presents an XmppAddr for xmpp.test.
    serverConn, clientConn = await starttls(serverGW, clientGW, "a.test", "xmpp.test")
    v = clientGW.peerVerdict(clientConn, "a.test")
    assert v.status == "name-mismatch" and v.trusted
    assert v.reason == "certificate is not valid for a.test: it names DNS:main.test"
    v = serverGW.peerVerdict(serverConn, "main2.test")
    assert v.status == "name-mismatch"
    assert v.reason == "certificate is not valid for main2.test: it names XmppAddr:xmpp.test"


@pytest_twisted.ensureDeferred
async def test_fail_open_trap_over_tls(ca, certs):
    """DESIGN.md: a trusted XmppAddr-only certificate (no DNS SAN) for another
    domain must not be accepted; Twisted's optionsForClientTLS would let it through."""
    serverGW = gateway(ca, certs, default="xmpp")
    clientGW = gateway(ca, certs, default="dns")
    serverConn, clientConn = await starttls(serverGW, clientGW, "a.test", "dns.test")
    v = clientGW.peerVerdict(clientConn, "a.test")
    assert v.status == "name-mismatch" and not v.valid
    assert clientGW.peerVerdict(clientConn, "xmpp.test").status == "valid"


@pytest_twisted.ensureDeferred
async def test_untrusted_peer_does_not_fail_the_handshake(ca, certs):
    serverGW = gateway(ca, certs, default="rogue")
    clientGW = gateway(ca, certs, default="rogue")
    serverConn, clientConn = await starttls(serverGW, clientGW, "rogue.test", "rogue.test")
    for gw, conn in ((clientGW, clientConn), (serverGW, serverConn)):
        v = gw.peerVerdict(conn, "rogue.test")
        assert v.status == "untrusted", v.reason
        assert not v.trusted


@pytest_twisted.ensureDeferred
async def test_peer_cert_chain_shape(ca, certs):
    """OpenSSL: the client's chain starts with the leaf, the server's omits it."""
    serverGW = gateway(ca, certs, default="main")
    clientGW = gateway(ca, certs, default="dns")
    serverConn, clientConn = await starttls(serverGW, clientGW, "main.test", "dns.test")
    clientSees = clientConn.get_peer_cert_chain()
    serverSees = serverConn.get_peer_cert_chain()
    assert clientSees[0].to_cryptography().subject.rfc4514_string()[3:] == "main.test" and len(clientSees) == 2
    assert [c.to_cryptography().subject.rfc4514_string()[3:] for c in serverSees] == ["s2sgate test CA"]
    for conn, cn in ((clientConn, "main.test"), (serverConn, "dns.test")):
        leaf, rest = peerCertificates(conn)
        assert leaf.to_cryptography().subject.rfc4514_string()[3:] == cn
        assert [c.to_cryptography().subject.rfc4514_string()[3:] for c in rest] == ["s2sgate test CA"]


@pytest_twisted.ensureDeferred
async def test_tls12_minimum_and_ciphers(ca, certs):
    serverGW = gateway(ca, certs, default="main", ciphers="ECDHE+AESGCM")
    clientGW = gateway(ca, certs, default="dns")
    # Force TLS 1.2 on the client (the context is fresh: pyOpenSSL freezes a
    # context once it has made a connection) to see the cipher list at work.
    creator = clientGW.clientCreator("main.test", "dns.test")
    creator.context.set_max_proto_version(SSL.TLS1_2_VERSION)
    serverConn, clientConn = await starttls(serverGW, clientGW, "main.test", "dns.test")
    info = describe(clientConn)
    assert info["version"] == "TLSv1.2"
    assert info["cipher"].startswith("ECDHE-ECDSA-AES") and "GCM" in info["cipher"]


@implementer(IOpenSSLClientConnectionCreator)
class _OldClient:
    """A TLS 1.0/1.1-only client, independent of s2sgate.auth.tls."""

    def clientConnectionForTLS(self, tlsProtocol):
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        ctx.set_min_proto_version(SSL.TLS1_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_1_VERSION)
        conn = SSL.Connection(ctx, None)
        conn.set_connect_state()
        return conn


@pytest_twisted.ensureDeferred
async def test_tls11_client_is_refused_by_the_server(ca, certs, monkeypatch):
    serverGW = gateway(ca, certs, default="main")
    clientGW = gateway(ca, certs, default="dns")
    monkeypatch.setattr(clientGW, "clientCreator", lambda *a, **kw: _OldClient())
    with pytest.raises(SSL.Error) as info:
        await starttls(serverGW, clientGW, "main.test", "dns.test")
    assert "protocol version" in str(info.value), str(info.value)  # the server's alert


@pytest_twisted.ensureDeferred
async def test_direct_tls_picks_certificate_by_sni_and_alpn(ca, certs):
    serverGW = gateway(ca, certs, default="main", perDomain=["srv", "xmpp"])
    clientGW = gateway(ca, certs, default="dns")
    for remote, expected in (("srv.test", "srv.test"), ("xmpp.test", "xmpp.test"),
                             ("elsewhere.test", "main.test")):
        serverConn, clientConn = await directtls(serverGW, clientGW, remote, "dns.test")
        assert serverConn.get_servername() == remote.encode()
        v = clientGW.peerVerdict(clientConn, expected)
        assert v.status == "valid", (remote, v.reason)
        assert serverGW.peerVerdict(serverConn, "dns.test").status == "valid"
        assert clientConn.get_alpn_proto_negotiated() == b"xmpp-server"
        assert describe(serverConn)["alpn"] == "xmpp-server"


@pytest_twisted.ensureDeferred
async def test_direct_tls_without_alpn_still_works(ca, certs):
    serverGW = gateway(ca, certs, default="main")
    clientGW = gateway(ca, certs, default="dns")
    serverConn, clientConn = await directtls(serverGW, clientGW, "main.test", "dns.test",
                                             alpn=False)
    assert clientGW.peerVerdict(clientConn, "main.test").status == "valid"
    assert describe(clientConn)["alpn"] is None


# --- setup, creators, helpers -----------------------------------------------------


def test_creators_declare_interfaces(ca, certs):
    gw = gateway(ca, certs, default="main")
    assert IOpenSSLServerConnectionCreator.providedBy(gw.serverCreator("main.test"))
    assert IOpenSSLServerConnectionCreator.providedBy(gw.directTLSServerCreator())
    assert IOpenSSLClientConnectionCreator.providedBy(gw.clientCreator("b.test", "main.test"))
    ctx = gw.serverCreator("main.test").context
    assert ctx.get_verify_mode() == SSL.VERIFY_PEER  # requested, never required


def test_has_certificate_and_covers(ca, certs):
    gw = gateway(ca, certs, default="main", perDomain=["srv"])
    assert gw.hasCertificateFor("main.test") and gw.hasCertificateFor("srv.test")
    assert gw.ourCertificateCovers("main.test") and gw.ourCertificateCovers("srv.test")
    assert not gw.ourCertificateCovers("conference.main.test")  # falls back to main's cert
    none = gateway(ca, certs, default=None)
    assert not none.hasCertificateFor("main.test")
    assert not none.ourCertificateCovers("main.test")
    with pytest.raises(TLSSetupError):
        none.serverCreator("main.test")
    # without a certificate we can still be a TLS client
    assert IOpenSSLClientConnectionCreator.providedBy(none.clientCreator("b.test", "a.test"))


def test_verify_uses_the_trust_store(ca, certs):
    from cryptography import x509
    leaf, *chain = x509.load_pem_x509_certificates(open(certs["dns"], "rb").read())
    gw = gateway(ca, certs, default="main")
    assert gw.verify(leaf, chain, "dns.test").status == "valid"
    system = TLSContexts(S2SConfig(certfile=str(certs["main"])), ["main.test"],
                         trust=TrustStore(None))
    assert system.verify(leaf, chain, "dns.test").status == "untrusted"


@pytest.mark.parametrize("problem", ["missing", "nokey", "mismatch", "garbage", "encrypted",
                                     "keyfirst"])
def test_setup_errors_are_one_line(ca, certs, tmp_path, problem):
    pem = certs["main"].read_bytes()
    certPart, _, keyPart = pem.partition(b"-----BEGIN PRIVATE KEY-----")
    keyPart = b"-----BEGIN PRIVATE KEY-----" + keyPart
    path = tmp_path / "bad.pem"
    if problem == "nokey":
        path.write_bytes(certPart)
    elif problem == "mismatch":
        otherKey = certs["dns"].read_bytes().partition(b"-----BEGIN PRIVATE KEY-----")[2]
        path.write_bytes(certPart + b"-----BEGIN PRIVATE KEY-----" + otherKey)
    elif problem == "garbage":
        path.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
                         + keyPart)
    elif problem == "encrypted":
        from cryptography.hazmat.primitives import serialization
        key = serialization.load_pem_private_key(keyPart, None)
        enc = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(b"pw"))
        path.write_bytes(certPart + enc)
    elif problem == "keyfirst":
        # key first, then the certificates: fine, the key may be anywhere
        path.write_bytes(keyPart + certPart)
    with pytest.raises(TLSSetupError) if problem != "keyfirst" else _nothing() as info:
        TLSContexts(S2SConfig(certfile=str(path), cafile=str(ca.cafile)), ["main.test"])
    if problem != "keyfirst":
        e = info.value
        assert e.key == "s2s.certfile"
        assert "\n" not in str(e) and str(e).startswith("s2s.certfile: ")
        assert str(path) in e.message


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def test_domain_certfile_error_names_its_key(ca, certs, tmp_path):
    config = S2SConfig(certfile=str(certs["main"]), cafile=str(ca.cafile),
                       domain_certfile=(DomainCert("dns.test", str(tmp_path / "nope.pem")),))
    with pytest.raises(TLSSetupError) as info:
        TLSContexts(config, ["main.test", "dns.test"])
    assert info.value.key == "s2s.domain_certfile[0].certfile"
    assert "cannot read" in info.value.message


def test_bad_cafile(certs, tmp_path):
    (tmp_path / "ca.pem").write_text("no certificates\n")
    with pytest.raises(TLSSetupError) as info:
        TLSContexts(S2SConfig(certfile=str(certs["main"]), cafile=str(tmp_path / "ca.pem")),
                    ["main.test"])
    assert info.value.key == "s2s.cafile"


def test_from_parse_config(ca, certs, tmp_path):
    config = parse_config({
        "local_domains": ["main.test", "dns.test"],
        "component": {"jid": "s2s.main.test", "secret": "x"},
        "s2s": {"certfile": str(certs["main"]), "cafile": str(ca.cafile),
                "domain_certfile": [{"domain": "dns.test", "certfile": str(certs["dns"])}],
                "ciphers": "ECDHE+AESGCM:ECDHE+CHACHA20"},
    }, str(tmp_path / "s2sgate.toml"))
    gw = TLSContexts(config.s2s, config.local_domains)
    assert gw.ourCertificateCovers("main.test") and gw.ourCertificateCovers("dns.test")
    assert gw.certificateFor("dns.test").identities.dns == ("dns.test",)
