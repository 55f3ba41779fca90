"""GatewayService: reload behaviour, in process, without network traffic."""

from twisted.application import service
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.words.xish import domish

from s2sgate.config import load_config
from s2sgate.gateway.service import GatewayService
from s2sgate.xmpp.rawstanza import RawStanza

BASE = """
local_domains = ["example.com"]
[component]
jid = "s2s.example.com"
secret = "x"
[s2s]
use_starttls = "false"
listen = []
{extra}
[admin]
listen = ""
"""


def gateway(tmp_path, extra=""):
    path = tmp_path / "s2sgate.toml"
    path.write_text(BASE.format(extra=extra))
    reactor = MemoryReactorClock()
    return GatewayService(load_config(path), reactor), path


def test_reload_applies_a_new_host_policy(tmp_path):
    gw, path = gateway(tmp_path)
    path.write_text(BASE.format(extra='host_policy = [ { host = "spam.test", policy = "deny" } ]'))
    before = gw.current.runtime
    assert gw.reload() == []
    assert gw.current.runtime.policy.check("example.com", "spam.test")[0] is False
    assert before.policy.check("example.com", "spam.test")[0] is True
    assert gw.config.s2s.host_policy and gw.current.runtime.keys is before.keys


def test_reload_reports_settings_that_need_a_restart(tmp_path):
    gw, path = gateway(tmp_path)
    path.write_text(BASE.format(extra='listen = ["tcp:5999"]').replace("listen = []\n", "", 1))
    assert gw.reload() == ["s2s.listen"]
    # Reloading again still says so: the process still runs the old listeners.
    assert gw.reload() == ["s2s.listen"]


def test_reload_reports_outgoing_and_component_changes(tmp_path):
    gw, path = gateway(tmp_path)
    path.write_text(BASE.format(extra="[s2s.outgoing]\nip_versions = [6, 4]")
                    .replace('secret = "x"', 'secret = "y"'))
    assert set(gw.reload()) == {"component", "s2s.outgoing.ip_versions"}


def test_connector_races_with_the_configured_attempt_delay(tmp_path):
    gw, path = gateway(tmp_path, "[s2s.outgoing]\nconnection_attempt_delay = 0.1")
    assert (gw.connector.attemptDelay, gw.connector.timeout) == (0.1, 10)
    path.write_text(BASE.format(extra="[s2s.outgoing]\nconnection_attempt_delay = 0.5"))
    assert gw.reload() == ["s2s.outgoing.connection_attempt_delay"]


def test_a_bad_file_on_sighup_keeps_the_old_config_without_a_traceback(tmp_path):
    gw, path = gateway(tmp_path)
    before = gw.config
    path.write_text(BASE.format(extra="frobnicate = 1"))
    gw._reloadFromSignal()     # what the SIGHUP handler calls; must not raise
    assert gw.config is before


class StoppingLink(service.Service):
    """A component link whose stop the test finishes by hand."""

    state = "up"
    buffer = ()
    lastProblem = None
    undeliverable = 0

    def __init__(self, onStanza, onBounce):
        self.fromLocal = onStanza
        self.stopping = None
        self.sent = []

    def send(self, element):
        self.sent.append(element.element())

    def whenUp(self):
        return defer.succeed(self)

    def stopService(self):
        if not self.running:
            return None
        service.Service.stopService(self)
        self.stopping = defer.Deferred()
        return self.stopping


class PeerStream:
    """An inbound stream that closes when its peer answers our closing tag."""

    direction = "in"
    closing = closed = False
    pairs = {("remote.test", "example.com")}
    peerHost = "192.0.2.8"

    def __init__(self, table):
        self.table = table

    def closeStream(self, wait):
        self.closing = True

    def peerClosed(self):
        self.closed = True
        self.table.untrack(self)


class HangingConnector:
    def connect(self, domain, factory, directTLS=None):
        return defer.Deferred()


def stoppingGateway(tmp_path, extra=""):
    path = tmp_path / "s2sgate.toml"
    path.write_text(BASE.format(extra=extra))
    reactor = MemoryReactorClock()
    gw = GatewayService(load_config(path), reactor, componentLink=StoppingLink,
                        connector=HangingConnector())
    gw.startService()
    return gw, reactor


def chat(to="bob@remote.test"):
    m = domish.Element(("jabber:server", "message"))
    m["from"], m["to"], m["type"] = "alice@example.com/pc", to, "chat"
    return RawStanza.fromElement(m)


def test_stopping_closes_inbound_streams_before_the_component_link(tmp_path):
    gw, reactor = stoppingGateway(tmp_path)
    peer = PeerStream(gw.sessionTable)
    gw.sessionTable.track(peer)
    done = gw.stopService()
    reactor.advance(0.1)
    assert peer.closing and gw.link.stopping is None
    peer.peerClosed()
    reactor.advance(0.1)
    assert gw.link.stopping is not None and not done.called
    gw.link.stopping.callback(None)
    reactor.advance(0.1)
    assert done.called


def pumpLogged(reactor, steps):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        reactor.pump(steps)
    finally:
        globalLogPublisher.removeObserver(events.append)
    return events


def test_stanzas_still_waiting_at_two_thirds_of_shutdown_timeout_are_bounced_before_the_link_closes(
        tmp_path):
    gw, reactor = stoppingGateway(tmp_path, "shutdown_timeout = 6")
    gw.router.fromLocal(chat())
    gw.router.fromLocal(chat())
    assert gw.pool.busy()
    done = gw.stopService()
    reactor.advance(3.9)
    assert gw.link.stopping is None and gw.pool.busy() and gw.link.sent == []
    reactor.advance(0.2)
    # The link still carries the bounces; only then does it close.
    assert [(m["type"], m["to"]) for m in gw.link.sent] == [("error", "alice@example.com/pc")] * 2
    assert all("the gateway is shutting down" in m.error.toXml() for m in gw.link.sent)
    assert gw.link.stopping is not None and not gw.pool.busy()
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw.link.stopping.callback(None)
        reactor.pump([0.1] * 5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert done.called
    [stopped] = [e for e in events if e.get("event") == "shutdown.done"]
    assert (stopped["bounced"], stopped["lost"]) == (2, 0)


def test_a_stanza_the_c2s_server_wrote_after_the_link_closed_gets_the_rest_then_counts_lost(
        tmp_path):
    gw, reactor = stoppingGateway(tmp_path, "shutdown_timeout = 6")
    done = gw.stopService()
    reactor.advance(0.1)
    assert gw.link.stopping is not None
    gw.link.fromLocal(chat())      # written before the c2s server saw our closing tag
    gw.link.stopping.callback(None)
    reactor.advance(4)
    assert not done.called and gw.pool.busy()
    events = pumpLogged(reactor, [0.1] * 30)
    assert done.called and not gw.pool.busy()
    [lost] = [e for e in events if e.get("event") == "shutdown.lost"]
    assert (lost["count"], lost["remote"]) == (1, "remote.test")
    [stopped] = [e for e in events if e.get("event") == "shutdown.done"]
    assert (stopped["bounced"], stopped["lost"]) == (0, 1)
