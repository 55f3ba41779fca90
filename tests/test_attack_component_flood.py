"""
One remote peer floods the component link (issue 10, item 4), against a running gateway.

  flooding s2s peer (this test, a thread; SASL EXTERNAL as flood.test)
      ─ s2s ─ s2sgate (twistd, 127.0.4.13)
      ─ XEP-0114 ─ c2s stand-in (this test's reactor, 127.0.4.12) that stops reading

The peer writes ~30 MiB of large stanzas while the c2s server reads nothing, then the
c2s server reads again. Before the fix the gateway wrote them all into the link, hit
the 16 MiB "peer stopped reading" rule, aborted the link and lost what was in it.
Now the link stays up: the gateway stops reading the peer past high_water, and every
stanza arrives, in order.
"""

import re
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from s2sgate.demo.c2s import C2SStandIn
from tests.lab.certs import TestCA
from tests.lab.dns import TestDNS
from tests.lab.gateway import GatewayProcess
from tests.lab.s2speer import S2SPeer

pytestmark = pytest.mark.servers

DNS_IP, C2S_IP, GATEWAY_IP = "127.0.4.11", "127.0.4.12", "127.0.4.13"
COMPONENT, SECRET = "s2s.home.test", "component-secret-for-tests"
STANZAS, BODY = 300, 100 * 1024          # ~30 MiB: well past the old 16 MiB rule
PAUSE = 6                                # seconds the c2s server reads nothing


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("component-flood")
    ca = TestCA(base / "ca")
    home = C2SStandIn("home", ["home.test"], COMPONENT, SECRET)
    alice = home.addUser("alice@home.test")
    arrived = []
    alice.onStanza = lambda s: arrived.append(s.getAttribute("id"))
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
            "s2s": {"use_starttls": "required_trusted",
                    "certfile": str(ca.issue("home.test", dns=["home.test"])[0]),
                    "cafile": str(ca.cafile),
                    "dns": {"nameservers": [f"{DNS_IP}:53"], "timeout": 2, "retries": 0}},
        }, dns)
        gateway.start()
        started.append(gateway)
        yield {"gateway": gateway, "home": home, "arrived": arrived,
               "leaf": ca.issue("flood.test", dns=["flood.test"])[0], "ca": ca}
    finally:
        for proc in reversed(started):
            proc.stop()
        pytest_twisted.blockon(home.stop() or task.deferLater(reactor, 0))


async def until(predicate, what, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what() if callable(what) else what}: not within {timeout}s")
        await task.deferLater(reactor, 0.05)


def flood(lab):
    """Blocking: authenticate as flood.test, write every stanza, close."""
    peer = S2SPeer(GATEWAY_IP, 5269, "flood.test", "home.test", timeout=120)
    try:
        peer.starttls(lab["leaf"], lab["ca"].cafile)
        assert b"<success" in peer.sasl_external("flood.test")
        peer.header()
        body = "x" * BODY
        started = time.monotonic()
        for i in range(STANZAS):
            peer.send(f"<message from='bob@flood.test/x' to='alice@home.test' type='chat' "
                      f"id='f{i}'><body>{body}</body></message>")
        return time.monotonic() - started
    finally:
        time.sleep(0.5)
        peer.close()


@pytest_twisted.ensureDeferred
async def test_a_flood_at_a_slow_c2s_server_keeps_the_link_and_delivers_every_stanza(lab):
    gateway, home = lab["gateway"], lab["home"]
    await until(lambda: gateway.link()["state"] == "up" and home.componentConnected,
                "component link up", 20)
    link = home.router.routes[COMPONENT]
    link.transport.pauseProducing()                  # the c2s server stops reading
    flooding = threads.deferToThread(flood, lab)
    await task.deferLater(reactor, PAUSE)
    paused = gateway.link()
    link.transport.resumeProducing()                 # and reads again
    seconds = await flooding
    await until(lambda: len(lab["arrived"]) >= STANZAS,
                lambda: f"{STANZAS} stanzas at alice (arrived {len(lab['arrived'])}); gateway: "
                        + " | ".join(re.findall(r"component link down[^\n]*|[^\n]*stopped "
                                                r"reading[^\n]*", gateway.log_text())),
                60)

    log = gateway.log_text()
    print(f"\nflood: {STANZAS} x {BODY} B written in {seconds:.1f} s; link during the "
          f"pause: {paused}; arrived {len(lab['arrived'])}")
    assert lab["arrived"] == [f"f{i}" for i in range(STANZAS)]   # all, once, in order
    assert paused["state"] == "up" and paused["inbound_paused"] is True
    assert "component link down" not in log
    assert "stopped reading" not in log
    assert re.search(r"reading from \d+ inbound streams paused", log)
    after = gateway.link()
    assert after["state"] == "up" and after["inbound_paused"] is False
    assert home.componentConnected and home.router.routes[COMPONENT] is link  # same link
