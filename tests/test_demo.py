"""
Tests for C{s2sgate demo}: the command end to end (as a subprocess), the
c2s stand-in's side of XEP-0114, and the demo's certificate authority.
"""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.testing import StringTransport
from twisted.words.xish import domish

from s2sgate.auth.certs import TrustStore, identitiesOf, matchesDomain, verifyPeer
from s2sgate.auth.tls import LocalCertificate
from s2sgate.cli import main
from s2sgate.demo.c2s import C2SStandIn
from s2sgate.demo.pki import OID_SRV_NAME, DemoCA

S2SGATE = Path(sys.executable).with_name("s2sgate")


def runDemo(tmp_path, *args, timeout=120):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([str(S2SGATE), "demo", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tableRows(out):
    """The session table's rows as lists of columns."""
    lines = out.splitlines()
    start = lines.index("== s2s sessions")
    rows = []
    for line in lines[start + 3:]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


# --- the command, end to end ----------------------------------------------------


@pytest.fixture(scope="module")
def demoRun(tmp_path_factory):
    return runDemo(tmp_path_factory.mktemp("demo"), "--burst", "200")


def test_demo_delivers_everything_and_exits_0(demoRun):
    assert demoRun.returncode == 0, demoRun.stdout + demoRun.stderr
    assert demoRun.stderr == ""
    assert "ok: every message was delivered exactly once" in demoRun.stdout


def test_demo_prints_each_step(demoRun):
    out = demoRun.stdout
    assert re.search(r"alpha\s+component link up: s2s\.alpha\.test", out)
    assert re.search(r"alpha\s+outbound alpha\.test -> beta\.test: connecting", out)
    assert re.search(r"resolve beta\.test: s2s\.address override -> 127\.0\.0\.1:\d+", out)
    assert re.search(r"TCP connect to 127\.0\.0\.1:\d+ \(beta\.test\)", out)
    assert re.search(r"STARTTLS: TLSv1\.[23] \S+; certificate valid", out)
    assert "auth: authenticated with sasl-external" in out
    assert "auth: authenticated with dialback" in out
    assert re.search(r"beta\s+dialback: TCP connect to 127\.0\.0\.1:\d+ "
                     r"\(conference\.alpha\.test\) to verify the key", out)
    for line in ("bob@beta.test received 'hello-1' from alice@alpha.test",
                 "alice@alpha.test received 'hello-2' from bob@beta.test",
                 "bob@beta.test received 'hello-3' from room@conference.alpha.test/alice"):
        assert line in out


def test_demo_session_table(demoRun):
    rows = tableRows(demoRun.stdout)
    out = [r for r in rows if r[:4] == ["alpha", "out", "alpha.test", "beta.test"]]
    assert len(out) == 1, rows
    assert out[0][4] in ("TLSv1.2", "TLSv1.3")
    assert out[0][5:] == ["valid", "sasl-external"]
    conference = [r for r in rows if "conference.alpha.test" in r[2:4]]
    assert conference and all(r[6] == "dialback" for r in conference), rows
    assert ["alpha", "out", "conference.alpha.test", "beta.test"] in [r[:4] for r in conference]
    # beta judges alpha's certificate for conference.alpha.test: it does not name it.
    assert ["beta", "in", "beta.test", "conference.alpha.test", out[0][4], "name-mismatch",
            "dialback"] in rows
    assert [r[:4] for r in rows if r[0] == "beta" and r[1] == "out"] == \
        [["beta", "out", "beta.test", "alpha.test"]]


def test_demo_burst_line(demoRun):
    m = re.search(r"^burst: 200 messages in (\d+\.\d+) s = (\d+) stanzas/s$", demoRun.stdout, re.M)
    assert m, demoRun.stdout
    assert float(m.group(1)) > 0 and int(m.group(2)) > 0


def test_demo_removes_its_temporary_files(demoRun):
    m = re.search(r"pki: CA made in (\S+);", demoRun.stdout)
    assert m and not os.path.exists(m.group(1))


def test_demo_timeout_is_one_line_and_non_zero(tmp_path):
    result = runDemo(tmp_path, "--timeout", "0.05")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("s2sgate demo: failed: timeout: 0.05 s passed while ")


def test_demo_options_are_checked(capsys):
    assert main(["demo", "--burst", "-3"]) == 2
    assert "must be 0 or more" in capsys.readouterr().err
    assert main(["demo", "--timeout", "0"]) == 2


@pytest_twisted.ensureDeferred
async def test_a_bounce_fails_the_demo_with_its_condition():
    from twisted.internet import reactor

    from s2sgate.demo.run import Demo, DemoOptions

    class BounceDemo(Demo):
        async def _exchange(self):
            alice = self.alpha.entities["alice@alpha.test"]
            waiting = self.deliveries.expect("lost-1", "nobody@beta.test")
            alice.message("nobody@beta.test", "anyone there?", "lost-1")
            await self.wait(waiting, "waiting for nobody@beta.test")

    lines, errors = [], []
    demo = BounceDemo(reactor, DemoOptions(burst=10, timeout=30), write=lines.append,
                      writeError=errors.append)
    assert await demo.run() == 1
    assert errors == ["s2sgate demo: failed: bounce: alice@alpha.test received an error for "
                      "message 'lost-1' from nobody@beta.test: service-unavailable "
                      "(no such user here: nobody@beta.test)"], lines
    assert not os.path.exists(demo.tempdir)


# --- the c2s stand-in: server side of XEP-0114 -----------------------------------

HEADER = ("<stream:stream xmlns='jabber:component:accept' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='{jid}'>")


def connectComponent(site, jid="s2s.example.test"):
    xs = site.factory.buildProtocol(None)
    transport = StringTransport()
    xs.makeConnection(transport)
    xs.dataReceived(HEADER.format(jid=jid).encode())
    return xs, transport


def standIn():
    site = C2SStandIn("test", ["example.test", "conference.example.test"], "s2s.example.test",
                      "sekrit")
    return site


def streamId(transport):
    m = re.search(r"""\sid=['"]([^'"]+)['"]""", transport.value().decode())
    assert m, transport.value()
    return m.group(1)


def test_standin_accepts_the_right_handshake_digest():
    site = standIn()
    xs, transport = connectComponent(site)
    header = transport.value().decode()
    assert "xmlns='jabber:component:accept'" in header and "from='s2s.example.test'" in header
    digest = hashlib.sha1((streamId(transport) + "sekrit").encode()).hexdigest()
    transport.clear()
    xs.dataReceived(f"<handshake>{digest}</handshake>".encode())
    assert transport.value() == b"<handshake/>"
    assert site.componentConnected
    assert not transport.disconnecting


def test_standin_refuses_a_wrong_digest_with_not_authorized():
    site = standIn()
    xs, transport = connectComponent(site)
    digest = hashlib.sha1((streamId(transport) + "wrong").encode()).hexdigest()
    transport.clear()
    xs.dataReceived(f"<handshake>{digest}</handshake>".encode())
    answer = transport.value().decode()
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in answer
    assert "<handshake/>" not in answer
    assert transport.disconnecting
    assert not site.componentConnected


def test_standin_refuses_a_digest_of_another_stream():
    site = standIn()
    xs, transport = connectComponent(site)
    digest = hashlib.sha1(b"some-other-id" + b"sekrit").hexdigest()
    transport.clear()
    xs.dataReceived(f"<handshake>{digest}</handshake>".encode())
    assert "not-authorized" in transport.value().decode()
    assert not site.componentConnected


def test_standin_refuses_an_unknown_component_name():
    site = standIn()
    xs, transport = connectComponent(site, jid="intruder.example.test")
    assert "host-unknown" in transport.value().decode()
    assert transport.disconnecting


def test_standin_routes_by_domain():
    site = standIn()
    alice = site.addUser("alice@example.test")
    room = site.addService("conference.example.test")
    xs, transport = connectComponent(site)
    digest = hashlib.sha1((streamId(transport) + "sekrit").encode()).hexdigest()
    xs.dataReceived(f"<handshake>{digest}</handshake>".encode())
    transport.clear()
    # From the component: local delivery, to a user and to the room service.
    xs.dataReceived(b"<message from='bob@remote.test/x' to='alice@example.test/phone' id='m1'>"
                    b"<body>hi</body></message>"
                    b"<message from='bob@remote.test/x' to='room@conference.example.test'"
                    b" id='m2'/>")
    assert [s["id"] for s in alice.received] == ["m1"]
    assert [s["id"] for s in room.received] == ["m2"]
    # From a local user to a remote domain: to the component, unchanged.
    alice.message("bob@remote.test", "hello", "m3")
    sent = transport.value().decode()
    assert "to='bob@remote.test'" in sent and "from='alice@example.test'" in sent
    assert "<body>hello</body>" in sent


def test_standin_bounces_remote_stanzas_while_no_component_is_connected():
    site = standIn()
    alice = site.addUser("alice@example.test")
    alice.message("bob@remote.test", "hello", "m1")
    [bounce] = alice.received
    assert bounce["type"] == "error" and bounce["from"] == "bob@remote.test"
    assert bounce.error.firstChildElement().name == "remote-server-timeout"


def test_standin_bounces_unknown_local_users():
    site = standIn()
    alice = site.addUser("alice@example.test")
    alice.message("nobody@example.test", "hello", "m1")
    [bounce] = alice.received
    assert bounce["type"] == "error"
    assert bounce.error.firstChildElement().name == "service-unavailable"


# --- the demo's CA ----------------------------------------------------------------


def test_pki_certificate_has_the_requested_identities(tmp_path):
    ca = DemoCA(tmp_path)
    issued = ca.issue("alpha.test")
    cert = x509.load_pem_x509_certificates(issued.certfile.read_bytes())[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["alpha.test"]
    [srv] = [o for o in san.get_values_for_type(x509.OtherName) if o.type_id == OID_SRV_NAME]
    assert srv.value == b"\x16\x17_xmpp-server.alpha.test"    # DER IA5String
    identities = identitiesOf(cert)
    assert matchesDomain(identities, "alpha.test")
    assert not matchesDomain(identities, "conference.alpha.test")
    assert not matchesDomain(identities, "beta.test")


def test_pki_key_matches_and_file_is_what_certfile_expects(tmp_path):
    ca = DemoCA(tmp_path)
    issued = ca.issue("beta.test", dns=["beta.test", "*.beta.test"], srv=[])
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert issued.key.public_key().public_bytes(der, spki) == \
        issued.cert.public_key().public_bytes(der, spki)
    # leaf + CA + key in one file, loaded as the gateway loads s2s.certfile
    local = LocalCertificate.load(str(issued.certfile), "s2s.certfile")
    assert local.leaf == issued.cert and local.chain == (ca.cert,)
    assert local.key.public_key().public_bytes(der, spki) == \
        issued.cert.public_key().public_bytes(der, spki)
    assert matchesDomain(local.identities, "www.beta.test")
    assert oct(issued.certfile.stat().st_mode & 0o777) == "0o600"
    # signed by the CA: the CA's key verifies the leaf's signature
    ca.cert.public_key().verify(issued.cert.signature, issued.cert.tbs_certificate_bytes,
                                ec.ECDSA(issued.cert.signature_hash_algorithm))


def test_pki_certificate_is_valid_for_its_domain_against_the_ca(tmp_path):
    ca = DemoCA(tmp_path)
    issued = ca.issue("alpha.test")
    trust = TrustStore(str(ca.cafile))
    assert verifyPeer(trust, issued.cert, [], "alpha.test").status == "valid"
    assert verifyPeer(trust, issued.cert, [], "conference.alpha.test").status == "name-mismatch"
    other = DemoCA(tmp_path / "other")
    assert verifyPeer(TrustStore(str(other.cafile)), issued.cert, [], "alpha.test").status \
        == "untrusted"


def test_message_body_size():
    from s2sgate.demo.run import _body
    assert len(_body(250, 7)) == 250 and _body(250, 7).startswith("message 7: ")
    element = domish.Element((None, "message"))
    element.addElement("body", content=_body(250, 1))
    assert len(str(element.body)) == 250
