"""
Secure federation against real Prosody and ejabberd servers (issue: security).

  alice@home.test ─ Prosody (127.0.0.80) ─ component ─ s2sgate 127.0.0.81 (:5269 STARTTLS, :5270 direct TLS)
      ─ secure.test      Prosody, s2s_secure_auth, certificate  (127.0.0.82)  STARTTLS + SASL EXTERNAL
      ─ ejsecure.test    ejabberd, starttls required, certificate (127.0.0.83)
      ─ untrusted.test, mismatch.test, expired.test   one Prosody with bad certificates (127.0.0.84)
      ─ plain.test       Prosody without TLS (127.0.0.85)
      ─ strip.test       a raw peer that leaves STARTTLS out of its features (127.0.0.86)
      ─ direct.test      Prosody reached only over Direct TLS via _xmpps-server (127.0.0.87:5270)

The gateway's configuration lives in a file: tests change it and reload
the running gateway (by SIGHUP), as an operator would.
"""

import os
import signal
import socket
import ssl
import time
from functools import partial

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher

from s2sgate.config import load_config
from s2sgate.gateway.service import GatewayService
from tests.lab import chat
from tests.lab.certs import TestCA
from tests.lab.chat import conditionOf, textOf
from tests.lab.dns import TestDNS, pick_dns_ip
from tests.lab.ejabberd import Ejabberd
from tests.lab.prosody import Prosody
from tests.lab.wait import until

pytestmark = pytest.mark.servers

HOME_IP, GATEWAY_IP = "127.0.0.80", "127.0.0.81"
SECURE_IP, EJABBERD_IP, BAD_IP = "127.0.0.82", "127.0.0.83", "127.0.0.84"
PLAIN_IP, STRIP_IP, DIRECT_IP = "127.0.0.85", "127.0.0.86", "127.0.0.87"
SECRET = "component-secret-for-tests"
chatBothWays = partial(chat.chatBothWays, HOME_IP)
bounceFor = partial(chat.bounceFor, HOME_IP)


def gatewayToml(cafile, certfile, nameserver, secure_auth=False, extra_s2s=""):
    return f"""
local_domains = ["home.test"]
[component]
jid = "s2s.home.test"
host = "{HOME_IP}"
secret = "{SECRET}"
max_retry_delay = 2
[s2s]
listen = ["tcp:5269:interface={GATEWAY_IP}"]
direct_tls_listen = ["tcp:5270:interface={GATEWAY_IP}"]
use_starttls = "required"
certfile = "{certfile}"
cafile = "{cafile}"
secure_auth = {"true" if secure_auth else "false"}
shared = "dialback-secret-for-tests"
max_retry_delay = 1
{extra_s2s}
[s2s.dns]
nameservers = ["{nameserver}"]
timeout = 2
retries = 1
[s2s.outgoing]
connection_timeout = 3
[admin]
listen = ""
"""


