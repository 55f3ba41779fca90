"""
Several local domains on one outbound stream (XEP-0220 multiplexing)
against real Prosody 0.12 and ejabberd 23.01.

  alice@home.test, carol@conference.home.test ─ Prosody (127.0.13.10) ─ component
      ─ s2sgate 127.0.13.11:5269 (admin 127.0.13.11:5281)
      ─ peer.test   Prosody, STARTTLS required, dialback allowed (127.0.13.12)
      ─ ej.test     ejabberd, STARTTLS required, dialback (127.0.13.13)
  DNS 127.0.13.53: home.test and conference.home.test -> the gateway, the peers -> theirs

Our certificate names home.test only: the first pair authenticates with SASL
EXTERNAL; conference.home.test's first message asks peer.test to take the
pair on that stream (<db:result/>), and Prosody verifies the key by dialing
back to conference.home.test.  One TCP connection carries both, which the
gateway, `s2sgate sessions`, the status page and Prosody's s2s:show() agree on.
"""

import re
import signal
import subprocess

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from s2sgate.config import load_config
from s2sgate.gateway.service import GatewayService
from tests.lab import browser, chat
from tests.lab.certs import TestCA
from tests.lab.chat import isMessage, login, message
from tests.lab.dns import TestDNS
from tests.lab.ejabberd import Ejabberd
from tests.lab.prosody import Prosody
from tests.test_admin import runCLI
from tests.test_status_page import rows as pageRows

pytestmark = pytest.mark.servers

HOME_IP, GATEWAY_IP, PEER_IP, DNS_IP = "127.0.13.10", "127.0.13.11", "127.0.13.12", "127.0.13.53"
EJABBERD_IP = "127.0.13.13"
SECRET = "component-secret-for-multiplex-tests"
MUC = "conference.home.test"


def gatewayToml(cafile, certfile):
    return f"""
local_domains = ["home.test", "{MUC}"]
[component]
jid = "s2s.home.test"
host = "{HOME_IP}"
secret = "{SECRET}"
[s2s]
listen = ["tcp:5269:interface={GATEWAY_IP}"]
use_starttls = "required"
certfile = "{certfile}"
cafile = "{cafile}"
shared = "dialback-secret-for-multiplex-tests"
max_retry_delay = 1
[s2s.dns]
nameservers = ["{DNS_IP}:53"]
timeout = 2
retries = 1
[s2s.outgoing]
connection_timeout = 3
[admin]
listen = "tcp:5281:interface={GATEWAY_IP}"
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("multiplex")
    started = []
    ca = TestCA(base / "ca")
    home = ca.issue("home.test", dns=["home.test"])
    dns = TestDNS(base / "dns", ip=DNS_IP, fallback=False)
    for domain in ("home.test", MUC):
        dns.add_srv(f"_xmpp-server._tcp.{domain}", "gw.home.test", 5269)
    dns.add_host("gw.home.test", GATEWAY_IP)
    dns.add_host("peer.test", PEER_IP)
    dns.add_host("ej.test", EJABBERD_IP)
    try:
        dns.start()
        started.append(dns)
        servers = dict(
            home=Prosody(base, "home", HOME_IP, hosts=["home.test", MUC],
                         users=[("alice@home.test", "alicepw"), (f"carol@{MUC}", "carolpw")],
                         components={"s2s.home.test": SECRET}, route_to="s2s.home.test"),
            peer=Prosody(base, "peer", PEER_IP, hosts=["peer.test"],
                         users=[("bob@peer.test", "bobpw")], dns=dns,
                         tls={"cafile": ca.cafile, "secure_auth": False,
                              "require_encryption": True,
                              "certs": {"peer.test": ca.issue("peer.test", dns=["peer.test"])}}),
            ej=Ejabberd(base, "ej", EJABBERD_IP, host="ej.test",
                        users=[("carol@ej.test", "carolpw")], dns=dns,
                        s2s_use_starttls="required",
                        certfile=ca.issue("ej.test", dns=["ej.test"])[0], cafile=ca.cafile),
        )
        for server in servers.values():
            server.start()
            started.append(server)
        configPath = base / "s2sgate.toml"
        configPath.write_text(gatewayToml(ca.cafile, home[0]))
        events = []
        globalLogPublisher.addObserver(events.append)
        gateway = GatewayService(load_config(configPath), reactor)
        gateway.startService()
        pytest_twisted.blockon(gateway.link.whenUp())
        yield dict(gateway=gateway, events=events, config=configPath, **servers)
        globalLogPublisher.removeObserver(events.append)
        pytest_twisted.blockon(gateway.stopService())
    finally:
        for server in reversed(started):
            server.stop()
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def logged(lab, event, **fields):
    return [e for e in lab["events"] if e.get("event") == event
            and all(e.get(k) == v for k, v in fields.items())]


def connectionsTo(ip):
    """
    Established TCP connections to the s2s port at C{ip} as the kernel sees
    them: (our address, its address) each.
    """
    out = subprocess.run(["ss", "-Htn", "state", "established", "dst", f"{ip}:5269"],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()[-2:]) for line in out.splitlines() if line.strip()]


def connectionsToPeer():
    return connectionsTo(PEER_IP)


async def deliverTo(recipient, password, ip, sender, senderPassword, tag, body=None):
    """C{sender}'s message to C{recipient} (logged in at C{ip}) arrives as sent."""
    body = body or f"hello from {sender}"
    rx = await login(recipient, password, ip)
    user = await login(sender, senderPassword, HOME_IP)
    try:
        user.send(message(recipient, tag, body))
        got = await rx.wait_for(isMessage(tag), timeout=30)
        chat.assertDelivered(got, user.jid.full(), recipient, body)
    finally:
        await user.disconnect()
        await rx.disconnect()


