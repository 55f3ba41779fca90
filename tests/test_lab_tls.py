"""The test lab's TLS-capable peers (for the gateway's security interop tests).

  tls1.test  Prosody 127.0.0.60  STARTTLS required, s2s_secure_auth (certificates only)
  tls2.test  Prosody 127.0.0.61  same
  dtls.test  Prosody 127.0.0.62  Direct TLS (XEP-0368) on 5270 via _xmpps-server._tcp,
                                 STARTTLS on 5269 as well, secure_auth
  ejtls.test ejabberd 127.0.0.63 s2s_use_starttls: required, certificate, dialback loaded
  rogue.test Prosody 127.0.0.64  certificate from an untrusted CA (negative case)
  ejtrust.test ejabberd 127.0.0.65 s2s_use_starttls="required_trusted" (lab alias:
                                 required, no mod_s2s_dialback: certificates only)

All certificates come from one TestCA with DNS-IDs only (ejabberd 23.01 crashes on peer
certificates carrying XmppAddr). Test DNS on 127.0.0.79 when free.
"""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.names import client as dnsclient

from tests.lab.certs import TestCA
from tests.lab.client import connect_client
from tests.lab.dns import TestDNS, pick_dns_ip
from tests.lab.ejabberd import Ejabberd
from tests.lab.prosody import Prosody

pytestmark = pytest.mark.servers

TLS1_IP, TLS2_IP, DTLS_IP, EJ_IP, ROGUE_IP = ("127.0.0.60", "127.0.0.61", "127.0.0.62",
                                              "127.0.0.63", "127.0.0.64")
EJTRUST_IP = "127.0.0.65"
DTLS_PORT = 5270


@pytest.fixture(scope="module")
def tlsdir(tmp_path_factory):
    return tmp_path_factory.mktemp("labtls")


@pytest.fixture(scope="module")
def ca(tlsdir):
    return TestCA(tlsdir / "ca")


@pytest.fixture(scope="module")
def dns(tlsdir):
    d = TestDNS(tlsdir / "dns", ip=pick_dns_ip("127.0.0.79"))
    for name, ip in (("tls1.test", TLS1_IP), ("tls2.test", TLS2_IP), ("dtls.test", DTLS_IP),
                     ("ejtls.test", EJ_IP), ("rogue.test", ROGUE_IP),
                     ("ejtrust.test", EJTRUST_IP)):
        d.add_host(name, ip)
    d.add_srv("_xmpp-server._tcp.tls1.test", "tls1.test", 5269)
    d.add_srv("_xmpp-server._tcp.tls2.test", "tls2.test", 5269)
    d.add_srv("_xmpp-server._tcp.ejtls.test", "ejtls.test", 5269)
    # Direct TLS first (Prosody 0.12 and ejabberd 23.01 ask _xmpps-server first)
    d.add_srv("_xmpps-server._tcp.dtls.test", "dtls.test", DTLS_PORT)
    d.add_srv("_xmpp-server._tcp.dtls.test", "dtls.test", 5269)
    d.start()
    yield d
    d.stop()


def _tls_prosody(tlsdir, ca, dns, name, ip, *, untrusted=False, **tls):
    host = f"{name}.test"
    cert = ca.issue(host, dns=[host], untrusted=untrusted)
    options = {"cafile": ca.cafile, "certs": {host: cert}, "secure_auth": True,
               "require_encryption": True}
    options.update(tls)
    p = Prosody(tlsdir, name, ip, hosts=[host], users=[(f"user@{host}", "userpw")], dns=dns,
                tls=options)
    p.start()   # waits, with a deadline, for its ports to open
    return p


