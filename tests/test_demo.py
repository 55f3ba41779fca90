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
    # The conference pair joins alpha.test's stream (XEP-0220 multiplexing):
    # dialback on it, verified by beta calling alpha back; no new stream.
    assert re.search(r"alpha\s+asking beta\.test to take conference\.alpha\.test on the "
                     r"stream of alpha\.test", out)
    assert re.search(r"beta\s+dialback: TCP connect to 127\.0\.0\.1:\d+ "
                     r"\(conference\.alpha\.test\) to verify the key", out)
    assert re.search(r"inbound stream conference\.alpha\.test -> beta\.test authenticated "
                     r"\(dialback; STARTTLS \S+ \S+ certificate name-mismatch\)", out)
    assert re.search(r"alpha\s+beta\.test took conference\.alpha\.test on the stream of "
                     r"alpha\.test: 2 pairs on it", out)
    assert "outbound conference.alpha.test -> beta.test: connecting" not in out
    for line in ("bob@beta.test received 'hello-1' from alice@alpha.test",
                 "alice@alpha.test received 'hello-2' from bob@beta.test",
                 "bob@beta.test received 'hello-3' from room@conference.alpha.test/alice"):
        assert line in out


def test_demo_session_table(demoRun):
    rows = tableRows(demoRun.stdout)
    # One stream each way of looking at it, carrying both of alpha's domains.
    both = "alpha.test,conference.alpha.test"
    out = [r for r in rows if r[:4] == ["alpha", "out", both, "beta.test"]]
    assert len(out) == 1, rows
    assert out[0][4] in ("TLSv1.2", "TLSv1.3")
    assert out[0][5:] == ["valid", "sasl-external"]
    assert [r[:4] for r in rows if r[0] == "alpha"] == [["alpha", "out", both, "beta.test"]]
    assert ["beta", "in", "beta.test", both, out[0][4], "valid", "sasl-external"] in rows
    # Both gateways speak bidi (XEP-0288): beta's replies travel over the
    # streams alpha opened, beta opens none of its own.
    assert [r[:4] for r in rows if r[0] == "beta" and r[1] == "out"] == []


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


# --- --keep-running: the tour -------------------------------------------------------


class Tour:
    """A running `s2sgate demo --keep-running`, its output read line by line."""

    def __init__(self, tmp_path, *args):
        import queue
        import threading

        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.process = subprocess.Popen(
            [str(S2SGATE), "demo", "--keep-running", *args], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, pattern, timeout=60):
        """Read lines until one matches C{pattern}; return the match."""
        import queue
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n"
                                     + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"the demo ended before {pattern!r}:\n"
                                     + "\n".join(self.lines) + self.process.stderr.read())
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m

    def interrupt(self, timeout=30):
        """Ctrl-C: SIGINT, then the rest of the output and the exit status."""
        import signal

        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=timeout)
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
        return self.process.returncode, self.process.stderr.read()

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def fetch(url, timeout=10):
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return response.status, response.headers.get("content-type"), response.read()


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    """One tour for the module's tests: its URLs and printed commands, read from its output."""
    t = Tour(tmp_path_factory.mktemp("tour"), "--burst", "20")
    try:
        t.until(r"^== both sites keep running until Ctrl-C")
        t.urls = {}
        for _ in range(2):
            m = t.until(r"^  (\w+)\s+status page (http://127\.0\.0\.1:\d+/)")
            t.urls[m.group(1)] = m.group(2)
        t.commands = []
        while True:
            m = t.until(r"^    \$ (.*)$|^  files in (\S+)")
            if m.group(2):
                t.tempdir = m.group(2)
                break
            t.commands.append(m.group(1))
        yield t
    finally:
        t.kill()


def _printed(tour, word):
    """The printed command line running `s2sgate WORD` on alpha's config, as argv."""
    import shlex

    line = next(c for c in tour.commands if f" {word} " in c and "alpha.toml" in c)
    return shlex.split(line)


