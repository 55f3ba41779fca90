"""
The admin API, status page and /metrics (s2sgate.ops.admin).

API unit tests run the real admin Site in the test reactor with a fake gateway
(127.0.0.110).  The `servers` tests run a real gateway with real Prosody
servers on loopback:

  alice@home.test ─ Prosody (127.0.0.100) ─ component ─ s2sgate 127.0.0.101
        (:5269 STARTTLS optional, admin API on :5281)
      ─ secure.test  Prosody, certificate, s2s_secure_auth  (127.0.0.102)  STARTTLS + SASL EXTERNAL
      ─ plain.test, later.test  Prosody without TLS          (127.0.0.103)  dialback
      ─ unreach.test  an A record where nothing listens      (127.0.0.104)
  test DNS (dnsmasq) on 127.0.0.119 if free
"""

import json
import os
import signal
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from functools import partial
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue

from s2sgate.config import ConfigError, load_config
from s2sgate.gateway.service import Connected, GatewayService
from s2sgate.net.connector import Attempt, ConnectFailed
from s2sgate.ops.admin import AdminSite, sessionTotals
from s2sgate.ops.metrics import Metrics
from tests.lab import chat
from tests.lab.browser import chromium
from tests.lab.chat import conditionOf, isMessage, login, marker, message

HOME_IP, GATEWAY_IP, SECURE_IP, PLAIN_IP, UNREACH_IP = (
    "127.0.0.100", "127.0.0.101", "127.0.0.102", "127.0.0.103", "127.0.0.104")
DNS_IP = "127.0.0.119"
FAKE_API_IP = "127.0.0.110"
ADMIN = f"http://{GATEWAY_IP}:5281"
SECRET = "component-secret-for-tests"
TOKEN = "admin-token-for-tests-0123456789"
servers = pytest.mark.servers
chatBothWays = partial(chat.chatBothWays, HOME_IP)
bounceFor = partial(chat.bounceFor, HOME_IP)


# --- HTTP from tests: urllib in a thread, so the reactor keeps serving ----------------------


def _http(method, url, headers=None):
    request = urllib.request.Request(url, method=method, headers=headers or {},
                                     data=b"" if method == "POST" else None)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=60) as response:
            status, got, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        status, got, body = e.code, e.headers, e.read()
    return status, {k.lower(): v for k, v in got.items()}, body


async def http(method, url, headers=None):
    return await deferToThread(_http, method, url, headers)


async def api(method, url, headers=None, expect=200):
    status, headers, body = await http(method, url, headers)
    assert headers["content-type"].startswith("application/json"), (status, headers, body)
    data = json.loads(body)
    assert status == expect, (status, data)
    return data


# --- a fake gateway behind the real admin Site ----------------------------------------------


SESSIONS = [
    {"direction": "out", "local": "home.test", "remote": "secure.test",
     "pairs": [["home.test", "secure.test"]], "stream_id": "s1", "peer": "192.0.2.7:5269",
     "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}, "direct_tls": False,
     "certificate": {"status": "valid", "reason": "DNS-ID secure.test", "names": "DNS:secure.test"},
     "auth": "sasl-external", "since": 1_700_000_000.0, "stanzas_in": 0, "stanzas_out": 4,
     "bytes_in": 1200, "bytes_out": 3400, "queue": 0},
    {"direction": "in", "local": "home.test", "remote": "plain.test",
     "pairs": [["plain.test", "home.test"]], "stream_id": "s2", "peer": "192.0.2.8:40000",
     "tls": None, "direct_tls": False, "certificate": None, "auth": "dialback",
     "since": 1_700_000_050.0, "stanzas_in": 7, "stanzas_out": 0, "bytes_in": 900,
     "bytes_out": 300, "queue": 0},
]
FAILURE = {"time": 1_700_000_090.0, "local": "home.test", "remote": "unreach.test",
           "condition": "remote-server-not-found",
           "text": "connecting to 192.0.2.9:5269 (unreach.test): connection refused",
           "steps": [{"step": "connect", "target": "192.0.2.9:5269 (unreach.test)", "ok": False,
                      "detail": "connection refused"}]}