@pytest.fixture(scope="module")
def tls1(tlsdir, ca, dns):
    p = _tls_prosody(tlsdir, ca, dns, "tls1", TLS1_IP)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def tls2(tlsdir, ca, dns):
    p = _tls_prosody(tlsdir, ca, dns, "tls2", TLS2_IP)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def dtls(tlsdir, ca, dns):
    """Prosody with ``s2s_direct_tls_ports = { 5270 }``. Its peers reach it through
    ``_xmpps-server._tcp.dtls.test`` (Prosody 0.12 tries that SRV before
    ``_xmpp-server._tcp`` when it has a TLS context for the sending host)."""
    p = _tls_prosody(tlsdir, ca, dns, "dtls", DTLS_IP, direct_tls_port=DTLS_PORT)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def rogue(tlsdir, ca, dns):
    """Certificate from a CA the others do not trust (it trusts the test CA itself)."""
    p = _tls_prosody(tlsdir, ca, dns, "rogue", ROGUE_IP, untrusted=True)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def ejtls(tlsdir, ca, dns):
    """ejabberd 23.01 with ``s2s_use_starttls: required``, its certificate in
    ``certfiles`` (DNS-ID ejtls.test), ``ca_file``/``s2s_cafile`` = the test CA,
    mod_s2s_dialback loaded."""
    cert, _key = ca.issue("ejtls.test", dns=["ejtls.test"])
    ej = Ejabberd(tlsdir, "ejtls", EJ_IP, host="ejtls.test",
                  users=[("user@ejtls.test", "userpw")], dns=dns,
                  s2s_use_starttls="required", certfile=cert, cafile=ca.cafile)
    ej.start()   # waits, with a deadline, for its ports to open
    yield ej
    ej.stop()
    assert ej.leftovers() == ""


@pytest.fixture(scope="module")
def ejtrust(tlsdir, ca, dns):
    """ejabberd 23.01 without dialback: ``s2s_use_starttls="required_trusted"`` (lab
    alias for ``required`` + no mod_s2s_dialback; 23.01 itself has no required_trusted).
    Outgoing it then verifies the peer certificate (hook s2s_out_tls_verify), so only
    SASL EXTERNAL can authenticate in either direction."""
    cert, _key = ca.issue("ejtrust.test", dns=["ejtrust.test"])
    ej = Ejabberd(tlsdir, "ejtrust", EJTRUST_IP, host="ejtrust.test",
                  users=[("user@ejtrust.test", "userpw")], dns=dns,
                  s2s_use_starttls="required_trusted", certfile=cert, cafile=ca.cafile)
    ej.start()
    yield ej
    ej.stop()
    assert ej.leftovers() == ""


# -- helpers ---------------------------------------------------------------------------

def is_message(stanza_id):
    return lambda e: e.name == "message" and e.getAttribute("id") == stanza_id


async def send_and_expect(sender_jid, sender_ip, rcpt_jid, rcpt_ip, tag, timeout=20):
    """Log both users in, send sender -> rcpt, return the received message."""
    sender = await connect_client(reactor, f"{sender_jid}/{tag}", "userpw", sender_ip)
    rcpt = await connect_client(reactor, f"{rcpt_jid}/{tag}", "userpw", rcpt_ip)
    try:
        rcpt.send_presence()
        sender.send_presence()
        sender.send(f"<message to='{rcpt_jid}/{tag}' id='{tag}' type='chat'>"
                    f"<body>{tag}</body></message>")
        return await rcpt.wait_for(is_message(tag), timeout=timeout)
    finally:
        await sender.disconnect()
        await rcpt.disconnect()


def session(server, remote, direction):
    """The s2s session of ``server`` with ``remote`` in ``direction`` ("-->"/"<--")."""
    rows = [r for r in server.s2s_sessions()
            if r["remote"] == remote and r["dir"] in (direction, "<->")]
    assert rows, server.s2s_show()
    return rows[0]


# -- tests -----------------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_dns_serves_xmpps_server_srv(dns):
    r = dnsclient.Resolver(servers=dns.nameservers)
    ans, _, _ = yield r.lookupService("_xmpps-server._tcp.dtls.test")
    assert [(a.payload.target.name, a.payload.port) for a in ans] == [(b"dtls.test", DTLS_PORT)]


