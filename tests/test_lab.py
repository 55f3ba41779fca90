"""The test lab itself: dnsmasq, Prosody with mod_s2sgate, ejabberd, the c2s client."""
from __future__ import annotations

import hashlib
import subprocess

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.names import client as dnsclient
from twisted.names import error as dnserror
from twisted.words.xish import xmlstream as xish

from tests.lab.client import connect_client
from tests.lab.dns import TestDNS
from tests.lab.ejabberd import Ejabberd
from tests.lab.procs import with_test_resolver
from tests.lab.prosody import Prosody
from tests.lab.wait import until

pytestmark = pytest.mark.servers

HOME_IP = "127.0.0.11"
EJ_IP = "127.0.0.12"
COMPONENT = "s2s.home.test"
SECRET = "lab-secret"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def _pids(pattern):
    r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return set(r.stdout.split())


# -- fixtures (each server once per module) ---------------------------------------

@pytest.fixture(scope="module")
def labdir(tmp_path_factory):
    return tmp_path_factory.mktemp("lab")


@pytest.fixture(scope="module")
def dns(labdir):
    d = TestDNS(labdir / "dns")
    d.add_host("a.test", "127.0.0.21")
    d.add_srv("_xmpp-server._tcp.a.test", "a.test", 5269)
    d.add_host("xmpp.srvonly.test", "127.0.0.22")
    d.add_srv("_xmpp-server._tcp.srvonly.test", "xmpp.srvonly.test", 5999, priority=10, weight=7)
    d.add_srv("_xmpp-server._tcp.srvonly.test", "xmpp2.srvonly.test", 5998, priority=20)
    d.add_no_service("_xmpp-server._tcp.nothing.test")
    d.add_host("home.test", HOME_IP)
    d.add_host("b.test", "127.0.0.23")  # A only, no SRV: the fallback path
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def home(labdir, dns):
    p = Prosody(labdir, "home", HOME_IP, hosts=["home.test"],
                users=[("alice@home.test", "alicepw")],
                components={COMPONENT: SECRET}, route_to=COMPONENT, dns=dns)
    p.start()   # waits, with a deadline, for its ports to open
    yield p
    p.stop()


# -- a raw XEP-0114 component -------------------------------------------------------

class FakeComponent(xish.XmlStream):
    """Minimal jabber:component:accept client: handshake = sha1(stream id + secret)."""

    def __init__(self, jid, secret):
        super().__init__()
        self.jid, self.secret = jid, secret
        self.ready = defer.Deferred()
        self.lost = defer.Deferred()
        self.raw = b""
        self.stanzas = []
        self._waiters = []

    def connectionMade(self):
        super().connectionMade()
        self.send(f"<stream:stream xmlns='jabber:component:accept' "
                  f"xmlns:stream='http://etherx.jabber.org/streams' to='{self.jid}'>")

    def dataReceived(self, data):
        self.raw += data
        super().dataReceived(data)

    def onDocumentStart(self, root):
        super().onDocumentStart(root)
        token = hashlib.sha1((root["id"] + self.secret).encode()).hexdigest()
        self.send(f"<handshake>{token}</handshake>")

    def onElement(self, el):
        if el.name == "handshake":
            self.ready.callback(self)
        elif el.name == "error":
            if not self.ready.called:
                self.ready.errback(RuntimeError(el.toXml()))
        else:
            self.stanzas.append(el)
            for pred, d in list(self._waiters):
                if pred(el):
                    self._waiters.remove((pred, d))
                    d.callback(el)
                    break

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if not self.ready.called:
            self.ready.errback(reason)
        self.lost.callback(None)

    def wait_for(self, pred, timeout=10):
        for el in self.stanzas:
            if pred(el):
                return defer.succeed(el)
        d = defer.Deferred()
        self._waiters.append((pred, d))
        return d.addTimeout(timeout, reactor)


def connect_component(ip, port=5347, jid=COMPONENT, secret=SECRET):
    cc = protocol.ClientCreator(reactor, FakeComponent, jid, secret)
    d = cc.connectTCP(ip, port, timeout=5)
    d.addCallback(lambda proto: proto.ready)
    return d.addTimeout(10, reactor)


def error_condition(el):
    err = next((c for c in el.elements() if c.name == "error"), None)
    if err is None:
        return None
    return next((c.name for c in err.elements() if c.uri == NS_STANZAS and c.name != "text"),
                None)


# -- tests ----------------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_dnsmasq_answers_only_its_records(dns):
    assert dns.nameservers == [(dns.ip, 53)]
    r = dnsclient.Resolver(servers=dns.nameservers)
    ans, _, _ = yield r.lookupService("_xmpp-server._tcp.a.test")
    assert [(a.payload.target.name, a.payload.port) for a in ans] == [(b"a.test", 5269)]
    ans, _, _ = yield r.lookupService("_xmpp-server._tcp.srvonly.test")
    got = sorted((a.payload.priority, a.payload.weight, a.payload.target.name, a.payload.port)
                 for a in ans)
    assert got == [(10, 7, b"xmpp.srvonly.test", 5999), (20, 5, b"xmpp2.srvonly.test", 5998)]
    ans, _, _ = yield r.lookupAddress("xmpp.srvonly.test")
    assert [a.payload.dottedQuad() for a in ans] == ["127.0.0.22"]
    ans, _, _ = yield r.lookupAddress("srvonly.test")  # no A of its own
    assert ans == []
    ans, _, _ = yield r.lookupService("_xmpp-server._tcp.nothing.test")
    assert [(a.payload.target.name, a.payload.port) for a in ans] == [(b"", 1)]  # "." answer
    with pytest.raises(dnserror.DNSNameError):
        yield r.lookupAddress("nx.test")
    with pytest.raises(dnserror.DNSNameError):
        yield r.lookupService("_xmpp-server._tcp.nx.test")