class FakeGateway:
    """What the admin API asks of a GatewayService, with canned answers."""

    def __init__(self, token=None):
        self.config = SimpleNamespace(
            path="/etc/s2sgate/s2sgate.toml", local_domains=("home.test",),
            component=SimpleNamespace(jid="s2s.home.test"),
            admin=SimpleNamespace(listen="tcp:0", token=token))
        self.clock = task.Clock()
        self.clock.advance(1_700_000_100)
        self.metrics = Metrics()
        self.metrics.stanza("out", 3)
        self.reused = set()
        self.closed = []
        self.reloadError = None
        self.needsRestart = []

    def sessions(self):
        return [dict(s) for s in SESSIONS]

    def failureLog(self):
        return [FAILURE]

    def linkState(self):
        return {"jid": "s2s.home.test", "host": "127.0.0.1", "port": 5347, "state": "up",
                "buffered": 0, "buffered_bytes": 0, "backlog_bytes": 0, "inbound_paused": False,
                "inbound_paused_times": 0, "problem": None}

    async def connect(self, local, remote):
        # The refusals GatewayService.connect makes (tests/test_service.py).
        if local != "home.test":
            raise ValueError(f"{local} is not one of local_domains (home.test)")
        if remote == "home.test":
            raise ValueError(f"{remote} is served here; connect to a remote domain")
        if remote == "denied.test":
            raise PermissionError(f"federation between {local} and {remote} is not allowed")
        if remote == "unreach.test":
            raise ConnectFailed("remote-server-not-found", FAILURE["text"],
                                [Attempt("connect", "192.0.2.9:5269 (unreach.test)",
                                         "connection refused")])
        trace = [Attempt("connect", remote, "connected to 192.0.2.7:5269", ok=True),
                 Attempt("tls", remote, "TLSv1.3 TLS_AES_256_GCM_SHA384; certificate valid: ok",
                         ok=True),
                 Attempt("auth", remote, "authenticated with sasl-external", ok=True)]
        reused = (local, remote) in self.reused
        self.reused.add((local, remote))
        return Connected(dict(SESSIONS[0], remote=remote, pairs=[[local, remote]],
                              stanzas_out=0), reused, trace)

    def close(self, remote):
        self.closed.append(remote)
        return 2 if remote == "secure.test" else 0

    def reload(self):
        if self.reloadError:
            raise self.reloadError
        return list(self.needsRestart)


@pytest.fixture
def fakeAPI():
    """The admin Site for a FakeGateway on 127.0.0.110; yields (base URL, gateway)."""
    gateway = FakeGateway()
    port = reactor.listenTCP(0, AdminSite(gateway), interface=FAKE_API_IP)
    yield f"http://{FAKE_API_IP}:{port.getHost().port}", gateway
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_api_sessions_with_totals(fakeAPI):
    base, _ = fakeAPI
    data = await api("GET", base + "/api/sessions")
    assert data["sessions"] == SESSIONS
    assert data["totals"] == {"links": 2, "tls": 1, "plain": 1, "certificate": 1, "dialback": 1,
                              "unauthenticated": 0}
    assert data["now"] == 1_700_000_100


def test_totals_count_dialback_without_dialback_as_certificate():
    sessions = [{"tls": {"version": "TLSv1.3"}, "auth": "dialback-without-dialback"},
                {"tls": {"version": "TLSv1.2"}, "auth": "dialback"},
                {"tls": None, "auth": None}]
    assert sessionTotals(sessions) == {"links": 3, "tls": 2, "plain": 1, "certificate": 1,
                                       "dialback": 1, "unauthenticated": 1}


@pytest_twisted.ensureDeferred
async def test_api_failures_and_link(fakeAPI):
    base, _ = fakeAPI
    assert (await api("GET", base + "/api/failures"))["failures"] == [FAILURE]
    assert (await api("GET", base + "/api/link"))["state"] == "up"


