"""
The component link against a real Prosody (issue: foundation).

A real Prosody from Debian's packages is the c2s server, with the
project's routing module loaded; the gateway runs in this process; a real
c2s client is logged in as a local user.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from s2sgate.config import parse_config
from s2sgate.gateway.service import GatewayService
from s2sgate.xmpp.namespaces import NS_SERVER
from tests.lab.chat import assertBounce, assertDelivered, conditionOf
from tests.lab.client import connect_client
from tests.lab.dns import TestDNS, pick_dns_ip
from tests.lab.prosody import Prosody
from tests.lab.wait import until
from tests.test_rawstanza import one as rawStanza

pytestmark = pytest.mark.servers

HOME_IP = "127.0.0.40"
SECRET = "component-secret-for-tests"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    d = TestDNS(tmp_path_factory.mktemp("dns"), ip=pick_dns_ip())
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def prosody(tmp_path_factory):
    p = Prosody(tmp_path_factory.mktemp("attach"), "home", HOME_IP, hosts=["home.test"],
                users=[("alice@home.test", "alicepw")],
                components={"s2s.home.test": SECRET}, route_to="s2s.home.test")
    p.start()
    yield p
    p.stop()


def gatewayConfig(dns):
    return parse_config({
        "local_domains": ["home.test"],
        "component": {"jid": "s2s.home.test", "host": HOME_IP, "port": 5347,
                      "secret": SECRET, "max_retry_delay": 2},
        "admin": {"listen": ""},
        "s2s": {"listen": [], "use_starttls": "false",
                "dns": {"nameservers": [f"{ip}:{port}" for ip, port in dns.nameservers],
                        "timeout": 2, "retries": 0}},
    }, "test-attach.toml")


@pytest.fixture(scope="module")
def gateway(prosody, dns):
    gw = GatewayService(gatewayConfig(dns), reactor)
    gw.startService()
    pytest_twisted.blockon(gw.link.whenUp())
    yield gw
    pytest_twisted.blockon(gw.stopService())


async def loginAlice():
    alice = await connect_client(reactor, "alice@home.test/test", "alicepw", HOME_IP)
    # Prosody delivers to the bare JID only to available resources.
    alice.send_presence()
    return alice


async def checkBounceAndInjection(gateway):
    alice = await loginAlice()
    try:
        alice.send("<message xmlns='jabber:client' to='bob@nowhere.test' type='chat' id='m1'><body>hello</body></message>")
        bounce = await alice.wait_for(lambda e: e.name == "message" and e.getAttribute("id") == "m1")
        assertBounce(bounce, "bob@nowhere.test", "alice@home.test/test", "hello")
        assert conditionOf(bounce) == "remote-server-not-found"

        # As an inbound stream hands it over: its own bytes, the outer xmlns
        # rewritten for the component link.
        gateway.router.fromRemote(rawStanza(NS_SERVER,
            b"<message xmlns='jabber:server' from='bob@remote.test/x' to='alice@home.test' "
            b"type='chat' id='in1'><body>from afar</body></message>"))
        got = await alice.wait_for(lambda e: e.name == "message" and e.getAttribute("id") == "in1")
        assertDelivered(got, "bob@remote.test/x", "alice@home.test", "from afar")
    finally:
        await alice.disconnect()


@pytest_twisted.ensureDeferred
async def test_remote_bound_message_comes_back_as_remote_server_not_found(gateway):
    await checkBounceAndInjection(gateway)


@pytest_twisted.ensureDeferred
async def test_without_the_gateway_prosody_bounces_from_the_remote_address(gateway):
    """mod_component's bounce: from the address the stanza was for, the
    component named only in <error by=…>."""
    link = gateway.link
    link.stopService()
    try:
        for _ in range(200):
            if link.stream is None:
                break
            await task.deferLater(reactor, 0.05)
        assert link.stream is None
        alice = await loginAlice()
        try:
            alice.send("<message xmlns='jabber:client' to='bob@remote.test' type='chat' "
                       "id='away1'><body>anyone?</body></message>")
            bounce = await alice.wait_for(lambda e: e.name == "message" and e.getAttribute("id") == "away1")
            assert (bounce["type"], bounce["from"], bounce["to"]) == (
                "error", "bob@remote.test", alice.jid.full())
            assert (bounce.error["type"], bounce.error["by"]) == ("wait", "s2s.home.test")
            assert [(c.uri, c.name, str(c)) for c in bounce.error.elements()] == [
                (STANZAS, "remote-server-timeout", ""),
                (STANZAS, "text", "Component unavailable"),
                ("xmpp:prosody.im/protocol/component", "not-connected", "")]
        finally:
            await alice.disconnect()
    finally:
        link.startService()
    await link.whenUp()


@pytest_twisted.ensureDeferred
async def test_gateway_reconnects_after_prosody_restarts(gateway, prosody):
    before = gateway.link.stream
    prosody.restart()
    # The restart blocked the reactor: let the link notice the drop, then
    # reconnect by itself.
    await until(lambda: gateway.link.stream is not None and gateway.link.stream is not before)
    assert gateway.link.state == "up"
    await checkBounceAndInjection(gateway)