class StrippingPeer(Protocol):
    """A server for strip.test that never offers STARTTLS, and records what it gets."""

    received = b""

    def connectionMade(self):
        self.factory.peers.append(self)

    def dataReceived(self, data):
        self.received += data
        if b"<stream:stream" in data:
            self.transport.write(
                b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
                b" xmlns:db='jabber:server:dialback' id='strip1' from='strip.test' version='1.0'>"
                b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("secure")
    started = []
    ca = TestCA(base / "ca")
    home = ca.issue("home.test", dns=["home.test"], srv=["home.test"])
    dns = TestDNS(base / "dns", ip=pick_dns_ip())
    dns.add_srv("_xmpp-server._tcp.home.test", "gw.home.test", 5269)
    dns.add_srv("_xmpps-server._tcp.home.test", "gw.home.test", 5270)
    dns.add_host("gw.home.test", GATEWAY_IP)
    for name, ip in (("secure.test", SECURE_IP), ("ejsecure.test", EJABBERD_IP),
                     ("untrusted.test", BAD_IP), ("mismatch.test", BAD_IP),
                     ("expired.test", BAD_IP), ("plain.test", PLAIN_IP),
                     ("strip.test", STRIP_IP)):
        dns.add_host(name, ip)
    dns.add_srv("_xmpps-server._tcp.direct.test", "tls.direct.test", 5270)
    dns.add_no_service("_xmpp-server._tcp.direct.test")
    dns.add_host("tls.direct.test", DIRECT_IP)
    dns.start()
    started.append(dns)
    stripListener = None
    try:
        servers = dict(
            home=Prosody(base, "home", HOME_IP, hosts=["home.test"],
                         users=[("alice@home.test", "alicepw")],
                         components={"s2s.home.test": SECRET}, route_to="s2s.home.test"),
            secure=Prosody(base, "secure", SECURE_IP, hosts=["secure.test"],
                           users=[("bob@secure.test", "bobpw")], dns=dns,
                           tls={"cafile": ca.cafile,
                                "certs": {"secure.test": ca.issue("secure.test", dns=["secure.test"])},
                                "secure_auth": True, "require_encryption": True}),
            bad=Prosody(base, "bad", BAD_IP, hosts=["untrusted.test", "mismatch.test", "expired.test"],
                        users=[("ursula@untrusted.test", "pw"), ("mo@mismatch.test", "pw"),
                               ("ed@expired.test", "pw")], dns=dns,
                        tls={"cafile": ca.cafile, "secure_auth": False,
                             "require_encryption": True,
                             "certs": {"untrusted.test": ca.issue("untrusted.test", dns=["untrusted.test"],
                                                                  untrusted=True),
                                       "mismatch.test": ca.issue("mismatch.test", dns=["other.test"]),
                                       "expired.test": ca.issue("expired.test", dns=["expired.test"],
                                                                expired=True)}}),
            plain=Prosody(base, "plain", PLAIN_IP, hosts=["plain.test"],
                          users=[("pat@plain.test", "pw")], dns=dns),
            direct=Prosody(base, "direct", DIRECT_IP, hosts=["direct.test"],
                           users=[("dora@direct.test", "pw")], dns=dns,
                           tls={"cafile": ca.cafile,
                                "certs": {"direct.test": ca.issue("direct.test", dns=["direct.test"])},
                                "secure_auth": True, "require_encryption": True,
                                "direct_tls_port": 5270}),
            ejabberd=Ejabberd(base, "ejabberd", EJABBERD_IP, host="ejsecure.test",
                              users=[("carol@ejsecure.test", "carolpw")], dns=dns,
                              s2s_use_starttls="required",
                              certfile=ca.issue("ejsecure.test", dns=["ejsecure.test"])[0],
                              cafile=ca.cafile),
        )
        for server in servers.values():
            server.start()
            started.append(server)
        strip = Factory.forProtocol(StrippingPeer)
        strip.peers = []
        stripListener = pytest_twisted.blockon(
            TCP4ServerEndpoint(reactor, 5269, interface=STRIP_IP).listen(strip))
        configPath = base / "s2sgate.toml"
        nameserver = "{}:{}".format(*dns.nameservers[0])
        configPath.write_text(gatewayToml(ca.cafile, home[0], nameserver))
        captured = []
        globalLogPublisher.addObserver(captured.append)
        gateway = GatewayService(load_config(configPath), reactor, handleSignals=True)
        gateway.startService()
        pytest_twisted.blockon(gateway.link.whenUp())
        yield dict(ca=ca, dns=dns, gateway=gateway, strip=strip, configPath=configPath,
                   nameserver=nameserver, homeCert=home, logs=captured, **servers)
        globalLogPublisher.removeObserver(captured.append)
        pytest_twisted.blockon(gateway.stopService())
    finally:
        if stripListener is not None:
            stripListener.stopListening()
        for server in reversed(started):
            server.stop()
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def outboundStream(lab, remote):
    link = lab["gateway"].pool.links.get(("home.test", remote))
    return link.stream if link is not None else None


def inboundStreams(lab, remote):
    return [s for s in lab["gateway"].sessionTable.streams("in") if any(r == remote for r, _ in s.pairs)]


async def reloadWith(lab, secure_auth):
    """Rewrite the config file and send SIGHUP, as an operator would; drop old streams."""
    lab["configPath"].write_text(gatewayToml(lab["ca"].cafile, lab["homeCert"][0],
                                             lab["nameserver"], secure_auth=secure_auth))
    gateway = lab["gateway"]
    gateway.pool.closeAll()
    gateway.pool.links.clear()
    for stream in gateway.sessionTable.streams("in"):
        stream.closeStream(wait=0.1)
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: gateway.config.s2s.secure_auth == secure_auth)
    assert gateway.config.s2s.secure_auth == secure_auth