def test_with_test_resolver_uses_only_test_dns(dns):
    argv = with_test_resolver(["getent", "ahostsv4", "a.test"], dns.resolv_conf, dns.hosts_file)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "127.0.0.21"
    r = subprocess.run(with_test_resolver(["cat", "/etc/hosts"], dns.resolv_conf,
                                          dns.hosts_file), capture_output=True, text=True)
    assert r.stdout == dns.hosts_file.read_text()
    with open("/etc/resolv.conf") as f:  # the real one is untouched outside
        assert f.read() != dns.resolv_conf.read_text()


@pytest_twisted.inlineCallbacks
def test_prosody_dialback_peers_federate_through_test_dns(labdir, dns):
    a = Prosody(labdir, "peer-a", "127.0.0.21", hosts=["a.test"],
                users=[("dave@a.test", "davepw")], dns=dns)
    b = Prosody(labdir, "peer-b", "127.0.0.23", hosts=["b.test"],
                users=[("erin@b.test", "erinpw")], dns=dns)
    a.start()
    b.start()
    try:
        dave = yield connect_client(reactor, "dave@a.test/lab", "davepw", "127.0.0.21")
        erin = yield connect_client(reactor, "erin@b.test/lab", "erinpw", "127.0.0.23")
        erin.send_presence()
        dave.send("<message to='erin@b.test/lab' id='d1' type='chat'><body>hi</body></message>")
        m = yield erin.wait_for(lambda e: e.name == "message" and e.getAttribute("id") == "d1",
                                timeout=15)
        assert m["from"] == "dave@a.test/lab"
        show = a.s2s_show()
        assert "b.test" in show and "dialback" in show.lower(), show
        yield dave.disconnect()
        yield erin.disconnect()
    finally:
        a.stop()
        b.stop()


@pytest_twisted.inlineCallbacks
def test_prosody_routes_remote_stanzas_through_component(home):
    comp = yield connect_component(HOME_IP)
    alice = yield connect_client(reactor, "alice@home.test/lab", "alicepw", HOME_IP)
    try:
        alice.send_presence()
        # c2s -> remote JID -> component, unchanged
        alice.send("<message to='bob@remote.test' id='m1' type='chat'><body>hi bob</body>"
                   "<x xmlns='urn:example:lab' a='1'>payload</x></message>")
        got = yield comp.wait_for(lambda e: e.name == "message" and e.getAttribute("id") == "m1")
        assert got["to"] == "bob@remote.test"
        assert got["from"] == "alice@home.test/lab"
        assert got["type"] == "chat"
        assert str(got.body) == "hi bob"
        x = next(c for c in got.elements() if c.name == "x")
        assert (x.uri, x["a"], str(x)) == ("urn:example:lab", "1", "payload")
        assert b"bob@remote.test" in comp.raw
        # iq to a remote domain (host event) also goes to the component
        alice.send("<iq type='get' id='q1' to='remote.test'>"
                   "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        iq = yield comp.wait_for(lambda e: e.name == "iq" and e.getAttribute("id") == "q1")
        assert iq["to"] == "remote.test"
        # component -> local user, with a remote 'from' (validate_from_addresses = false)
        comp.send("<message from='bob@remote.test/x' to='alice@home.test' type='chat' id='r1'>"
                  "<body>hello alice</body></message>")
        m = yield alice.wait_for(lambda e: e.name == "message" and e.getAttribute("id") == "r1")
        assert m["from"] == "bob@remote.test/x"
        assert str(m.body) == "hello alice"
        # component gone: mod_component bounces remote-server-timeout, once
        # Prosody has seen the connection close
        gone = f"component disconnected: {COMPONENT}"
        seen = home.log_text().count(gone)
        comp.transport.loseConnection()
        yield comp.lost
        noticed = yield defer.ensureDeferred(until(lambda: home.log_text().count(gone) > seen,
                                                   interval=0.1))
        assert noticed, home.log_text()[-3000:]
        alice.send("<message to='carol@remote.test' id='m2' type='chat'><body>x</body></message>")
        err = yield alice.wait_for(lambda e: e.getAttribute("id") == "m2")
        assert err.getAttribute("type") == "error"
        assert error_condition(err) == "remote-server-timeout"
        assert err["from"] == "carol@remote.test"
        assert next(c for c in err.elements() if c.name == "error").getAttribute("by") == COMPONENT
    finally:
        if comp.transport and comp.transport.connected:
            comp.transport.loseConnection()
        yield alice.disconnect()
    assert "s2sgate_component is not set" not in home.log_text()
    assert "s2s connections shown" in home.s2s_show()  # mod_s2s disabled: none


@pytest_twisted.inlineCallbacks
def test_ejabberd_smoke(labdir, dns):
    epmd_before = _pids("epmd")
    ej = Ejabberd(labdir, "ej", EJ_IP, host="ej.test", users=[("carol@ej.test", "carolpw")],
                  dns=dns)
    ej.start()   # waits, with a deadline, for its ports to open
    try:
        carol = yield connect_client(reactor, "carol@ej.test/lab", "carolpw", EJ_IP)
        carol.send_presence()
        carol.send("<message to='carol@ej.test' id='self1' type='chat'><body>me</body></message>")
        m = yield carol.wait_for(lambda e: e.name == "message" and e.getAttribute("id") == "self1")
        assert str(m.body) == "me"
        yield carol.disconnect()
    finally:
        ej.stop()
    assert ej.leftovers() == ""
    assert _pids("epmd") <= epmd_before
