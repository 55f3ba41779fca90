"""
Federation over plain TCP with Server Dialback, against real Prosody and
ejabberd servers from Debian's packages (issue: federation).

  alice@home.test ─ Prosody (127.0.0.30) ─ component ─ s2sgate (127.0.0.31:5269)
      ─ s2s ─ Prosody peer prosody.test, denied.test (127.0.0.32, A record only)
            ─ Prosody peer srvonly.test (127.0.0.34:5299, SRV only, no A of its own)
            ─ ejabberd peer ejabberd.test (127.0.0.33, SRV)

Every process resolves through the test DNS only.
"""

import itertools
from functools import partial

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from s2sgate.config import parse_config
from s2sgate.gateway.service import GatewayService
from tests.lab import chat
from tests.lab.chat import (
    assertBounce,
    assertDelivered,
    conditionOf,
    isMessage,
    login,
    marker,
    message,
    textOf,
)
from tests.lab.dns import TestDNS, pick_dns_ip
from tests.lab.ejabberd import Ejabberd
from tests.lab.prosody import Prosody
from tests.rawpeer import HEADER, converse

pytestmark = pytest.mark.servers

HOME_IP, GATEWAY_IP = "127.0.0.30", "127.0.0.31"
PEER_IP, EJABBERD_IP, SRVONLY_IP = "127.0.0.32", "127.0.0.33", "127.0.0.34"
SECRET = "component-secret-for-tests"
RESOURCES = (f"r{i}" for i in itertools.count())
chatBothWays = partial(chat.chatBothWays, HOME_IP)
bounceFor = partial(chat.bounceFor, HOME_IP)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("federation")
    started = []
    dns = TestDNS(base / "dns", ip=pick_dns_ip())
    dns.add_srv("_xmpp-server._tcp.home.test", "gw.home.test", 5269)
    dns.add_host("gw.home.test", GATEWAY_IP)
    dns.add_host("prosody.test", PEER_IP)            # A record, no SRV
    dns.add_host("denied.test", PEER_IP)
    dns.add_srv("_xmpp-server._tcp.srvonly.test", "node7.hosting.test", 5299)
    dns.add_host("node7.hosting.test", SRVONLY_IP)   # srvonly.test itself has no A
    dns.add_srv("_xmpp-server._tcp.ejabberd.test", "ejabberd.test", 5269)
    dns.add_host("ejabberd.test", EJABBERD_IP)
    dns.add_no_service("_xmpp-server._tcp.noservice.test")
    dns.start()
    started.append(dns)
    try:
        home = Prosody(base, "home", HOME_IP, hosts=["home.test"],
                       users=[("alice@home.test", "alicepw")],
                       components={"s2s.home.test": SECRET}, route_to="s2s.home.test")
        peer = Prosody(base, "peer", PEER_IP, hosts=["prosody.test", "denied.test"],
                       users=[("bob@prosody.test", "bobpw"), ("eve@denied.test", "evepw")],
                       dns=dns)
        srvonly = Prosody(base, "srvonly", SRVONLY_IP, hosts=["srvonly.test"],
                          users=[("dave@srvonly.test", "davepw")], dns=dns, s2s_port=5299)
        ejabberd = Ejabberd(base, "ejabberd", EJABBERD_IP, host="ejabberd.test",
                            users=[("carol@ejabberd.test", "carolpw")], dns=dns)
        for server in (home, peer, srvonly, ejabberd):
            server.start()
            started.append(server)
        config = parse_config({
            "local_domains": ["home.test"],
            "component": {"jid": "s2s.home.test", "host": HOME_IP, "port": 5347,
                          "secret": SECRET, "max_retry_delay": 2},
            "admin": {"listen": ""},
            "s2s": {"listen": [f"tcp:5269:interface={GATEWAY_IP}"], "use_starttls": "false",
                    "shared": "dialback-secret-for-tests", "max_retry_delay": 2,
                    "host_policy": [{"host": "denied.test", "policy": "deny"}],
                    "dns": {"nameservers": [f"{ip}:{port}" for ip, port in dns.nameservers],
                            "timeout": 2, "retries": 1},
                    "outgoing": {"connection_timeout": 3}},
        }, "test-federation.toml")
        gateway = GatewayService(config, reactor)
        gateway.startService()
        pytest_twisted.blockon(gateway.link.whenUp())
        yield dict(dns=dns, home=home, peer=peer, srvonly=srvonly, ejabberd=ejabberd,
                   gateway=gateway)
        pytest_twisted.blockon(gateway.stopService())
    finally:
        for server in reversed(started):
            server.stop()