@pytest_twisted.ensureDeferred
async def test_starttls_and_sasl_external_both_ways_with_a_secure_prosody(lab):
    await chatBothWays("bob@secure.test", "bobpw", SECURE_IP, "secure")
    out = outboundStream(lab, "secure.test")
    assert out.secure and out.authMethod == "sasl-external"
    assert out.certificate.status == "valid"
    assert out.tlsInfo["version"] in ("TLSv1.2", "TLSv1.3")
    [inbound] = inboundStreams(lab, "secure.test")
    assert inbound.secure and inbound.authMethod == "sasl-external"


@pytest_twisted.ensureDeferred
async def test_starttls_and_sasl_external_both_ways_with_ejabberd(lab):
    await chatBothWays("carol@ejsecure.test", "carolpw", EJABBERD_IP, "ejabberd")
    out = outboundStream(lab, "ejsecure.test")
    assert out.secure and out.authMethod == "sasl-external"
    [inbound] = inboundStreams(lab, "ejsecure.test")
    assert inbound.secure and inbound.authMethod in ("sasl-external", "dialback-without-dialback")



def test_check_of_the_ejabberd_peer_runs_the_gateways_steps_to_a_verdict(lab):
    """`s2sgate check` against real ejabberd (issue 9: check on the gateway's own steps)."""
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "s2sgate", "check", "--timeout", "5",
                        "ejsecure.test", "--config", str(lab["configPath"]), "--json"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    doc = json.loads(r.stdout)
    steps = {step["name"]: step for step in doc["steps"]}
    assert r.returncode == 0 and doc["verdict"]["ok"] is True, r.stdout + r.stderr
    assert steps["tls"]["status"] == "ok" and steps["tls"]["summary"].startswith("STARTTLS")
    assert steps["certificate"]["data"]["status"] == "valid"
    assert steps["certificate"]["data"]["dns"] == ["ejsecure.test"]
    assert steps["stream"]["data"]["features"]["starttls"] is True
    assert steps["authentication"]["data"]["after_tls"] is True

@pytest_twisted.ensureDeferred
async def test_direct_tls_to_a_prosody_via_xmpps_server(lab):
    await chatBothWays("dora@direct.test", "pw", DIRECT_IP, "direct")
    out = outboundStream(lab, "direct.test")
    assert out.directTLS and out.secure
    assert out.authMethod == "sasl-external"


@pytest_twisted.ensureDeferred
async def test_dialback_over_tls_with_an_untrusted_certificate_when_policy_allows(lab):
    await chatBothWays("ursula@untrusted.test", "pw", BAD_IP, "untrusted")
    # Its certificate cannot authenticate it to us: it came in with dialback, over TLS.
    [inbound] = inboundStreams(lab, "untrusted.test")
    assert inbound.secure and inbound.authMethod == "dialback"
    assert inbound.certificates["untrusted.test"].status == "untrusted"
    out = outboundStream(lab, "untrusted.test")
    assert out.secure and out.certificate.status == "untrusted"


@pytest_twisted.ensureDeferred
async def test_peer_without_tls_is_refused_under_required(lab):
    bounce = await bounceFor("pat@plain.test", "plain")
    assert conditionOf(bounce) == "remote-server-not-found"
    assert "STARTTLS" in textOf(bounce)


@pytest_twisted.ensureDeferred
async def test_peer_stripping_starttls_cannot_make_us_send_plaintext(lab):
    bounce = await bounceFor("sam@strip.test", "strip")
    assert conditionOf(bounce) == "remote-server-not-found"
    assert "STARTTLS" in textOf(bounce)
    received = b"".join(p.received for p in lab["strip"].peers)
    assert lab["strip"].peers, "the gateway never connected to the stripping peer"
    assert b"<message" not in received and b"db:result" not in received


@pytest_twisted.ensureDeferred
async def test_secure_auth_refuses_bad_certificates_with_the_reason(lab):
    await reloadWith(lab, secure_auth=True)
    try:
        for to, words in (("ursula@untrusted.test", "trusted CA"),
                          ("mo@mismatch.test", "other.test"),
                          ("ed@expired.test", "expired")):
            bounce = await bounceFor(to, "bad-" + to.split("@")[1])
            assert conditionOf(bounce) == "remote-server-not-found", bounce.toXml()
            assert words in textOf(bounce), textOf(bounce)
        # The secure peer still works under the stricter policy.
        await chatBothWays("bob@secure.test", "bobpw", SECURE_IP, "secure-again")
    finally:
        await reloadWith(lab, secure_auth=False)


