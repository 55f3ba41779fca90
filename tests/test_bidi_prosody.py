"""
Bidirectional s2s (XEP-0288) against real Prosody 0.12 with mod_s2s_bidi.

  alice@home.test ─ Prosody (127.0.11.10) ─ component ─ s2sgate 127.0.11.11:5269
      ─ bidi.test, back.test   Prosody + mod_s2s_bidi, certificates (127.0.11.12), DNS 127.0.11.53
      ─ nat.test               Prosody + mod_s2s_bidi, certificates (127.0.11.13), DNS 127.0.11.54,
                               where home.test's SRV points at 127.0.11.14: nothing listens there

Both sides authenticate by certificate (SASL EXTERNAL, s2s_secure_auth):
no dialback, so no connection back to us is ever needed.
"""

import signal
from functools import partial

import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from s2sgate.config import load_config
from s2sgate.gateway.service import GatewayService
from tests.lab import chat
from tests.lab.certs import TestCA
from tests.lab.chat import conditionOf, isMessage, login, message
from tests.lab.dns import TestDNS
from tests.lab.prosody import Prosody

pytestmark = pytest.mark.servers

HOME_IP, GATEWAY_IP, PEER_IP, NAT_IP, NOWHERE_IP = (
    "127.0.11.10", "127.0.11.11", "127.0.11.12", "127.0.11.13", "127.0.11.14")
DNS_IP, NAT_DNS_IP = "127.0.11.53", "127.0.11.54"
SECRET = "component-secret-for-bidi-tests"
chatBothWays = partial(chat.chatBothWays, HOME_IP)


def gatewayToml(cafile, certfile, nameserver):
    return f"""
local_domains = ["home.test"]
[component]
jid = "s2s.home.test"
host = "{HOME_IP}"
secret = "{SECRET}"
[s2s]
listen = ["tcp:5269:interface={GATEWAY_IP}"]
use_starttls = "required"
certfile = "{certfile}"
cafile = "{cafile}"
secure_auth = true
shared = "dialback-secret-for-bidi-tests"
max_retry_delay = 1
[s2s.dns]
nameservers = ["{nameserver}"]
timeout = 2
retries = 1
[s2s.outgoing]
connection_timeout = 3
[admin]
listen = ""
"""


def peerTLS(ca, *hosts):
    return {"cafile": ca.cafile, "secure_auth": True, "require_encryption": True,
            "certs": {h: ca.issue(h, dns=[h]) for h in hosts}}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("bidi")
    started = []
    ca = TestCA(base / "ca")
    home = ca.issue("home.test", dns=["home.test"], srv=["home.test"])
    dns = TestDNS(base / "dns", ip=DNS_IP, fallback=False)
    dns.add_srv("_xmpp-server._tcp.home.test", "gw.home.test", 5269)
    dns.add_host("gw.home.test", GATEWAY_IP)
    for name in ("bidi.test", "back.test"):
        dns.add_host(name, PEER_IP)
    dns.add_host("nat.test", NAT_IP)
    # What nat.test sees: our SRV names an address where nothing listens (NAT, no forward).
    natDns = TestDNS(base / "natdns", ip=NAT_DNS_IP, fallback=False)
    natDns.add_srv("_xmpp-server._tcp.home.test", "gw.home.test", 5269)
    natDns.add_host("gw.home.test", NOWHERE_IP)
    try:
        for d in (dns, natDns):
            d.start()
            started.append(d)
        servers = dict(
            home=Prosody(base, "home", HOME_IP, hosts=["home.test"],
                         users=[("alice@home.test", "alicepw")],
                         components={"s2s.home.test": SECRET}, route_to="s2s.home.test"),
            peer=Prosody(base, "peer", PEER_IP, hosts=["bidi.test", "back.test"],
                         users=[("bob@bidi.test", "bobpw"), ("bea@back.test", "beapw")],
                         dns=dns, bidi=True, tls=peerTLS(ca, "bidi.test", "back.test")),
            nat=Prosody(base, "nat", NAT_IP, hosts=["nat.test"],
                        users=[("carol@nat.test", "carolpw")], dns=natDns, bidi=True,
                        tls=peerTLS(ca, "nat.test")),
        )
        for server in servers.values():
            server.start()
            started.append(server)
        configPath = base / "s2sgate.toml"
        configPath.write_text(gatewayToml(ca.cafile, home[0], f"{DNS_IP}:53"))
        events = []
        globalLogPublisher.addObserver(events.append)
        from twisted.internet import reactor
        gateway = GatewayService(load_config(configPath), reactor)
        gateway.startService()
        pytest_twisted.blockon(gateway.link.whenUp())
        yield dict(gateway=gateway, events=events, **servers)
        globalLogPublisher.removeObserver(events.append)
        pytest_twisted.blockon(gateway.stopService())
    finally:
        for server in reversed(started):
            server.stop()
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def logged(lab, event, remote):
    return [e for e in lab["events"] if e.get("event") == event and e.get("remote") == remote]