@pytest_twisted.ensureDeferred
async def test_api_connect_answers_200_with_steps_or_502(fakeAPI):
    base, gateway = fakeAPI
    data = await api("POST", base + "/api/connect?local=Home.Test&remote=secure.test")
    assert data["session"]["remote"] == "secure.test"
    assert [s["step"] for s in data["steps"]] == ["connect", "tls", "auth"]
    assert data["reused"] is False
    data = await api("POST", base + "/api/connect?local=home.test&remote=unreach.test", expect=502)
    assert data["condition"] == "remote-server-not-found"
    assert data["steps"] == FAILURE["steps"]
    assert "unreach.test" in data["error"]
    for query, code, words in (("local=other.test&remote=x.test", 400, "local_domains"),
                               ("local=home.test&remote=home.test", 400, "served here"),
                               ("local=home.test", 400, "missing parameter remote"),
                               ("local=home.test&remote=a..b", 400, "not a domain"),
                               ("local=home.test&remote=denied.test", 403, "not allowed")):
        data = await api("POST", base + "/api/connect?" + query, expect=code)
        assert words in data["error"], data


@pytest_twisted.ensureDeferred
async def test_api_close_and_reload(fakeAPI):
    base, gateway = fakeAPI
    assert await api("POST", base + "/api/close?remote=Secure.Test") == {"remote": "secure.test",
                                                                         "closed": 2}
    gateway.needsRestart = ["s2s.listen"]
    data = await api("POST", base + "/api/reload")
    assert data == {"reloaded": "/etc/s2sgate/s2sgate.toml", "needs_restart": ["s2s.listen"]}
    gateway.reloadError = ConfigError("/etc/s2sgate/s2sgate.toml", "s2s.default_policy",
                                      "got 'maybe'", '"allow" or "deny"')
    data = await api("POST", base + "/api/reload", expect=400)
    assert data["error"] == str(gateway.reloadError)


@pytest_twisted.ensureDeferred
async def test_api_errors_are_json(fakeAPI):
    base, _ = fakeAPI
    data = await api("GET", base + "/api/nothing", expect=404)
    assert "/api/sessions" in data["error"]
    status, headers, body = await http("GET", base + "/api/reload")
    assert status == 405 and headers["allow"] == "POST"
    assert "use POST" in json.loads(body)["error"]
    await api("POST", base + "/api/sessions", expect=405)