def test_prosody_tls_config(tls1, dtls, ca):
    cfg = tls1.config.read_text()
    assert "s2s_secure_auth = true" in cfg and "s2s_require_encryption = true" in cfg
    assert f'cafile = "{ca.cafile}"' in cfg
    assert '"dialback"' not in cfg  # secure_auth: certificates only
    assert "s2s_direct_tls_ports = { 5270 }" in dtls.config.read_text()


@pytest_twisted.inlineCallbacks
def test_prosody_starttls_secure_auth(tls1, tls2):
    m = yield send_and_expect("user@tls1.test", TLS1_IP, "user@tls2.test", TLS2_IP, "p1")
    assert m["from"] == "user@tls1.test/p1"
    out = session(tls1, "tls2.test", "-->")
    assert out["secure"].startswith("TLSv1."), out
    assert out["cert"] == "Valid", out
    assert out["dialback"] != "Completed", out
    inc = session(tls2, "tls1.test", "<--")
    assert inc["secure"].startswith("TLSv1."), inc
    assert inc["s2s_sasl"] == "Succeeded", inc  # SASL EXTERNAL
    assert inc["port"] == "5269", inc


@pytest_twisted.inlineCallbacks
def test_prosody_direct_tls_via_xmpps_server_srv(tls1, dtls):
    m = yield send_and_expect("user@tls1.test", TLS1_IP, "user@dtls.test", DTLS_IP, "d1")
    assert m["from"] == "user@tls1.test/d1"
    inc = session(dtls, "tls1.test", "<--")
    assert inc["port"] == str(DTLS_PORT), inc  # came in on the Direct TLS port
    assert inc["secure"].startswith("TLSv1."), inc
    assert inc["sni"] == "dtls.test", inc
    # Prosody 0.12 offers ALPN "xmpp-server" as a client (mod_tls) but its Direct TLS
    # listener has no ALPN configured, so nothing is selected: a Direct TLS client must
    # not insist on the server choosing xmpp-server.
    assert inc["alpn"] == "", inc
    assert inc["s2s_sasl"] == "Succeeded", inc


@pytest_twisted.inlineCallbacks
def test_ejabberd_starttls_required_with_prosody(tls1, ejtls):
    m = yield send_and_expect("user@tls1.test", TLS1_IP, "user@ejtls.test", EJ_IP, "e1")
    assert m["from"] == "user@tls1.test/e1"
    m = yield send_and_expect("user@ejtls.test", EJ_IP, "user@tls1.test", TLS1_IP, "e2")
    assert m["from"] == "user@ejtls.test/e2"
    for direction in ("-->", "<--"):  # TLS 1.3 + SASL EXTERNAL both ways, no dialback
        s = session(tls1, "ejtls.test", direction)
        assert s["secure"].startswith("TLSv1."), s
        assert (s["cert"], s["s2s_sasl"], s["dialback"]) == ("Valid", "Succeeded",
                                                             "Not used"), s


@pytest_twisted.inlineCallbacks
def test_ejabberd_without_dialback_with_prosody(tls2, ejtrust):
    assert "mod_s2s_dialback" not in (ejtrust.confdir / "ejabberd.yml").read_text()
    assert "s2s_use_starttls: required" in (ejtrust.confdir / "ejabberd.yml").read_text()
    m = yield send_and_expect("user@ejtrust.test", EJTRUST_IP, "user@tls2.test", TLS2_IP, "t1")
    assert m["from"] == "user@ejtrust.test/t1"
    m = yield send_and_expect("user@tls2.test", TLS2_IP, "user@ejtrust.test", EJTRUST_IP, "t2")
    assert m["from"] == "user@tls2.test/t2"
    for direction in ("-->", "<--"):
        s = session(tls2, "ejtrust.test", direction)
        assert (s["cert"], s["s2s_sasl"]) == ("Valid", "Succeeded"), s


