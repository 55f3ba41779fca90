"""
ejabberd as the c2s server the gateway attaches to (issue 13, part 1).

  alice@home.test ─ ejabberd 23.01 (127.0.0.161), own s2s off, mod_s2sgate
      ─ XEP-0114 ─ s2sgate process (twistd, 127.0.0.162:5269)
      ─ s2s, dialback ─ Prosody peer prosody.test (127.0.0.163), bob

etc/ejabberd/mod_s2sgate.erl is compiled here with erlc and loaded with -pa,
as docs/attach-ejabberd.md tells operators. Every process resolves through
the test DNS (127.0.0.160) only.
"""

import itertools
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests.lab.chat import conditionOf, isMessage, login, message
from tests.lab.dns import TestDNS
from tests.lab.ejabberd import Ejabberd, build_module
from tests.lab.gateway import GatewayProcess
from tests.lab.prosody import Prosody

pytestmark = pytest.mark.servers

DNS_IP, HOME_IP, GATEWAY_IP, PEER_IP = "127.0.0.160", "127.0.0.161", "127.0.0.162", "127.0.0.163"
COMPONENT = "s2s.home.test"
SECRET = "component-secret-for-tests"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
MODULE_SOURCE = Path(__file__).resolve().parents[1] / "etc" / "ejabberd" / "mod_s2sgate.erl"
IDS = (f"e{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("attach-ejabberd")
    beam = build_module(MODULE_SOURCE, base / "build")
    started = []
    try:
        dns = TestDNS(base / "dns", ip=DNS_IP, fallback=False)
        dns.add_srv("_xmpp-server._tcp.home.test", "gw.home.test", 5269)
        dns.add_host("gw.home.test", GATEWAY_IP)
        dns.add_host("prosody.test", PEER_IP)
        dns.start()
        started.append(dns)
        home = Ejabberd(base, "home", HOME_IP, host="home.test",
                        users=[("alice@home.test", "alicepw")], s2s=False,
                        components={COMPONENT: SECRET},
                        modules={"mod_s2sgate": {"component": COMPONENT}},
                        beams=[beam], dist_ip=HOME_IP)
        peer = Prosody(base, "peer", PEER_IP, hosts=["prosody.test"],
                       users=[("bob@prosody.test", "bobpw")], dns=dns)
        for server in (home, peer):
            server.start()
            started.append(server)
        gateway = GatewayProcess(base / "gateway", GATEWAY_IP, {
            "local_domains": ["home.test"],
            "component": {"jid": COMPONENT, "host": HOME_IP, "port": 5347,
                          "secret": SECRET, "max_retry_delay": 1},
            "s2s": {"use_starttls": "false", "shared": "dialback-secret-for-tests",
                    "max_retry_delay": 2, "outgoing": {"connection_timeout": 3},
                    "dns": {"nameservers": [f"{DNS_IP}:53"], "timeout": 2, "retries": 0}},
            "log": {"level": "debug"},
        }, dns)
        gateway.start()
        started.append(gateway)
        gateway.wait_link_up()
        yield {"home": home, "peer": peer, "gateway": gateway}
    finally:
        for proc in reversed(started):
            proc.stop()


async def until(predicate, what, timeout=15):
    """Poll C{predicate} without blocking the reactor; fail naming C{what}."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        await task.deferLater(reactor, 0.05)


def routeEvents(home, kind):
    """How often ejabberd logged (debug) that the component's route was C{kind}."""
    try:
        text = (home.logs / "ejabberd.log").read_text(errors="replace")
    except OSError:
        return 0
    return text.count(f"Route {kind}: {COMPONENT}")


async def gatewayAttached(lab):
    """The gateway's link is up and ejabberd has the component's route."""
    await until(lambda: lab["gateway"].link()["state"] == "up", "gateway link up")
    await until(lambda: routeEvents(lab["home"], "registered") > routeEvents(lab["home"], "unregistered"),
                "ejabberd registered the component's route")


async def sessions():
    alice = await login("alice@home.test", "alicepw", HOME_IP)
    bob = await login("bob@prosody.test", "bobpw", PEER_IP)
    return alice, bob


async def chatBothWays():
    alice, bob = await sessions()
    try:
        out, back = next(IDS), next(IDS)
        alice.send(message("bob@prosody.test", out, "hello from ejabberd"))
        got = await bob.wait_for(isMessage(out), timeout=20)
        assert (got["type"], got["from"], got["to"], str(got.body)) == (
            "chat", alice.jid.full(), "bob@prosody.test", "hello from ejabberd")

        bob.send(message("alice@home.test", back, "hello from prosody"))
        got = await alice.wait_for(isMessage(back), timeout=20)
        assert (got["type"], got["from"], got["to"], str(got.body)) == (
            "chat", bob.jid.full(), "alice@home.test", "hello from prosody")
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def rosterSubscription(client, jid):
    """The subscription state of C{jid} in the client's roster (the server's word)."""
    queryId = next(IDS)
    client.send(f"<iq xmlns='jabber:client' type='get' id='{queryId}'>"
                "<query xmlns='jabber:iq:roster'/></iq>")
    result = await client.wait_for(lambda e: e.name == "iq" and e.getAttribute("id") == queryId)
    items = [i for i in result.query.elements() if i.getAttribute("jid") == jid]
    return items[0].getAttribute("subscription") if items else None


def isPresence(type_, from_, to):
    return lambda e: (e.name == "presence" and e.getAttribute("type") == type_
                      and e.getAttribute("from") == from_ and e.getAttribute("to") == to)


def isIq(stanzaId):
    return lambda e: e.name == "iq" and e.getAttribute("id") == stanzaId


def ping(to, stanzaId):
    return f"<iq xmlns='jabber:client' type='get' to='{to}' id='{stanzaId}'><ping xmlns='urn:xmpp:ping'/></iq>"


@pytest_twisted.ensureDeferred
async def test_messages_both_ways_with_a_prosody_peer(lab):
    await chatBothWays()


@pytest_twisted.ensureDeferred
async def test_presence_subscription_both_ways_with_a_prosody_peer(lab):
    alice, bob = await sessions()
    try:
        # ejabberd addresses what it delivers to the session's full JID,
        # Prosody keeps the bare JID the sender used.
        for a, b, aJid, bJid, aTo, bTo in (
                (alice, bob, "alice@home.test", "bob@prosody.test", alice.jid.full(), "bob@prosody.test"),
                (bob, alice, "bob@prosody.test", "alice@home.test", "bob@prosody.test", alice.jid.full())):
            a.send(f"<presence xmlns='jabber:client' to='{bJid}' type='subscribe'/>")
            await b.wait_for(isPresence("subscribe", aJid, bTo), timeout=20)
            b.send(f"<presence xmlns='jabber:client' to='{aJid}' type='subscribed'/>")
            # The contact's server then sends its available presence (the
            # rosters below show that both servers recorded the approval).
            await a.wait_for(isPresence(None, b.jid.full(), aTo), timeout=20)
        assert await rosterSubscription(alice, "bob@prosody.test") == "both"
        assert await rosterSubscription(bob, "alice@home.test") == "both"
    finally:
        await alice.disconnect()
        await bob.disconnect()


@pytest_twisted.ensureDeferred
async def test_iq_round_trips(lab):
    alice, bob = await sessions()
    try:
        # User to user: bob's client answers alice's query.
        query = next(IDS)
        alice.send(f"<iq xmlns='jabber:client' type='get' to='{bob.jid.full()}' id='{query}'>"
                   "<query xmlns='jabber:iq:version'/></iq>")
        got = await bob.wait_for(isIq(query), timeout=20)
        assert (got["type"], got["from"], got["to"]) == ("get", alice.jid.full(), bob.jid.full())
        bob.send(f"<iq xmlns='jabber:client' type='result' to='{alice.jid.full()}' id='{query}'>"
                 "<query xmlns='jabber:iq:version'><name>bob's client</name>"
                 "<version>1.0</version></query></iq>")
        got = await alice.wait_for(isIq(query), timeout=20)
        assert (got["type"], got["from"], got["to"]) == ("result", bob.jid.full(), alice.jid.full())
        assert got.query.uri == "jabber:iq:version"
        assert [(c.name, str(c)) for c in got.query.elements()] == [
            ("name", "bob's client"), ("version", "1.0")]

        # User to the other server, both ways: each server's own answer
        # comes back through the gateway.
        for client, server in ((alice, "prosody.test"), (bob, "home.test")):
            pingId = next(IDS)
            client.send(ping(server, pingId))
            got = await client.wait_for(isIq(pingId), timeout=20)
            assert (got["type"], got["from"], got["to"]) == ("result", server, client.jid.full())

        # Local traffic stays local: alice's own server answers her.
        pingId = next(IDS)
        alice.send(ping("home.test", pingId))
        got = await alice.wait_for(isIq(pingId))
        assert (got["type"], got["from"], got["to"]) == ("result", "home.test", alice.jid.full())
    finally:
        await alice.disconnect()
        await bob.disconnect()


@pytest_twisted.ensureDeferred
async def test_unresolvable_domain_is_bounced_by_the_gateway(lab):
    """The gateway's own bounce reaches the ejabberd user (check_from: false)."""
    alice = await login("alice@home.test", "alicepw", HOME_IP)
    try:
        stanzaId = next(IDS)
        alice.send(message("bob@nowhere.test", stanzaId, "anyone there?"))
        bounce = await alice.wait_for(isMessage(stanzaId), timeout=20)
        assert (bounce["type"], bounce["from"], bounce["to"]) == (
            "error", "bob@nowhere.test", alice.jid.full())
        assert conditionOf(bounce) == "remote-server-not-found"
    finally:
        await alice.disconnect()


@pytest_twisted.ensureDeferred
async def test_gateway_reattaches_after_ejabberd_restarts(lab):
    home, gateway = lab["home"], lab["gateway"]
    home.restart()  # blocks the reactor for a few seconds; the gateway is another process
    await gatewayAttached(lab)
    assert gateway.proc.running()
    await chatBothWays()


@pytest_twisted.ensureDeferred
async def test_stopped_gateway_means_remote_server_timeout_from_the_remote_address(lab):
    home, gateway = lab["home"], lab["gateway"]
    unregistered = routeEvents(home, "unregistered")
    gateway.stop()
    try:
        await until(lambda: routeEvents(home, "unregistered") > unregistered,
                    "ejabberd unregistered the component's route")
        alice = await login("alice@home.test", "alicepw", HOME_IP)
        try:
            stanzaId = next(IDS)
            alice.send(message("bob@prosody.test", stanzaId, "are you there?"))
            bounce = await alice.wait_for(isMessage(stanzaId))
            assert (bounce["type"], bounce["from"], bounce["to"]) == (
                "error", "bob@prosody.test", alice.jid.full())
            assert (bounce.error["type"], bounce.error["by"]) == ("wait", COMPONENT)
            assert [(c.uri, c.name, str(c)) for c in bounce.error.elements()] == [
                (STANZAS, "remote-server-timeout", ""),
                (STANZAS, "text", "The federation gateway is not connected")]
            assert str(bounce.body) == "are you there?"  # ejabberd's bounces echo the body

            pingId = next(IDS)
            alice.send(ping("prosody.test", pingId))
            bounce = await alice.wait_for(isIq(pingId))
            assert (bounce["type"], bounce["from"], bounce["to"]) == (
                "error", "prosody.test", alice.jid.full())
            assert conditionOf(bounce) == "remote-server-timeout"
        finally:
            await alice.disconnect()
    finally:
        gateway.start()
    await gatewayAttached(lab)
    await chatBothWays()
