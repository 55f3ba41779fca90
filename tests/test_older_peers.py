"""
Older peers' stream headers, against a real gateway process (issue 13, part 2).

  s2sgate (twistd) for home.test on 127.0.7.3:5269, use_starttls = "false"
  old.test: a raw pre-1.0 peer on 127.0.7.2:5269, written here with sockets; it
    - answers every stream with a header without version and sends no features,
    - verifies keys on streams whose header has no 'to' (and no version),
      the way such servers call back to an authoritative side.
  test DNS on 127.0.7.1: old.test -> 127.0.7.2

Both directions: the gateway originating to old.test (old.test calls back to the
gateway without 'to'), and old.test originating to the gateway with a pre-1.0 header.
"""

import json
import socket
import threading
import time
import urllib.request

import pytest

from s2sgate.xmpp.parser import StreamParser
from tests.lab.dns import TestDNS
from tests.lab.gateway import GatewayProcess

pytestmark = pytest.mark.servers

DNS_IP, PEER_IP, GATEWAY_IP = "127.0.7.1", "127.0.7.2", "127.0.7.3"
NS = ("xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
      "xmlns:db='jabber:server:dialback'")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Conversation:
    """One TCP connection, parsed with the gateway's own stream parser."""

    def __init__(self, sock):
        self.sock = sock
        self.header = None
        self.elements = []
        self.parser = StreamParser(self._header, self.elements.append, lambda: None)

    def _header(self, header):
        self.header = header

    def send(self, text):
        self.sock.sendall(text.encode())

    def wait(self, what, timeout=10):
        """Read until C{what(self)} holds."""
        deadline = time.monotonic() + timeout
        while not what(self):
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed; got {self.elements}")
            self.parser.feed(data)
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {self.elements}")
        return self

    def named(self, name):
        return [e for e in self.elements if e.name == name]


class OldPeer:
    """old.test's server: pre-1.0 headers, verify-only call-backs without 'to'."""

    def __init__(self):
        self.listener = socket.create_server((PEER_IP, 5269))
        self.received = []       # (stream header attributes, elements) per inbound connection
        self.keys = {}           # stream id we gave -> key the gateway sent on it
        self.errors = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._inbound, args=(sock,), daemon=True).start()

    def _inbound(self, sock):
        """The gateway connects to old.test: to originate (db:result) or to verify."""
        c = Conversation(sock)
        try:
            c.wait(lambda c: c.header is not None)
            streamId = f"old-{len(self.received)}"
            c.send(f"<stream:stream {NS} from='old.test' id='{streamId}'>")   # no version
            c.wait(lambda c: c.named("result") or c.named("verify"))
            self.received.append((dict(c.header.attributes), list(c.elements)))
            if c.named("result"):
                self.keys[streamId] = str(c.named("result")[0])
                self._callBack(c, streamId)
            else:
                verify = c.named("verify")[0]
                c.send(f"<db:verify from='old.test' to='{verify['from']}' id='{verify['id']}' "
                       f"type='valid'/>")
        except Exception as e:   # reported by the test, never a hang
            self.errors.append(repr(e))
        finally:
            time.sleep(0.5)
            sock.close()

    def _callBack(self, c, streamId):
        """Check the gateway's key on a new stream without 'to' (and without version)."""
        with socket.create_connection((GATEWAY_IP, 5269), timeout=10) as sock:
            back = Conversation(sock)
            back.send(f"<stream:stream {NS} from='old.test'>")
            back.wait(lambda b: b.header is not None)
            back.send(f"<db:verify from='old.test' to='home.test' id='{streamId}'>"
                      f"{self.keys[streamId]}</db:verify>")
            back.wait(lambda b: b.named("verify"))
            [answer] = back.named("verify")
            self.callBack = (dict(back.header.attributes), dict(answer.attributes))
        c.send(f"<db:result from='old.test' to='home.test' type='{answer['type']}'/>")

    def close(self):
        self.listener.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("older-peers")
    started = []
    try:
        dns = TestDNS(base / "dns", ip=DNS_IP, fallback=False)
        dns.add_host("old.test", PEER_IP)
        dns.start()
        started.append(dns)
        peer = OldPeer()
        started.append(peer)
        gateway = GatewayProcess(base / "gateway", GATEWAY_IP, {
            "local_domains": ["home.test"],
            "component": {"jid": "s2s.home.test", "host": "127.0.7.4", "port": 5347,
                          "secret": "x"},
            "s2s": {"use_starttls": "false", "dns": {"nameservers": [f"{DNS_IP}:53"]}},
        }, dns)
        gateway.start()
        started.append(gateway)
        yield {"gateway": gateway, "peer": peer}
    finally:
        for thing in reversed(started):
            if isinstance(thing, OldPeer):
                thing.close()
            else:
                thing.stop()


def api(method, path):
    request = urllib.request.Request(f"http://{GATEWAY_IP}:5281{path}", method=method,
                                     headers={"Content-Length": "0"})
    try:
        with _NO_PROXY.open(request, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def test_a_verify_only_call_back_without_to_authenticates_our_outbound_stream(lab):
    result = api("POST", "/api/connect?local=home.test&remote=old.test")
    assert lab["peer"].errors == []
    assert result.get("session", {}).get("auth") == "dialback", result
    header, answer = lab["peer"].callBack
    assert "from" not in header and header.get("id")       # we could not say who we are
    assert (answer["from"], answer["to"], answer["type"]) == ("home.test", "old.test", "valid")


def test_a_pre_1_0_originating_stream_gets_no_features_and_authenticates_by_dialback(lab):
    with socket.create_connection((GATEWAY_IP, 5269), timeout=10) as sock:
        c = Conversation(sock)
        c.send(f"<stream:stream {NS} from='old.test' to='home.test'>")   # no version
        c.wait(lambda c: c.header is not None)
        assert c.header.getAttribute("version") is None
        c.send("<db:result from='old.test' to='home.test'>any-key-old-test-checks</db:result>")
        c.wait(lambda c: c.named("result"))
        [result] = c.named("result")
        assert (result["from"], result["to"], result["type"]) == ("home.test", "old.test", "valid")
        assert c.named("features") == []
        c.send("<message from='juliet@old.test/pc' to='romeo@home.test'><body>hi</body></message>")
        deadline = time.monotonic() + 10
        while True:
            sessions = api("GET", "/api/sessions")["sessions"]
            inbound = [s for s in sessions if s["direction"] == "in"
                       and s["pairs"] == [["old.test", "home.test"]]]
            if inbound and inbound[0]["stanzas_in"] == 1:
                break
            assert time.monotonic() < deadline, sessions
            time.sleep(0.05)
    # The gateway's verify leg reached old.test's authoritative side.
    verifies = [elements for header, elements in lab["peer"].received
                if any(e.name == "verify" for e in elements)]
    assert verifies and lab["peer"].errors == []