def deliver(sender, password, tag, body):
    return deliverTo("bob@peer.test", "bobpw", PEER_IP, sender, password, tag, body)


@pytest.fixture(scope="module")
def bothSent(lab):
    """alice's message opens the stream; carol's, from the other domain, joins it."""
    pytest_twisted.blockon(defer.ensureDeferred(
        deliver("alice@home.test", "alicepw", "mux-1", "first, from home.test")))
    first = connectionsToPeer()
    pytest_twisted.blockon(defer.ensureDeferred(
        deliver(f"carol@{MUC}", "carolpw", "mux-2", "second, from the conference domain")))
    return dict(first=first, after=connectionsToPeer())


def test_both_local_domains_share_one_tcp_connection_to_the_peer(lab, bothSent):
    assert len(bothSent["first"]) == 1, bothSent
    assert bothSent["after"] == bothSent["first"], bothSent
    table = lab["gateway"].sessionTable
    stream = table.outgoing("home.test", "peer.test")
    assert table.outgoing(MUC, "peer.test") is stream
    assert stream.pairs == {("home.test", "peer.test"), (MUC, "peer.test")}
    assert stream.authMethod == "sasl-external"
    assert len(logged(lab, "outbound.connecting", remote="peer.test")) == 1
    [added] = logged(lab, "outbound.pair_added", remote="peer.test")
    assert added["local"] == MUC
    assert logged(lab, "outbound.pair_refused", remote="peer.test") == []


def test_prosodys_view_agrees_one_incoming_session_carried_both_domains(lab, bothSent):
    rows = lab["peer"].s2s_sessions("id host dir remote s2s_sasl dialback")
    incoming = [r for r in rows if r["dir"] in ("<--", "<->")]
    # One incoming session, the one home.test opened; none for conference.home.test,
    # whose only session is Prosody's own, to verify its key.
    assert [r["remote"] for r in incoming] == ["home.test"], lab["peer"].s2s_show()
    assert incoming[0]["s2s_sasl"] == "Succeeded", lab["peer"].s2s_show()
    assert all(r["dir"] == "-->" for r in rows if r["remote"] == MUC), lab["peer"].s2s_show()
    # conference.home.test's <db:result/> came in on that very session.
    log = lab["peer"].log_text()
    asked = re.findall(r"(s2sin\w+)\s+debug\s+Received\[s2sin\]: <result [^>]*"
                       rf"from='{re.escape(MUC)}'", log)
    assert asked == [incoming[0]["id"]], asked


@pytest_twisted.ensureDeferred
async def test_s2sgate_sessions_shows_both_pairs_on_the_one_stream(lab, bothSent):
    code, out, err = await runCLI("sessions", "--config", str(lab["config"]))
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    outbound = [r for r in rows if r[:1] == ["out"] and "peer.test" in r]
    assert [r[1:3] for r in outbound] == [[f"home.test,{MUC}", "peer.test"]], out


@pytest_twisted.ensureDeferred
async def test_s2sgate_connect_for_the_second_domain_names_the_stream_it_shares(lab, bothSent):
    code, out, err = await runCLI("connect", MUC, "peer.test", "--config", str(lab["config"]))
    assert code == 0, err
    assert "  already connected" in out
    assert (f"connected: {MUC} -> peer.test (on the stream of home.test, 2 pairs), TLSv1.3"
            in out), out


@pytest_twisted.ensureDeferred
async def test_the_status_page_shows_both_pairs_on_the_one_stream(lab, bothSent):
    browser.chromium()
    page = await deferToThread(browser.render, f"http://{GATEWAY_IP}:5281/", 1400, 900)
    [link] = [r for r in pageRows(page, "link") if "peer.test" in r and r.startswith("out")]
    assert "home.test → peer.test" in link and f"{MUC} → peer.test" in link, link


@pytest_twisted.ensureDeferred
async def test_more_messages_from_both_domains_keep_to_the_one_connection(lab, bothSent):
    await deliver("alice@home.test", "alicepw", "mux-3", "again from home.test")
    await deliver(f"carol@{MUC}", "carolpw", "mux-4", "again from the conference")
    assert connectionsToPeer() == bothSent["first"]
    stream = lab["gateway"].sessionTable.outgoing(MUC, "peer.test")
    assert stream.stanzasOut >= 4




@pytest_twisted.ensureDeferred
async def test_an_ejabberd_peer_takes_the_second_domain_on_the_same_connection_too(lab):
    # ejabberd 23.01: SASL EXTERNAL for home.test, then it accepts (and verifies by
    # dialing back) conference.home.test's <db:result/> on the same stream.
    await deliverTo("carol@ej.test", "carolpw", EJABBERD_IP, "alice@home.test", "alicepw", "ej-1")
    first = connectionsTo(EJABBERD_IP)
    await deliverTo("carol@ej.test", "carolpw", EJABBERD_IP, f"carol@{MUC}", "carolpw", "ej-2")
    assert len(first) == 1 and connectionsTo(EJABBERD_IP) == first
    table = lab["gateway"].sessionTable
    stream = table.outgoing("home.test", "ej.test")
    assert table.outgoing(MUC, "ej.test") is stream and stream.authMethod == "sasl-external"
    assert len(logged(lab, "outbound.connecting", remote="ej.test")) == 1
    # ejabberd's view: one incoming s2s connection (ours); its verify leg is outgoing.
    incoming = lab["ej"].ctl("incoming_s2s_number").stdout.strip()
    assert incoming == "1", incoming