@pytest_twisted.ensureDeferred
async def test_token_required_when_configured(fakeAPI):
    base, gateway = fakeAPI
    gateway.config.admin.token = TOKEN
    for path in ("/api/sessions", "/metrics", "/"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": "Bearer " + TOKEN[:-1]}):
            status, got, body = await http("GET", base + path, headers)
            assert status == 401, (path, headers)
            assert got["www-authenticate"].startswith("Bearer")
            assert "token" in json.loads(body)["error"]
            assert TOKEN.encode() not in body
    status, _, _ = await http("GET", base + "/api/sessions", {"Authorization": "Bearer " + TOKEN})
    assert status == 200
    # A browser can use HTTP Basic with the token as the password.
    import base64
    basic = base64.b64encode(b"admin:" + TOKEN.encode()).decode()
    status, _, _ = await http("GET", base + "/", {"Authorization": "Basic " + basic})
    assert status == 200
    # ... but a foreign page cannot ride on those credentials to POST.
    status, _, body = await http("POST", base + "/api/close?remote=secure.test",
                                 {"Authorization": "Basic " + basic,
                                  "Origin": "http://evil.example"})
    assert status == 403 and b"cross-site" in body


@pytest_twisted.ensureDeferred
async def test_without_token_foreign_hosts_and_origins_are_refused(fakeAPI):
    base, _ = fakeAPI
    # DNS rebinding: a web page's name pointed at 127.0.0.1.
    data = await api("GET", base + "/api/sessions", {"Host": "evil.example:5281"}, expect=403)
    assert "Host" in data["error"]
    await api("GET", base + "/api/sessions", {"Host": "localhost:5281"})
    # A cross-site form or fetch cannot drive the control endpoints.
    data = await api("POST", base + "/api/close?remote=secure.test",
                     {"Origin": "http://evil.example"}, expect=403)
    assert "cross-site" in data["error"]
    await api("POST", base + "/api/close?remote=secure.test", {"Origin": base})


def _rawHTTP(base, request):
    """Send C{request} as it is (urllib always adds a Host) and read the whole answer."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


@pytest_twisted.ensureDeferred
async def test_without_token_a_request_with_no_host_header_is_answered_on_loopback(fakeAPI):
    # HTTP/1.0 without Host (nc, an old probe) cannot come from a browser,
    # which always names the host, so it is no DNS-rebinding attempt.
    base, _ = fakeAPI
    answer = await deferToThread(_rawHTTP, base, b"GET /api/sessions HTTP/1.0\r\n\r\n")
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.split(b"\r\n")[0].split()[1] == b"200", answer
    assert "sessions" in json.loads(body)


@pytest_twisted.ensureDeferred
async def test_an_unexpected_error_is_a_json_500(fakeAPI):
    base, gateway = fakeAPI

    def broken():
        raise RuntimeError("something\nbroke")

    gateway.failureLog = broken
    data = await api("GET", base + "/api/failures", expect=500)
    assert data == {"error": "internal error: something broke"}


@pytest_twisted.ensureDeferred
async def test_metrics_and_page(fakeAPI):
    base, _ = fakeAPI
    status, headers, body = await http("GET", base + "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    [sample] = [s for s in families["s2sgate_stanzas"].samples
                if s.name == "s2sgate_stanzas_total" and s.labels == {"direction": "out"}]
    assert sample.value == 3
    status, headers, body = await http(
        "GET", base + "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    status, headers, body = await http("GET", base + "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b"<script>" in body and "script-src 'sha256-" in headers["content-security-policy"]


# --- a real gateway with real Prosody peers -------------------------------------------------


def gatewayToml(lab, *, host_policy="", listen_extra="", token=None):
    listen = [f"tcp:5269:interface={GATEWAY_IP}"] + ([listen_extra] if listen_extra else [])
    return f"""
local_domains = ["home.test"]
[component]
jid = "s2s.home.test"
host = "{HOME_IP}"
secret = "{SECRET}"
max_retry_delay = 2
[s2s]
listen = {json.dumps(listen)}
use_starttls = "optional"
certfile = "{lab['homeCert'][0]}"
cafile = "{lab['ca'].cafile}"
shared = "dialback-secret-for-tests"
max_retry_delay = 1
{host_policy}
[s2s.dns]
nameservers = ["{lab['nameserver']}"]
timeout = 2
retries = 1
[s2s.outgoing]
connection_timeout = 3
[admin]
listen = "tcp:5281:interface={GATEWAY_IP}"
{f'token = "{token}"' if token else ""}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from tests.lab.certs import TestCA
    from tests.lab.dns import TestDNS
    from tests.lab.prosody import Prosody

    base = tmp_path_factory.mktemp("admin")
    started = []
    ca = TestCA(base / "ca")
    dns = TestDNS(base / "dns", ip=DNS_IP)
    dns.add_srv("_xmpp-server._tcp.home.test", "gw.home.test", 5269)
    dns.add_host("gw.home.test", GATEWAY_IP)
    dns.add_host("secure.test", SECURE_IP)
    dns.add_host("plain.test", PLAIN_IP)
    dns.add_host("later.test", PLAIN_IP)
    dns.add_host("unreach.test", UNREACH_IP)
    dns.start()
    started.append(dns)
    gateway = None
    try:
        home = Prosody(base, "home", HOME_IP, hosts=["home.test"],
                       users=[("alice@home.test", "alicepw")],
                       components={"s2s.home.test": SECRET}, route_to="s2s.home.test")
        secure = Prosody(base, "secure", SECURE_IP, hosts=["secure.test"],
                         users=[("bob@secure.test", "bobpw")], dns=dns,
                         tls={"cafile": ca.cafile,
                              "certs": {"secure.test": ca.issue("secure.test", dns=["secure.test"])},
                              "secure_auth": True, "require_encryption": True})
        plain = Prosody(base, "plain", PLAIN_IP, hosts=["plain.test", "later.test"],
                        users=[("pat@plain.test", "patpw"), ("lee@later.test", "leepw")], dns=dns)
        for server in (home, secure, plain):
            server.start()
            started.append(server)
        lab = dict(ca=ca, dns=dns, homeCert=ca.issue("home.test", dns=["home.test"],
                                                     srv=["home.test"]),
                   nameserver="{}:{}".format(*dns.nameservers[0]), configPath=base / "s2sgate.toml")
        lab["configPath"].write_text(gatewayToml(lab))
        gateway = GatewayService(load_config(lab["configPath"]), reactor)
        gateway.startService()
        pytest_twisted.blockon(gateway.link.whenUp())
        pytest_twisted.blockon(gateway.admin._listening)
        assert gateway.admin.port is not None, "the admin API is not listening"
        lab["gateway"] = gateway
        yield lab
    finally:
        if gateway is not None:
            pytest_twisted.blockon(gateway.stopService())
        for server in reversed(started):
            server.stop()


async def reloadWith(lab, expect=200, headers=None, **options):
    lab["configPath"].write_text(gatewayToml(lab, **options))
    return await api("POST", ADMIN + "/api/reload", headers, expect=expect)


def byDirectionAndRemote(sessions):
    return {(s["direction"], s["remote"]): s for s in sessions}


async def waitUntil(predicate, timeout=10):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await task.deferLater(reactor, 0.05)
    assert predicate()


async def runCLI(*argv, env=None):
    """The real command in a subprocess; returns (exit status, stdout, stderr)."""
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "s2sgate", *argv], env=dict(os.environ, **(env or {})))
    return code, out.decode(), err.decode()