async def rosterSubscription(client, jid):
    """The subscription state of C{jid} in the client's roster (the server's word)."""
    queryId = f"roster-{next(RESOURCES)}"
    client.send(f"<iq xmlns='jabber:client' type='get' id='{queryId}'>"
                "<query xmlns='jabber:iq:roster'/></iq>")
    result = await client.wait_for(lambda e: e.name == "iq" and e.getAttribute("id") == queryId)
    for item in result.query.elements():
        if item.getAttribute("jid") == jid:
            return item.getAttribute("subscription")
    return None


async def subscribeBothWays(remoteJid, password, ip):
    alice = await login("alice@home.test", "alicepw", HOME_IP)
    remote = await login(remoteJid, password, ip)
    try:
        for a, b, bJid, aJid in ((alice, remote, remoteJid, "alice@home.test"),
                                 (remote, alice, "alice@home.test", remoteJid)):
            a.send(f"<presence xmlns='jabber:client' to='{bJid}' type='subscribe'/>")
            await b.wait_for(lambda e: e.name == "presence" and e.getAttribute("type") == "subscribe"
                             and e["from"].startswith(aJid), timeout=20)
            b.send(f"<presence xmlns='jabber:client' to='{aJid}' type='subscribed'/>")
            # The subscriber's server records the approval and then sends
            # the contact's presence: wait for that, then ask the roster.
            await a.wait_for(lambda e: e.name == "presence" and e.getAttribute("type") is None
                             and e["from"].startswith(bJid), timeout=20)
        assert await rosterSubscription(alice, remoteJid) == "both"
        assert await rosterSubscription(remote, "alice@home.test") == "both"
    finally:
        await alice.disconnect()
        await remote.disconnect()


@pytest_twisted.ensureDeferred
async def test_messages_both_ways_with_a_prosody_peer(lab):
    await chatBothWays("bob@prosody.test", "bobpw", PEER_IP, "prosody")


@pytest_twisted.ensureDeferred
async def test_presence_subscription_both_ways_with_a_prosody_peer(lab):
    await subscribeBothWays("bob@prosody.test", "bobpw", PEER_IP)


@pytest_twisted.ensureDeferred
async def test_messages_both_ways_with_an_ejabberd_peer(lab):
    await chatBothWays("carol@ejabberd.test", "carolpw", EJABBERD_IP, "ejabberd")


@pytest_twisted.ensureDeferred
async def test_presence_subscription_both_ways_with_an_ejabberd_peer(lab):
    await subscribeBothWays("carol@ejabberd.test", "carolpw", EJABBERD_IP)


@pytest_twisted.ensureDeferred
async def test_peer_reached_only_through_srv_on_a_non_default_port(lab):
    await chatBothWays("dave@srvonly.test", "davepw", SRVONLY_IP, "srvonly")


@pytest_twisted.ensureDeferred
async def test_domain_that_does_not_resolve_is_bounced_remote_server_not_found(lab):
    bounce = await bounceFor("x@nowhere.test", "nx")
    assert bounce["type"] == "error"
    assert conditionOf(bounce) == "remote-server-not-found"
    assert "nowhere.test" in str(bounce.error.text)


@pytest_twisted.ensureDeferred
async def test_domain_whose_srv_is_dot_is_bounced_remote_server_not_found(lab):
    bounce = await bounceFor("x@noservice.test", "dot")
    assert conditionOf(bounce) == "remote-server-not-found"
    assert "SRV" in str(bounce.error.text) or "service" in str(bounce.error.text)


@pytest_twisted.ensureDeferred
async def test_host_policy_deny_refuses_outbound_with_not_allowed(lab):
    bounce = await bounceFor("eve@denied.test", "deny-out")
    assert conditionOf(bounce) == "not-allowed"
    assert "policy" in str(bounce.error.text)


@pytest_twisted.ensureDeferred
async def test_host_policy_deny_refuses_inbound_and_nothing_reaches_alice(lab):
    alice = await login("alice@home.test", "alicepw", HOME_IP)
    eve = await login("eve@denied.test", "evepw", PEER_IP)
    try:
        eve.send(message("alice@home.test", "deny-in"))
        bounce = await eve.wait_for(isMessage("deny-in"), timeout=20)
        # eve's server bounces it (without the payload): the gateway refused
        # its stream with policy-violation, and said why.
        assertBounce(bounce, "alice@home.test", eve.jid.full(), None)
        assert conditionOf(bounce) == "remote-server-timeout"
        assert textOf(bounce) == (
            "Server-to-server connection failed: policy-violation (federation between "
            "home.test and denied.test is not allowed by this server's policy)")
        # A message from an allowed peer, on the path deny-in would have taken
        # (component link, home Prosody), arrives after it would have.
        bob = await login("bob@prosody.test", "bobpw", PEER_IP)
        try:
            await marker(bob, alice, "after-deny-in")
        finally:
            await bob.disconnect()
        assert not [e for e in alice.received if e.getAttribute("id") == "deny-in"]
    finally:
        await alice.disconnect()
        await eve.disconnect()