def outboundStream(lab, remote):
    return lab["gateway"].sessionTable.outgoing("home.test", remote)


@pytest_twisted.ensureDeferred
async def test_the_peers_reply_comes_back_over_the_stream_we_opened(lab):
    await chatBothWays("bob@bidi.test", "bobpw", PEER_IP, "bidi")
    stream = outboundStream(lab, "bidi.test")
    assert stream.direction == "out" and stream.bidi
    assert stream.authMethod == "sasl-external"
    assert stream.stanzasIn >= 1 and stream.stanzasOut >= 1
    # No stream from bidi.test was ever accepted: not now, not closed since.
    assert logged(lab, "inbound.established", "bidi.test") == []
    assert [s for s in lab["gateway"].sessionTable.streams("in")
            if s.peer == "bidi.test"] == []
    # Prosody's view agrees: one session with home.test, used both ways.
    rows = [r for r in lab["peer"].s2s_sessions() if r["remote"] == "home.test"
            and r["host"] == "bidi.test"]
    assert [r["dir"] for r in rows] == ["<->"], lab["peer"].s2s_show()
    [info] = [s for s in lab["gateway"].sessions() if s["remote"] == "bidi.test"]
    assert info["bidi"] and info["direction"] == "out" and info["stanzas_in"] >= 1


@pytest_twisted.ensureDeferred
async def test_our_reply_goes_over_the_stream_the_peer_opened(lab):
    bea = await login("bea@back.test", "beapw", PEER_IP)
    alice = await login("alice@home.test", "alicepw", HOME_IP)
    try:
        bea.send(message("alice@home.test", "back-in", "you first"))
        got = await alice.wait_for(isMessage("back-in"), timeout=20)
        chat.assertDelivered(got, bea.jid.full(), "alice@home.test", "you first")
        alice.send(message("bea@back.test", "back-out", "over your stream"))
        got = await bea.wait_for(isMessage("back-out"), timeout=20)
        chat.assertDelivered(got, alice.jid.full(), "bea@back.test", "over your stream")
    finally:
        await alice.disconnect()
        await bea.disconnect()
    [stream] = [s for s in lab["gateway"].sessionTable.streams("in") if s.peer == "back.test"]
    assert stream.bidi and stream.stanzasIn >= 1 and stream.stanzasOut >= 1
    assert lab["gateway"].sessionTable.outgoing("home.test", "back.test") is stream
    # We never connected to back.test.
    assert logged(lab, "outbound.connecting", "back.test") == []
    rows = [r for r in lab["peer"].s2s_sessions() if r["host"] == "back.test"
            and r["remote"] == "home.test"]
    assert [r["dir"] for r in rows] == ["<->"], lab["peer"].s2s_show()


@pytest_twisted.ensureDeferred
async def test_behind_nat_messages_flow_both_ways_over_our_stream(lab):
    carol = await login("carol@nat.test", "carolpw", NAT_IP)
    alice = await login("alice@home.test", "alicepw", HOME_IP)
    try:
        # The NAT is real: nat.test cannot reach us by itself.
        carol.send(message("alice@home.test", "nat-first", "anyone there?"))
        bounce = await carol.wait_for(isMessage("nat-first"), timeout=30)
        assert bounce.getAttribute("type") == "error"
        assert conditionOf(bounce) in ("remote-server-not-found", "remote-server-timeout")
        # Once we opened a stream, it carries both ways.
        for n in range(2):
            alice.send(message("carol@nat.test", f"nat-out-{n}", f"out {n}"))
            got = await carol.wait_for(isMessage(f"nat-out-{n}"), timeout=20)
            chat.assertDelivered(got, alice.jid.full(), "carol@nat.test", f"out {n}")
            carol.send(message("alice@home.test", f"nat-in-{n}", f"in {n}"))
            got = await alice.wait_for(isMessage(f"nat-in-{n}"), timeout=20)
            chat.assertDelivered(got, carol.jid.full(), "alice@home.test", f"in {n}")
    finally:
        await alice.disconnect()
        await carol.disconnect()
    stream = outboundStream(lab, "nat.test")
    assert stream.bidi and stream.authMethod == "sasl-external" and stream.stanzasIn >= 2
    assert logged(lab, "inbound.established", "nat.test") == []