@servers
@pytest_twisted.ensureDeferred
async def test_sessions_show_a_tls_sasl_link_and_a_dialback_link(lab):
    await chatBothWays("bob@secure.test", "bobpw", SECURE_IP, "secure")
    await chatBothWays("pat@plain.test", "patpw", PLAIN_IP, "plain")
    data = await api("GET", ADMIN + "/api/sessions")
    links = byDirectionAndRemote(data["sessions"])
    for direction in ("out", "in"):
        secure = links[(direction, "secure.test")]
        assert secure["tls"]["version"] in ("TLSv1.2", "TLSv1.3"), secure
        assert secure["tls"]["cipher"]
        assert secure["auth"] == "sasl-external"
        assert secure["certificate"]["status"] == "valid"
        assert secure["local"] == "home.test"
        plain = links[(direction, "plain.test")]
        assert plain["tls"] is None and plain["certificate"] is None, plain
        assert plain["auth"] == "dialback"
    assert links[("out", "secure.test")]["stanzas_out"] >= 1
    assert links[("in", "plain.test")]["stanzas_in"] >= 1
    assert links[("out", "secure.test")]["peer"].startswith(SECURE_IP + ":")
    assert data["totals"] == sessionTotals(data["sessions"])
    assert data["totals"]["certificate"] >= 2 and data["totals"]["dialback"] >= 2

    # The CLI, as an operator runs it.
    code, out, err = await runCLI("sessions", "--admin", ADMIN)
    assert code == 0, err
    rows = {tuple(line.split()[:3]): line.split() for line in out.splitlines()[1:] if line.strip()}
    assert rows[("out", "home.test", "secure.test")][3:6] == [
        links[("out", "secure.test")]["tls"]["version"], "valid", "sasl-external"]
    assert rows[("in", "home.test", "plain.test")][3:6] == ["plain", "-", "dialback"]
    t = data["totals"]
    assert (f"{t['links']} links: {t['tls']} TLS, {t['plain']} plain; "
            f"{t['certificate']} by certificate, {t['dialback']} by dialback") in out
    code, out, err = await runCLI("sessions", "--admin", ADMIN, "--json")
    assert code == 0, err
    assert {(s["direction"], s["remote"]) for s in json.loads(out)["sessions"]} >= set(links)