@pytest_twisted.ensureDeferred
async def test_sighup_with_a_new_certificate_applies_to_new_streams_only(lab):
    await chatBothWays("bob@secure.test", "bobpw", SECURE_IP, "before-renewal")
    established = outboundStream(lab, "secure.test")
    certfile = lab["homeCert"][0]
    oldPem = open(certfile).read()
    renewed = lab["ca"].issue("home.test", dns=["home.test"], srv=["home.test"])
    open(certfile, "w").write(open(renewed[0]).read())
    try:
        expected = ssl.PEM_cert_to_DER_cert(open(renewed[0]).read().split("-----END CERTIFICATE-----")[0]
                                            + "-----END CERTIFICATE-----\n")
        os.kill(os.getpid(), signal.SIGHUP)
        served = None
        deadline = time.monotonic() + 20
        while served != expected and time.monotonic() < deadline:
            # New connections get the new certificate once the reload is done.
            served = await deferToThreadCertificate(GATEWAY_IP, 5270, "home.test")
            if served != expected:
                await task.deferLater(reactor, 0.05)
        assert served == expected
        assert outboundStream(lab, "secure.test") is established and not established.closed
        await chatBothWays("bob@secure.test", "bobpw", SECURE_IP, "after-renewal")
    finally:
        open(certfile, "w").write(oldPem)


def deferToThreadCertificate(ip, port, servername):
    from twisted.internet.threads import deferToThread

    def fetch():
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["xmpp-server"])
        with socket.create_connection((ip, port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=servername) as tls:
                return tls.getpeercert(binary_form=True)

    return deferToThread(fetch)


@pytest_twisted.ensureDeferred
async def test_sessions_show_how_each_link_is_secured(lab):
    await chatBothWays("bob@secure.test", "bobpw", SECURE_IP, "sessions")
    sessions = lab["gateway"].sessions()
    out = [s for s in sessions if s["direction"] == "out" and s["remote"] == "secure.test"]
    assert out and out[0]["auth"] == "sasl-external"
    # Prosody looks up _xmpps-server first: it came in over our direct TLS listener.
    inbound = [s for s in sessions if s["direction"] == "in" and s["remote"] == "secure.test"]
    assert inbound and inbound[0]["direct_tls"] and inbound[0]["tls"]
    assert out[0]["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert out[0]["certificate"]["status"] == "valid"
    assert out[0]["stanzas_out"] >= 1


@pytest_twisted.ensureDeferred
async def test_failed_attempt_keeps_its_step_by_step_log(lab):
    await bounceFor("pat@plain.test", "plain-log")
    [failure] = [f for f in lab["gateway"].failureLog() if f["remote"] == "plain.test"][:1]
    steps = [(s["step"], s["ok"]) for s in failure["steps"]]
    assert ("connect", True) in steps
    assert steps[-1] == ("tls", False)
    assert "STARTTLS" in failure["text"]


@pytest_twisted.ensureDeferred
async def test_sighup_applies_a_new_host_policy(lab):
    await chatBothWays("carol@ejsecure.test", "carolpw", EJABBERD_IP, "before-deny")
    path, gateway = lab["configPath"], lab["gateway"]
    original = path.read_text()
    path.write_text(gatewayToml(lab["ca"].cafile, lab["homeCert"][0], lab["nameserver"],
                                extra_s2s='host_policy = [ { host = "ejsecure.test", policy = "deny" } ]'))
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: gateway.config.s2s.host_policy)
        bounce = await bounceFor("carol@ejsecure.test", "after-deny")
        assert conditionOf(bounce) == "not-allowed"
        assert "policy" in textOf(bounce)
    finally:
        path.write_text(original)
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: not gateway.config.s2s.host_policy)
    assert not gateway.config.s2s.host_policy


def test_no_secret_reaches_the_log(lab):
    """Everything logged during the module, every field included."""
    secrets = [SECRET, "dialback-secret-for-tests"]
    key = open(lab["homeCert"][0]).read().split("PRIVATE KEY-----")[1][:60].strip()
    text = "\n".join(formatEvent(e) + repr(sorted(e.items(), key=lambda kv: kv[0]))
                     for e in lab["logs"])
    assert len(lab["logs"]) > 50
    for secret in secrets + [key]:
        assert secret not in text