def test_tour_prints_a_status_page_url_per_site_and_the_commands_to_try(tour):
    assert sorted(tour.urls) == ["alpha", "beta"]
    assert tour.urls["alpha"] != tour.urls["beta"]
    words = {c.split()[1] for c in tour.commands}
    assert {"sessions", "failures", "check", "connect"} <= words
    assert all(("--config " + tour.tempdir) in c for c in tour.commands if "--config" in c)


def test_tour_status_page_and_sessions_json_are_served_by_each_gateway(tour):
    status, kind, body = fetch(tour.urls["alpha"])
    assert status == 200 and kind.startswith("text/html") and b"<title>s2sgate status" in body
    sessions = {site: __import__("json").loads(fetch(tour.urls[site] + "api/sessions")[2])
                for site in ("alpha", "beta")}
    out = [(s["remote"], s["auth"], s["bidi"]) for s in sessions["alpha"]["sessions"]
           if s["direction"] == "out" and s["local"] == "alpha.test"]
    assert out == [("beta.test", "sasl-external", True)], sessions["alpha"]
    # Both speak bidi (XEP-0288): beta answers over alpha's stream, opens none of its own.
    beta = [(s["direction"], s["remote"], s["bidi"]) for s in sessions["beta"]["sessions"]
            if s["local"] == "beta.test"]
    assert ("in", "alpha.test", True) in beta and not [d for d in beta if d[0] == "out"], \
        sessions["beta"]


def test_tour_metrics_count_the_chat(tour):
    def stanzasOut():
        _, kind, body = fetch(tour.urls["alpha"] + "metrics")
        m = re.search(r'^s2sgate_stanzas_total\{direction="out"\} (\d+)', body.decode(), re.M)
        assert m, body[:500]
        return int(m.group(1))

    before = stanzasOut()
    # A report comes every 5 s and chat messages go every 2 s: some went meanwhile.
    tour.until(r"chat: \d+ messages delivered", timeout=20)
    assert stanzasOut() > before


def test_tour_chat_line_says_how_many_messages_went_each_way(tour):
    m = tour.until(r"chat: (\d+) messages delivered \((\d+) alice -> bob, (\d+) bob -> alice\)"
                   r"(, \d+ on the way)?; alpha \d+ s2s links, beta \d+ s2s links$", timeout=20)
    assert int(m.group(1)) == int(m.group(2)) + int(m.group(3)) > 0


def test_tour_printed_sessions_command_lists_the_links(tour):
    result = subprocess.run(_printed(tour, "sessions"), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    # alpha's two domains share the one bidi stream (XEP-0220 multiplexing, XEP-0288).
    both = "alpha.test,conference.alpha.test"
    assert ["out+in", both, "beta.test", "TLSv1.3", "valid", "sasl-external"] in \
        [r[:6] for r in rows] or \
        ["out+in", both, "beta.test", "TLSv1.2", "valid", "sasl-external"] in \
        [r[:6] for r in rows], result.stdout
    assert "by certificate" in result.stdout


def test_tour_printed_failures_and_check_commands_work(tour):
    result = subprocess.run(_printed(tour, "failures"), capture_output=True, text=True,
                            timeout=30)
    assert (result.returncode, result.stdout.strip()) == \
        (0, "no failed connection attempts recently"), result.stderr
    result = subprocess.run(_printed(tour, "check"), capture_output=True, text=True,
                            timeout=60)
    # The check goes where alpha's gateway goes (its s2s.address override).
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verdict: ✔ federation with beta.test can work" in result.stdout
    assert re.search(r"certificate: valid for beta\.test", result.stdout)


def test_tour_ctrl_c_stops_everything_and_removes_the_files(tmp_path):
    t = Tour(tmp_path, "--burst", "0")
    try:
        t.until(r"^  alpha\s+status page (http://127\.0\.0\.1:\d+/)")
        url = t.until(r"^  beta\s+status page (http://127\.0\.0\.1:\d+/)").group(1)
        tempdir = t.until(r"^  files in (\S+)").group(1)
        assert fetch(url + "api/link")[0] == 200
        code, err = t.interrupt()
    finally:
        t.kill()
    assert (code, err) == (0, "")
    assert t.lines[-1] == "stopped; temporary files removed"
    assert not os.path.exists(tempdir)
    import urllib.error
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        fetch(url + "api/link", timeout=2)


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