@servers
@pytest_twisted.ensureDeferred
async def test_failed_attempt_to_an_unreachable_domain_shows_its_steps(lab):
    bounce = await bounceFor("x@unreach.test", "unreach")
    assert conditionOf(bounce) == "remote-server-not-found"
    data = await api("GET", ADMIN + "/api/failures")
    failure = next(f for f in data["failures"] if f["remote"] == "unreach.test")
    assert failure["local"] == "home.test"
    assert failure["condition"] == "remote-server-not-found"
    [step] = failure["steps"]
    assert step["step"] == "connect" and step["ok"] is False
    assert UNREACH_IP in step["target"] and step["detail"] == "connection refused"
    # connect now: the same steps come back with the 502.
    data = await api("POST", ADMIN + "/api/connect?local=home.test&remote=unreach.test",
                     expect=502)
    assert data["condition"] == "remote-server-not-found"
    assert [(s["step"], s["ok"], s["detail"]) for s in data["steps"]] == [
        ("connect", False, "connection refused")]
    code, out, err = await runCLI("failures", "--admin", ADMIN)
    assert code == 0, err
    assert "home.test -> unreach.test  remote-server-not-found" in out
    assert f"[FAIL] connect  {UNREACH_IP}:5269 (unreach.test): connection refused" in out


@servers
@pytest_twisted.ensureDeferred
async def test_connect_opens_and_authenticates_a_link_before_anyone_writes(lab):
    gateway = lab["gateway"]
    await api("POST", ADMIN + "/api/close?remote=secure.test")
    await waitUntil(lambda: not [s for s in gateway.sessions() if s["remote"] == "secure.test"])
    data = await api("POST", ADMIN + "/api/connect?local=home.test&remote=secure.test")
    session = data["session"]
    assert (session["direction"], session["local"], session["remote"]) == (
        "out", "home.test", "secure.test")
    assert session["auth"] == "sasl-external" and session["tls"]
    assert session["stanzas_out"] == 0
    # resolve -> connect -> TLS -> auth, each step recorded
    assert [(s["step"], s["ok"]) for s in data["steps"]] == [
        ("dns", True), ("connect", True), ("tls", True), ("auth", True)]
    sessions = (await api("GET", ADMIN + "/api/sessions"))["sessions"]
    assert byDirectionAndRemote(sessions)[("out", "secure.test")]["stream_id"] == \
        session["stream_id"]
    # The same through the CLI, for the dialback peer.
    await api("POST", ADMIN + "/api/close?remote=plain.test")
    await waitUntil(lambda: not [s for s in gateway.sessions() if s["remote"] == "plain.test"])
    code, out, err = await runCLI("connect", "home.test", "plain.test", "--admin", ADMIN)
    assert code == 0, out + err
    assert "[ok]   connect" in out and "[ok]   auth     plain.test: authenticated with dialback" in out
    assert "connected: home.test -> plain.test, plain, certificate none, auth dialback" in out
    code, out, err = await runCLI("connect", "home.test", "unreach.test", "--admin", ADMIN)
    assert code == 1
    assert "[FAIL] connect" in out
    assert err.startswith("s2sgate: cannot connect home.test -> unreach.test:") and \
        err.count("\n") == 1