@pytest_twisted.inlineCallbacks
def test_untrusted_certificate_is_refused(tls1, rogue):
    """secure_auth peer tls1 does not accept rogue.test (untrusted CA): the message
    bounces back to the sender instead of arriving."""
    sender = yield connect_client(reactor, "user@rogue.test/r1", "userpw", ROGUE_IP)
    rcpt = yield connect_client(reactor, "user@tls1.test/r1", "userpw", TLS1_IP)
    try:
        rcpt.send_presence()
        sender.send("<message to='user@tls1.test/r1' id='r1' type='chat'><body>x</body>"
                    "</message>")
        err = yield sender.wait_for(is_message("r1"), timeout=30)
        assert err.getAttribute("type") == "error", err.toXml()
        # Prosody 0.12 bounces remote-server-timeout, text "Server-to-server connection
        # failed: not-authorized (Your server's certificate is not trusted)"
        cond = [c.name for c in err.error.elements() if c.name != "text"]
        assert cond == ["remote-server-timeout"], err.toXml()
        assert "certificate is not trusted" in str(err.error.text), err.toXml()
        assert not [e for e in rcpt.received if e.getAttribute("id") == "r1"]
        assert ("Forbidding insecure connection to/from rogue.test because its certificate"
                " is not trusted") in tls1.log_text()
    finally:
        yield sender.disconnect()
        yield rcpt.disconnect()


def test_testca_variants(ca):
    """Every certificate kind the security tests need, checked with openssl."""
    import subprocess

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from tests.lab.certs import OID_SRV_NAME, OID_XMPP_ADDR

    def load(certfile):
        return x509.load_pem_x509_certificate(certfile.read_bytes())

    def sans(cert):
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return ([("dns", n) for n in ext.get_values_for_type(x509.DNSName)]
                + [(o.type_id.dotted_string, o.value) for o in ext
                   if isinstance(o, x509.OtherName)])

    def verify(certfile, cafile=ca.cafile):
        r = subprocess.run(["openssl", "verify", "-CAfile", str(cafile), "-purpose",
                            "sslserver", str(certfile)], capture_output=True, text=True)
        return r.returncode == 0, r.stdout + r.stderr

    c, k = ca.issue("dnsonly.test", dns=["dnsonly.test"])
    assert sans(load(c)) == [("dns", "dnsonly.test")] and verify(c)[0]
    assert b"PRIVATE KEY" in c.read_bytes() and b"PRIVATE KEY" in k.read_bytes()
    assert c.read_bytes().count(b"BEGIN CERTIFICATE") == 2  # leaf + CA
    assert oct(c.stat().st_mode & 0o777) == "0o644" and oct(k.stat().st_mode & 0o777) == "0o644"
    c, _ = ca.issue("srvonly.test", srv=["srvonly.test"])
    assert sans(load(c)) == [(OID_SRV_NAME.dotted_string,
                              b"\x16\x19_xmpp-server.srvonly.test")] and verify(c)[0]
    c, _ = ca.issue("xmpponly.test", xmpp=["xmpponly.test"])
    assert sans(load(c)) == [(OID_XMPP_ADDR.dotted_string, b"\x0c\x0dxmpponly.test")]
    c, _ = ca.issue("wild", dns=["*.example.test"])
    assert sans(load(c)) == [("dns", "*.example.test")] and verify(c)[0]
    c, _ = ca.issue("sa.test", dns=["sa.test"], eku=("serverAuth",))
    eku = load(c).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    c, _ = ca.issue("old.test", dns=["old.test"], expired=True)
    ok, out = verify(c)
    assert not ok and "expired" in out
    c, _ = ca.issue("rogue.test", dns=["rogue.test"], untrusted=True)
    assert not verify(c)[0] and verify(c, ca.untrusted_cafile)[0]
    c, _ = ca.issue("self.test", dns=["self.test"], self_signed=True)
    cert = load(c)
    assert cert.issuer == cert.subject and c.read_bytes().count(b"BEGIN CERTIFICATE") == 1
    ok, out = verify(c)
    assert not ok and "self-signed" in out
