"""
The operator commands (s2sgate.commands.ops) against a running admin API:
the real admin Site in the test reactor, serving a fake gateway
(tests.test_admin.FakeGateway) on 127.0.0.111.  The command runs in a thread
(it blocks on urllib) while the reactor answers.  The same commands against
a real gateway: tests/test_admin.py.
"""

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from s2sgate import cli
from s2sgate.commands.ops import adminURL
from s2sgate.config import ConfigError
from s2sgate.ops.admin import AdminSite
from tests.test_admin import FAILURE, SESSIONS, TOKEN, FakeGateway

API_IP = "127.0.0.111"
NOTHING_IP = "127.0.0.112"   # nothing listens there


@pytest.fixture
def admin():
    gateway = FakeGateway()
    port = reactor.listenTCP(0, AdminSite(gateway), interface=API_IP)
    gateway.url = f"http://{API_IP}:{port.getHost().port}"
    yield gateway
    pytest_twisted.blockon(port.stopListening())


async def run(capsys, *argv):
    capsys.readouterr()
    code = await deferToThread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest_twisted.ensureDeferred
async def test_sessions_table_and_totals(admin, capsys):
    code, out, err = await run(capsys, "sessions", "--admin", admin.url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["DIR", "LOCAL", "REMOTE", "SECURITY", "CERTIFICATE", "AUTH", "PEER",
                                "SINCE", "STANZAS", "IN/OUT", "QUEUE", "SM", "UNACKED"]
    assert lines[1].split() == ["in", "home.test", "plain.test", "plain", "-", "dialback",
                                "192.0.2.8:40000", "50s", "7/0", "0", "off", "-"]
    assert lines[2].split() == ["out", "home.test", "secure.test", "TLSv1.3", "valid",
                                "sasl-external", "192.0.2.7:5269", "1m", "0/4", "0", "off", "-"]
    assert lines[-1] == "2 links: 1 TLS, 1 plain; 1 by certificate, 1 by dialback"
    # Columns line up.
    assert lines[1].index("plain.test") == lines[2].index("secure.test")


@pytest_twisted.ensureDeferred
async def test_sessions_json_is_the_api_answer(admin, capsys):
    code, out, err = await run(capsys, "sessions", "--admin", admin.url, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["sessions"] == SESSIONS
    assert data["totals"]["certificate"] == 1


@pytest_twisted.ensureDeferred
async def test_no_sessions(admin, capsys):
    admin.sessions = lambda: []
    code, out, err = await run(capsys, "sessions", "--admin", admin.url)
    assert code == 0
    assert out == "no s2s links\n0 links: 0 TLS, 0 plain; 0 by certificate, 0 by dialback\n"


@pytest_twisted.ensureDeferred
async def test_failures_with_their_steps(admin, capsys):
    code, out, err = await run(capsys, "failures", "--admin", admin.url)
    assert code == 0
    first, step = out.splitlines()
    assert first.endswith("(10s ago)  home.test -> unreach.test  remote-server-not-found: "
                          "connecting to 192.0.2.9:5269 (unreach.test): connection refused")
    assert step == "  [FAIL] connect  192.0.2.9:5269 (unreach.test): connection refused"
    code, out, err = await run(capsys, "failures", "--admin", admin.url, "--json")
    assert json.loads(out)["failures"] == [FAILURE]


@pytest_twisted.ensureDeferred
async def test_connect_prints_each_step_and_the_session(admin, capsys):
    code, out, err = await run(capsys, "connect", "home.test", "secure.test", "--admin", admin.url)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "connecting home.test -> secure.test ...",
        "  [ok]   connect  secure.test: connected to 192.0.2.7:5269",
        "  [ok]   tls      secure.test: TLSv1.3 TLS_AES_256_GCM_SHA384; certificate valid: ok",
        "  [ok]   auth     secure.test: authenticated with sasl-external",
        "connected: home.test -> secure.test, TLSv1.3 (TLS_AES_256_GCM_SHA384), certificate valid, "
        "auth sasl-external, peer 192.0.2.7:5269, stream s1",
    ]
    code, out, err = await run(capsys, "connect", "home.test", "secure.test", "--admin", admin.url)
    assert "  already connected" in out.splitlines()


@pytest_twisted.ensureDeferred
async def test_connect_failure_exits_non_zero_with_the_steps(admin, capsys):
    code, out, err = await run(capsys, "connect", "home.test", "unreach.test", "--admin", admin.url)
    assert code == 1
    assert "  [FAIL] connect  192.0.2.9:5269 (unreach.test): connection refused" in out
    assert err == ("s2sgate: cannot connect home.test -> unreach.test: connecting to "
                   "192.0.2.9:5269 (unreach.test): connection refused\n")
    code, out, err = await run(capsys, "connect", "home.test", "unreach.test", "--admin",
                               admin.url, "--json")
    assert code == 1
    assert json.loads(out)["condition"] == "remote-server-not-found"
    code, out, err = await run(capsys, "connect", "home.test", "denied.test", "--admin", admin.url)
    assert code == 1 and "not allowed" in err and err.count("\n") == 1


@pytest_twisted.ensureDeferred
async def test_close(admin, capsys):
    code, out, err = await run(capsys, "close", "secure.test", "--admin", admin.url)
    assert (code, out) == (0, "closed 2 streams with secure.test\n")
    code, out, err = await run(capsys, "close", "nobody.test", "--admin", admin.url)
    assert (code, out) == (0, "no open stream with nobody.test\n")
    code, out, err = await run(capsys, "close", "a..b", "--admin", admin.url)
    assert code == 1 and "not a domain" in err
    assert admin.closed == ["secure.test", "nobody.test"]


@pytest_twisted.ensureDeferred
async def test_reload(admin, capsys):
    admin.needsRestart = ["s2s.listen", "admin.listen"]
    code, out, err = await run(capsys, "reload", "--admin", admin.url)
    assert code == 0
    assert out.splitlines() == [
        "reloaded /etc/s2sgate/s2sgate.toml: policies, certificates and limits apply to new streams",
        "changed but only applied after a restart: s2s.listen, admin.listen"]
    admin.reloadError = ConfigError("/etc/s2sgate/s2sgate.toml", "s2s.default_policy",
                                    "got 'maybe'", '"allow" or "deny"')
    code, out, err = await run(capsys, "reload", "--admin", admin.url)
    assert code == 2
    assert err == ("s2sgate: reload refused, still running on the previous config: "
                   "/etc/s2sgate/s2sgate.toml: s2s.default_policy: got 'maybe'; "
                   'allowed: "allow" or "deny"\n')


@pytest_twisted.ensureDeferred
async def test_token(admin, capsys, monkeypatch):
    admin.config.admin.token = TOKEN
    code, out, err = await run(capsys, "sessions", "--admin", admin.url)
    assert code == 1
    assert err.startswith(f"s2sgate: the admin API at {admin.url} refused the request: no token")
    assert err.count("\n") == 1
    code, out, err = await run(capsys, "sessions", "--admin", admin.url, "--token", "nope")
    assert code == 1 and "wrong token" in err and "nope" not in err
    code, out, err = await run(capsys, "sessions", "--admin", admin.url, "--token", TOKEN)
    assert code == 0 and "2 links" in out
    monkeypatch.setenv("S2SGATE_ADMIN_TOKEN", TOKEN)
    code, out, err = await run(capsys, "sessions", "--admin", admin.url)
    assert code == 0 and "2 links" in out


@pytest_twisted.ensureDeferred
async def test_address_and_token_from_the_config_file(admin, capsys, tmp_path):
    admin.config.admin.token = TOKEN
    port = admin.url.rsplit(":", 1)[1]
    config = tmp_path / "s2sgate.toml"
    config.write_text(
        'local_domains = ["home.test"]\n[component]\njid = "s2s.home.test"\nsecret = "x"\n'
        '[s2s]\nuse_starttls = "false"\n'
        f'[admin]\nlisten = "tcp:{port}:interface={API_IP}"\ntoken = "{TOKEN}"\n')
    code, out, err = await run(capsys, "failures", "--config", str(config))
    assert (code, err) == (0, "")
    assert "unreach.test" in out
    config.write_text(config.read_text().replace(f'listen = "tcp:{port}:interface={API_IP}"',
                                                 'listen = ""'))
    code, out, err = await run(capsys, "failures", "--config", str(config))
    assert code == 2 and "admin.listen" in err and TOKEN not in err
    config.write_text("nonsense = [")
    code, out, err = await run(capsys, "failures", "--config", str(config))
    assert code == 2 and err.startswith(f"s2sgate: {config}: ")


@pytest_twisted.ensureDeferred
async def test_unreachable_api_is_one_line(capsys):
    url = f"http://{NOTHING_IP}:9"
    code, out, err = await run(capsys, "sessions", "--admin", url)
    assert code == 1
    assert err == (f"s2sgate: cannot reach the admin API at {url}: connection refused — "
                   "is s2sgate running with [admin] listen?\n")


@pytest_twisted.ensureDeferred
async def test_something_else_than_the_api(capsys):
    from twisted.web.pages import notFound
    from twisted.web.server import Site

    port = reactor.listenTCP(0, Site(notFound()), interface=API_IP)
    try:
        url = f"http://{API_IP}:{port.getHost().port}"
        code, out, err = await run(capsys, "sessions", "--admin", url)
    finally:
        await port.stopListening()
    assert code == 1
    assert "is not the s2sgate admin API (HTTP 404" in err and err.count("\n") == 1


@pytest_twisted.ensureDeferred
async def test_unix_socket(tmp_path, capsys):
    gateway = FakeGateway()
    path = str(tmp_path / "admin.sock")
    port = reactor.listenUNIX(path, AdminSite(gateway))
    try:
        code, out, err = await run(capsys, "sessions", "--admin", "unix:" + path)
    finally:
        await port.stopListening()
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "2 links: 1 TLS, 1 plain; 1 by certificate, 1 by dialback"


def test_bad_admin_url(capsys):
    assert cli.main(["sessions", "--admin", "127.0.0.1:5281"]) == 2
    assert "is not an http:// URL" in capsys.readouterr().err


@pytest.mark.parametrize("listen, url", [
    ("tcp:5281:interface=127.0.0.1", "http://127.0.0.1:5281"),
    ("tcp:port=8080:interface=127.0.0.5", "http://127.0.0.5:8080"),
    ("tcp:5281", "http://127.0.0.1:5281"),
    (r"tcp6:5281:interface=\:\:1", "http://[::1]:5281"),
    (r"tcp6:5281:interface=\:\:", "http://[::1]:5281"),
    ("unix:/run/s2sgate/admin.sock", "unix:/run/s2sgate/admin.sock"),
    ("unix:address=/run/a.sock:mode=600", "unix:/run/a.sock"),
])
def test_admin_url_from_listen(listen, url):
    assert adminURL(listen) == url


def test_help_lists_the_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("sessions", "failures", "connect", "close", "reload"):
        assert name in out


@pytest.fixture
def twoProcesses(tmp_path):
    """Two admin APIs (two gateway processes) and the first one's config naming the second."""
    first, second = FakeGateway(), FakeGateway()
    second.linkState = lambda: {"jid": "s2s2.home.test", "host": "127.0.0.1", "port": 5347,
                                "state": "up", "buffered": 0, "problem": None}
    ports = [reactor.listenTCP(0, AdminSite(g), interface=API_IP) for g in (first, second)]
    urls = [f"http://{API_IP}:{p.getHost().port}" for p in ports]
    config = tmp_path / "s2sgate.toml"
    config.write_text('local_domains = ["home.test"]\n[component]\njid = "s2s.home.test"\n'
                      'secret = "x"\n[s2s]\nuse_starttls = "false"\nshared = "s"\n'
                      f'[admin]\nlisten = "tcp:{ports[0].getHost().port}:interface={API_IP}"\n'
                      f'peers = ["{urls[1]}", "http://{NOTHING_IP}:5281"]\n')
    yield config, urls
    for p in ports:
        pytest_twisted.blockon(p.stopListening())


@pytest_twisted.ensureDeferred
async def test_sessions_all_asks_every_peer_of_the_config_and_names_the_process(twoProcesses,
                                                                                capsys):
    config, urls = twoProcesses
    code, out, err = await run(capsys, "sessions", "--all", "--config", str(config))
    lines = out.splitlines()
    assert lines[:3] == [f"s2s.home.test at {urls[0]}: link up, 2 links",
                         f"s2s2.home.test at {urls[1]}: link up, 2 links",
                         f"? at http://{NOTHING_IP}:5281: NOT REACHED"]
    table = [line.split()[:4] for line in lines if line.startswith("s2s") and " at " not in line]
    assert sorted(table) == sorted([["s2s.home.test", "in", "home.test", "plain.test"],
                                    ["s2s.home.test", "out", "home.test", "secure.test"],
                                    ["s2s2.home.test", "in", "home.test", "plain.test"],
                                    ["s2s2.home.test", "out", "home.test", "secure.test"]])
    assert "4 links: 2 TLS, 2 plain; 2 by certificate, 2 by dialback" in lines
    # One peer did not answer: said on stderr and in the exit status.
    assert code == 1 and f"cannot reach the admin API at http://{NOTHING_IP}:5281" in err


@pytest_twisted.ensureDeferred
async def test_sessions_all_needs_the_config_with_the_peers(admin, capsys):
    code, out, err = await run(capsys, "sessions", "--all", "--admin", admin.url)
    assert code == 2 and "--all needs --config FILE" in err
@pytest_twisted.ensureDeferred
async def test_sessions_mark_a_bidi_stream_as_used_both_ways(admin, capsys, monkeypatch):
    bidi = [dict(SESSIONS[0], bidi=True), dict(SESSIONS[1], bidi=False)]
    monkeypatch.setattr(admin, "sessions", lambda: bidi)
    code, out, err = await run(capsys, "sessions", "--admin", admin.url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["in", "home.test", "plain.test"]
    assert lines[2].split()[:3] == ["out+in", "home.test", "secure.test"]