@servers
@pytest_twisted.ensureDeferred
async def test_metrics_count_a_burst_exactly(lab):
    N = 25

    async def scrape():
        status, headers, body = await http("GET", ADMIN + "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(body.decode())}

    def stanzasOut(families):
        return sum(s.value for s in families["s2sgate_stanzas"].samples
                   if s.name == "s2sgate_stanzas_total" and s.labels["direction"] == "out")

    await chatBothWays("bob@secure.test", "bobpw", SECURE_IP, "warm")
    alice = await login("alice@home.test", "alicepw", HOME_IP)
    bob = await login("bob@secure.test", "bobpw", SECURE_IP)
    try:
        before = await scrape()
        for i in range(N):
            alice.send(message("bob@secure.test", f"burst-{i}"))
        for i in range(N):
            await bob.wait_for(isMessage(f"burst-{i}"), timeout=20)
        # A later message on the same path, then the counters: nothing of the
        # burst is still on its way.
        await marker(alice, bob, "after-burst")
        after = await scrape()
    finally:
        await alice.disconnect()
        await bob.disconnect()
    assert stanzasOut(after) - stanzasOut(before) == N + 1
    streams = {(s.labels["direction"], s.labels["security"], s.labels["auth"]): s.value
               for s in after["s2sgate_streams"].samples}
    assert streams[("out", "tls", "sasl-external")] >= 1
    assert after["s2sgate_component_link_up"].samples[0].value == 1


@servers
@pytest_twisted.ensureDeferred
async def test_reload_applies_a_new_host_policy_and_reports_restart_keys(lab):
    await chatBothWays("lee@later.test", "leepw", PLAIN_IP, "later-before")
    deny = 'host_policy = [ { host = "later.test", policy = "deny" } ]'
    try:
        data = await reloadWith(lab, host_policy=deny,
                                listen_extra=f"tcp:5299:interface={GATEWAY_IP}")
        assert data["needs_restart"] == ["s2s.listen"]
        bounce = await bounceFor("lee@later.test", "later-denied")
        assert conditionOf(bounce) == "not-allowed"
        # A config that does not load is refused with its one line; nothing changes.
        lab["configPath"].write_text("local_domains = [\n")
        data = await api("POST", ADMIN + "/api/reload", expect=400)
        assert data["error"].startswith(str(lab["configPath"]) + ": ")
        assert "\n" not in data["error"]
        code, out, err = await runCLI("reload", "--admin", ADMIN)
        assert code == 2 and err.startswith("s2sgate: reload refused") and err.count("\n") == 1
        assert lab["gateway"].config.s2s.host_policy
    finally:
        await reloadWith(lab)
    code, out, err = await runCLI("reload", "--admin", ADMIN)
    assert code == 0 and out.startswith(f"reloaded {lab['configPath']}"), out + err
    await chatBothWays("lee@later.test", "leepw", PLAIN_IP, "later-after")


@servers
@pytest_twisted.ensureDeferred
async def test_token_is_required_once_configured(lab):
    await reloadWith(lab, token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for method, path in (("GET", "/api/sessions"), ("GET", "/metrics"), ("GET", "/"),
                             ("POST", "/api/reload"), ("POST", "/api/close?remote=plain.test")):
            status, headers, body = await http(method, ADMIN + path)
            assert status == 401, path
            assert "token" in json.loads(body)["error"]
        await api("GET", ADMIN + "/api/sessions", auth)
        code, out, err = await runCLI("sessions", "--admin", ADMIN)
        assert code == 1 and "no token" in err
        code, out, err = await runCLI("sessions", "--admin", ADMIN,
                                      env={"S2SGATE_ADMIN_TOKEN": TOKEN})
        assert code == 0 and "by dialback" in out, err
        code, out, err = await runCLI("sessions", "--config", str(lab["configPath"]))
        assert code == 0 and "by dialback" in out, err
    finally:
        await reloadWith(lab, headers=auth)
    await api("GET", ADMIN + "/api/sessions")


class _Collect(ProcessProtocol):
    def __init__(self):
        self.out, self.err, self.done = [], [], defer.Deferred()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.done.callback(reason.value.exitCode)


async def runBrowser(browser, argv, env, timeout=90):
    """Run the browser in its own process group; kill the whole group if it hangs."""
    collect = _Collect()
    process = reactor.spawnProcess(collect, "setsid", ["setsid", browser, *argv], env=env)

    def kill():
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (OSError, TypeError):
            pass

    call = reactor.callLater(timeout, kill)
    try:
        code = await collect.done
    finally:
        if call.active():
            call.cancel()
    return b"".join(collect.out), b"".join(collect.err), code


@servers
@pytest_twisted.ensureDeferred
async def test_status_page_in_headless_chromium_shows_the_links(lab):
    browser = chromium()
    await chatBothWays("bob@secure.test", "bobpw", SECURE_IP, "page-secure")
    await chatBothWays("pat@plain.test", "patpw", PLAIN_IP, "page-plain")
    await bounceFor("x@unreach.test", "page-unreach")
    with tempfile.TemporaryDirectory(prefix="s2sgate-chromium-") as profile:
        argv = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-proxy-server", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                "--dump-dom", ADMIN + "/"]
        env = {"HOME": profile, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        out, err, code = await runBrowser(browser, argv, env)
        screenshot = os.environ.get("S2SGATE_SCREENSHOT")   # to look at the page yourself
        if screenshot:
            argv[argv.index("--dump-dom")] = f"--screenshot={os.path.abspath(screenshot)}"
            argv.insert(0, "--window-size=1400,800")
            await runBrowser(browser, argv, env)
    dom = out.decode("utf-8", "replace")
    assert code == 0, err.decode(errors="replace")[-2000:]
    tbody = dom.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert "secure.test" in tbody and "plain.test" in tbody
    assert "STARTTLS" in tbody and "plain, not encrypted" in tbody
    assert "sasl-external" in tbody and "dialback" in tbody
    assert "by certificate" in dom
    failures = dom.split('id="failures"', 1)[1]
    assert "unreach.test" in failures and "connection refused" in failures
    assert '<div id="problem" hidden=""></div>' in dom     # every fetch worked
    assert "updated " in dom
    link = dom.split('id="link"', 1)[1].split("</p>", 1)[0]
    assert "up" in link and "s2s.home.test" in link and "null" not in link


# the access checks, one rule each (what scripts/mutate found untested)


def _basic(credentials):
    import base64
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_basic_credentials_that_are_not_base64_are_refused():
    from s2sgate.ops.admin.api import _tokenMatches
    assert _tokenMatches("Basic %%%not-base64%%%", "secret") is False


def test_basic_credentials_with_characters_outside_base64_are_refused():
    from s2sgate.ops.admin.api import _tokenMatches
    # Without validation the '!' would be dropped and the rest decode to the token.
    assert _tokenMatches("Basic !" + _basic("admin:secret")[6:], "secret") is False


def test_basic_password_is_everything_after_the_first_colon():
    from s2sgate.ops.admin.api import _tokenMatches
    assert _tokenMatches(_basic("admin:to:ken"), "to:ken") is True


def test_bearer_token_after_more_than_one_space_is_read():
    from s2sgate.ops.admin.api import _tokenMatches
    assert _tokenMatches("Bearer   secret", "secret") is True


def test_bracketed_ipv6_host_with_a_port_is_an_address():
    from s2sgate.ops.admin.api import _isAddressHost
    assert _isAddressHost("[::1]:5281") is True


def test_bracketed_name_is_not_an_address():
    from s2sgate.ops.admin.api import _isAddressHost
    assert _isAddressHost("[evil.example]:5281") is False


def test_fully_qualified_localhost_is_accepted():
    from s2sgate.ops.admin.api import _isAddressHost
    assert _isAddressHost("localhost.:5281") is True


def test_host_without_a_port_is_judged_whole():
    from s2sgate.ops.admin.api import _isAddressHost
    assert (_isAddressHost("127.0.0.1"), _isAddressHost("evil.example")) == (True, False)
