"""
Name constraints against a running gateway (issue 10, item 1).

  raw s2s peer (this test, a thread) ─ STARTTLS + SASL EXTERNAL ─ s2sgate (twistd, 127.0.4.3)
      ─ XEP-0114 ─ c2s stand-in with alice@home.test (this test's reactor, 127.0.4.2)

The peer presents a leaf from an intermediate CA that the trusted root constrained
to evil.test, under use_starttls = "required_trusted" + secure_auth. An identity
inside the constraint authenticates and its message reaches alice; the same kind of
identity naming victim.test is refused, and nothing from victim.test reaches alice.
"""

import time
import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from s2sgate.demo.c2s import C2SStandIn
from tests.lab.certs import TestCA
from tests.lab.dns import TestDNS
from tests.lab.gateway import GatewayProcess
from tests.lab.s2speer import PeerClosed, S2SPeer, offers_external

pytestmark = pytest.mark.servers

DNS_IP, C2S_IP, GATEWAY_IP = "127.0.4.1", "127.0.4.2", "127.0.4.3"
COMPONENT, SECRET = "s2s.home.test", "component-secret-for-tests"
KINDS = ("dns", "srv", "xmpp")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("name-constraints")
    ca = TestCA(base / "ca")
    evil = ca.intermediate("evil.test CA", permitted=["evil.test"])
    # The subject CN says evil.test: OpenSSL checks a host-like CN against the
    # constraint too, and the attacker's CA would write one that passes.
    leaves = {(kind, domain): ca.issue(domain, issuer=evil, cn="evil.test",
                                       **{kind: [domain]})[0]
              for kind in KINDS for domain in ("evil.test", "victim.test")}
    home = C2SStandIn("home", ["home.test"], COMPONENT, SECRET)
    alice = home.addUser("alice@home.test")
    home.listen(reactor, 5347, interface=C2S_IP)
    started = []
    try:
        dns = TestDNS(base / "dns", ip=DNS_IP, fallback=False)
        dns.start()
        started.append(dns)
        gateway = GatewayProcess(base / "gateway", GATEWAY_IP, {
            "local_domains": ["home.test"],
            "component": {"jid": COMPONENT, "host": C2S_IP, "port": 5347, "secret": SECRET,
                          "max_retry_delay": 1},
            "s2s": {"use_starttls": "required_trusted", "secure_auth": True,
                    "certfile": str(ca.issue("home.test", dns=["home.test"])[0]),
                    "cafile": str(ca.cafile),
                    "dns": {"nameservers": [f"{DNS_IP}:53"], "timeout": 2, "retries": 0}},
        }, dns)
        gateway.start()
        started.append(gateway)
        yield {"gateway": gateway, "alice": alice, "leaves": leaves, "ca": ca}
    finally:
        for proc in reversed(started):
            proc.stop()
        pytest_twisted.blockon(home.stop() or task.deferLater(reactor, 0))


async def linkUp(gateway, timeout=20):
    deadline = time.monotonic() + timeout
    while gateway.link()["state"] != "up":
        if time.monotonic() > deadline:
            pytest.fail(f"component link not up: {gateway.link()}\n{gateway.log_text()[-3000:]}")
        await task.deferLater(reactor, 0.05)


def attack(lab, kind, domain, body):
    """Blocking: present the leaf naming ``domain`` by ``kind``, claim ``domain`` with SASL
    EXTERNAL, then send alice a message from it whatever the answer was."""
    peer = S2SPeer(GATEWAY_IP, 5269, domain, "home.test")
    try:
        features = peer.starttls(lab["leaves"][(kind, domain)], lab["ca"].cafile)
        try:
            answer = peer.sasl_external(domain)
        except PeerClosed as e:
            answer = str(e).encode()
        if b"<success" in answer:
            peer.header()
        try:
            peer.send(f"<message from='mallory@{domain}/x' to='alice@home.test' type='chat' "
                      f"id='{body}'><body>{body}</body></message>")
        except OSError:
            pass
        return features, answer
    finally:
        time.sleep(0.3)
        peer.close()


async def received(alice, body, wait):
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if any(str(m.body) == body for m in alice.received if m.body is not None):
            return True
        await task.deferLater(reactor, 0.05)
    return False


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_identity_inside_the_constraint_authenticates_and_delivers(lab, kind):
    await linkUp(lab["gateway"])
    body = f"inside-{kind}-{uuid.uuid4().hex[:8]}"
    features, answer = await threads.deferToThread(attack, lab, kind, "evil.test", body)
    assert offers_external(features), features
    assert b"<success" in answer, answer
    assert await received(lab["alice"], body, wait=10)


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_identity_outside_the_constraint_is_refused_and_delivers_nothing(lab, kind):
    await linkUp(lab["gateway"])
    body = f"outside-{kind}-{uuid.uuid4().hex[:8]}"
    features, answer = await threads.deferToThread(attack, lab, kind, "victim.test", body)
    assert not offers_external(features), features
    assert b"<success" not in answer, answer
    assert b"not-authorized" in answer, answer
    assert not await received(lab["alice"], body, wait=2)
    assert "mallory@victim.test" not in " ".join(m.toXml() for m in lab["alice"].received)


def claimAfterClaim(lab, count):
    """Blocking: authenticate evil.test by certificate, then claim domain after domain
    with dialback on the same stream (refused under secure_auth); return the answers."""
    peer = S2SPeer(GATEWAY_IP, 5269, "evil.test", "home.test")
    answers = []
    try:
        peer.starttls(lab["leaves"][("dns", "evil.test")], lab["ca"].cafile)
        assert b"<success" in peer.sasl_external("evil.test")
        peer.header()
        for i in range(count):
            peer.send(f"<db:result xmlns:db='jabber:server:dialback' from='claim{i}.test' "
                      f"to='home.test'>0123456789abcdef</db:result>")
            try:
                answers.append(peer.read_until(
                    rb"<db:result[^>]*type=.error.*?</db:result>|</stream:error>"))
            except (PeerClosed, OSError):
                break
        return answers
    finally:
        peer.close()


@pytest_twisted.ensureDeferred
async def test_a_peer_claiming_domain_after_domain_is_cut_off_after_three_refusals(lab):
    """Issue 10, item 3: each refused claim costs a chain check and a log line; the
    stream ends with policy-violation at the third (s2s.limits.refused_claims)."""
    await linkUp(lab["gateway"])
    answers = await threads.deferToThread(claimAfterClaim, lab, 10)
    # three dialback errors, then the stream error, then nothing: the stream is gone
    assert [b"not-authorized" in a and b"<db:result" in a for a in answers[:3]] == [True] * 3
    assert len(answers) == 4, answers
    assert b"<policy-violation" in answers[3] and b"3 refused claims" in answers[3]