@pytest_twisted.ensureDeferred
async def test_stopped_peer_gets_later_messages_after_restart_exactly_once(lab):
    gateway, srvonly = lab["gateway"], lab["srvonly"]
    await chatBothWays("dave@srvonly.test", "davepw", SRVONLY_IP, "before-stop")
    srvonly.stop()
    bounce = await bounceFor("dave@srvonly.test", "while-down")
    assert conditionOf(bounce) in ("remote-server-not-found", "remote-server-timeout")
    srvonly.start()
    link = gateway.pool.links[("home.test", "srvonly.test")]
    wait = max(0, link.retryAt - reactor.seconds())
    await task.deferLater(reactor, wait + 0.1)
    alice = await login("alice@home.test", "alicepw", HOME_IP)
    dave = await login("dave@srvonly.test", "davepw", SRVONLY_IP)
    try:
        alice.send(message("dave@srvonly.test", "after-restart", "are you back?"))
        got = await dave.wait_for(isMessage("after-restart"), timeout=20)
        assertDelivered(got, alice.jid.full(), "dave@srvonly.test", "are you back?")
        # A second copy, or a bounce, would come before a later message
        # on the same link.
        await marker(alice, dave, "after-restart-marker")
        assert len([e for e in dave.received if e.getAttribute("id") == "after-restart"]) == 1
        assert not [e for e in alice.received if e.getAttribute("type") == "error"]
    finally:
        await alice.disconnect()
        await dave.disconnect()


@pytest_twisted.ensureDeferred
async def test_forged_from_gets_invalid_from_and_reaches_nobody(lab):
    alice = await login("alice@home.test", "alicepw", HOME_IP)
    try:
        reply = await converse(reactor, GATEWAY_IP, 5269, [
            HEADER.format(sender="evil.test", to="home.test").encode(),
            b"<message from='bob@prosody.test' to='alice@home.test' id='forged'>"
            b"<body>trust me</body></message>",
        ])
        assert ("<stream:error><invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                in reply), reply
        assert reply.rstrip().endswith("</stream:error></stream:stream>"), reply
        # The real bob@prosody.test, through the same gateway and component
        # link, arrives after the forged message would have.
        bob = await login("bob@prosody.test", "bobpw", PEER_IP)
        try:
            await marker(bob, alice, "after-forged")
        finally:
            await bob.disconnect()
        assert not [e for e in alice.received if e.getAttribute("id") == "forged"]
    finally:
        await alice.disconnect()


@pytest_twisted.ensureDeferred
async def test_oversized_stanza_gets_policy_violation(lab):
    limit = lab["gateway"].config.s2s.stanza_size_limit
    reply = await converse(reactor, GATEWAY_IP, 5269, [
        HEADER.format(sender="evil.test", to="home.test").encode(),
        b"<message><body>" + b"x" * (limit + 100000),
    ])
    assert "policy-violation" in reply


@pytest_twisted.ensureDeferred
async def test_doctype_gets_restricted_xml(lab):
    reply = await converse(reactor, GATEWAY_IP, 5269, [
        b"<?xml version='1.0'?><!DOCTYPE lol [<!ENTITY a 'aaaa'>]>",
        HEADER.format(sender="evil.test", to="home.test").encode(),
    ])
    assert "restricted-xml" in reply


@pytest_twisted.ensureDeferred
async def test_stream_to_a_foreign_domain_gets_host_unknown(lab):
    reply = await converse(reactor, GATEWAY_IP, 5269, [
        HEADER.format(sender="evil.test", to="elsewhere.test").encode(),
    ])
    assert "host-unknown" in reply


@pytest_twisted.ensureDeferred
async def test_an_error_from_the_c2s_server_travels_back_to_the_remote_sender(lab):
    # No such user on home.test (and offline storage is off): Prosody answers
    # with an error stanza, which the gateway carries back over s2s.
    bob = await login("bob@prosody.test", "bobpw", PEER_IP)
    try:
        bob.send(message("nobody@home.test", "to-nobody"))
        bounce = await bob.wait_for(isMessage("to-nobody"), timeout=20)
        assert bounce["type"] == "error"
        assert bounce["from"] == "nobody@home.test"
        assert conditionOf(bounce) in ("service-unavailable", "item-not-found",
                                       "recipient-unavailable")
    finally:
        await bob.disconnect()
