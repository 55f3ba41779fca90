"""`s2sgate check DOMAIN` against real Prosody TLS peers and a test DNS.

  127.0.0.90  Prosody, s2s STARTTLS required on 5269, direct TLS on 5270,
              secure_auth (certificates only, no dialback), trusts the test CA:
                good.test   certificate DNS:good.test; SRV _xmpps-server (5270) and
                            _xmpp-server (5269) -> xmpp.good.test
                nosrv.test  certificate DNS:nosrv.test; only an A record
                wrong.test  certificate DNS:other.test (wrong name); SRV -> wrong.test:5269
  127.0.0.91  nothing listens: closed.test's SRV points at port 5299 there;
              home.test (our own domain in the config) resolves there too
  café.test   (xn--caf-dma.test) resolves to 127.0.0.90, which does not serve it
  missing.test  does not exist (NXDOMAIN)
  127.0.0.99  the test DNS (when free)

`check` runs as a subprocess (`python -m s2sgate check ...`): it owns its reactor.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.lab.certs import TestCA
from tests.lab.dns import TestDNS, pick_dns_ip
from tests.lab.prosody import Prosody

pytestmark = pytest.mark.servers

PEER_IP, CLOSED_IP = "127.0.0.90", "127.0.0.91"
DTLS_PORT = 5270


@pytest.fixture(scope="module")
def labdir(tmp_path_factory):
    return tmp_path_factory.mktemp("check")


@pytest.fixture(scope="module")
def ca(labdir):
    return TestCA(labdir / "ca")


@pytest.fixture(scope="module")
def dns(labdir):
    d = TestDNS(labdir / "dns", ip=pick_dns_ip("127.0.0.99"))
    for name, ip in (("good.test", PEER_IP), ("xmpp.good.test", PEER_IP),
                     ("nosrv.test", PEER_IP), ("wrong.test", PEER_IP),
                     ("closed.test", CLOSED_IP), ("home.test", CLOSED_IP),
                     ("xn--caf-dma.test", PEER_IP)):
        d.add_host(name, ip)
    d.add_srv("_xmpps-server._tcp.good.test", "xmpp.good.test", DTLS_PORT)
    d.add_srv("_xmpp-server._tcp.good.test", "xmpp.good.test", 5269)
    d.add_srv("_xmpp-server._tcp.wrong.test", "wrong.test", 5269)
    d.add_srv("_xmpp-server._tcp.closed.test", "closed.test", 5299)
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def peer(labdir, ca, dns):
    certs = {"good.test": ca.issue("good.test", dns=["good.test"]),
             "nosrv.test": ca.issue("nosrv.test", dns=["nosrv.test"]),
             "wrong.test": ca.issue("wrong.test", dns=["other.test"])}
    p = Prosody(labdir, "peer", PEER_IP, hosts=list(certs), dns=dns,
                tls={"cafile": ca.cafile, "certs": certs, "secure_auth": True,
                     "require_encryption": True, "direct_tls_port": DTLS_PORT})
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def config(labdir, ca, dns):
    """Our gateway's config: home.test with a certificate from the test CA."""
    home, _ = ca.issue("home.test", dns=["home.test"])
    conf, _ = ca.issue("conf.home.test", dns=["other.home.test"])
    ns = f"{dns.ip}:{dns.port}"
    path = labdir / "s2sgate.toml"
    path.write_text(f"""
local_domains = ["home.test", "conf.home.test"]

[component]
jid = "s2s.home.test"
secret = "secret"

[s2s]
use_starttls = "required"
certfile = "{home}"
cafile = "{ca.cafile}"
domain_certfile = [ {{ domain = "conf.home.test", certfile = "{conf}" }} ]

[s2s.dns]
nameservers = ["{ns}"]
""")
    return path


def check(*args, timeout=60):
    r = subprocess.run([sys.executable, "-m", "s2sgate", "check", "--timeout", "5", *args],
                       capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout, r.stderr


def steps(out):
    doc = json.loads(out)
    return doc, {s["name"]: s for s in doc["steps"]}


def test_good_peer(peer, config):
    code, out, err = check("good.test", "--config", str(config))
    assert code == 0, out + err
    assert err == ""
    assert "✘" not in out, out
    assert "priority 0 weight 5 port 5270 xmpp.good.test." in out
    assert "priority 0 weight 5 port 5269 xmpp.good.test." in out
    assert "127.0.0.90:5270 (xmpp.good.test, direct TLS): open" in out
    assert "direct TLS (XEP-0368): TLSv1." in out and "ALPN xmpp-server" in out
    assert "✔ certificate: valid for good.test (names DNS:good.test" in out
    assert "offered: SASL EXTERNAL (after TLS)" in out, out
    assert out.rstrip().splitlines()[-1] == "Verdict: ✔ federation with good.test can work"


def test_good_peer_json(peer, config):
    code, out, err = check("good.test", "--config", str(config), "--json")
    assert code == 0, out + err
    doc, by = steps(out)
    assert doc["verdict"] == {"ok": True, "exit_status": 0,
                              "text": "federation with good.test can work"}
    assert doc["from"] == "home.test"
    for name in ("name", "srv-xmpps", "srv", "addresses", "tcp", "stream", "tls",
                 "certificate", "authentication"):
        assert by[name]["ok"] is True and by[name]["status"] == "ok", by[name]
        assert {"name", "ok", "details", "advice", "summary"} <= set(by[name])
    assert by["srv"]["data"]["records"] == [
        {"priority": 0, "weight": 5, "port": 5269, "target": "xmpp.good.test"}]
    assert by["certificate"]["data"]["dns"] == ["good.test"]
    assert by["certificate"]["data"]["days_left"] >= 363
    assert by["authentication"]["data"]["sasl_external"] is True
    assert by["authentication"]["data"]["dialback"] is False
    # Direct TLS came first; STARTTLS on the _xmpp-server target is probed on its own.
    other = by["starttls"]
    assert other["status"] == "ok", other
    assert other["title"] == "STARTTLS at 127.0.0.90:5269 (xmpp.good.test)"
    assert [(s["name"], s["status"]) for s in other["data"]["steps"]][:3] == [
        ("stream", "ok"), ("tls", "ok"), ("certificate", "ok")]
    # Prosody 0.12: no XEP-0478 limits, no bidi (mod_s2s_bidi not loaded), no dialback.
    assert by["stream-features"]["data"] == {"limits": None, "bidi": False,
                                             "stream_management": None,
                                             "dialback_errors": None, "multiplex": False}
    assert by["presented-certificate"]["status"] == "ok"
    assert by["presented-certificate"]["data"]["days_left"] >= 363


def test_no_srv_record(peer, config):
    code, out, err = check("nosrv.test", "--config", str(config))
    assert code == 0, out + err
    assert "! SRV _xmpp-server._tcp.nosrv.test: none: servers fall back to nosrv.test port 5269" in out
    assert ("this works, but an SRV record is recommended: add "
            "`_xmpp-server._tcp.nosrv.test. 3600 IN SRV 0 5 5269 nosrv.test.`") in out
    assert "✔ TLS: STARTTLS: TLSv1." in out
    assert "✔ certificate: valid for nosrv.test" in out
    assert "Verdict: ✔ federation with nosrv.test can work, but see the 1 warning above" in out


def test_wrong_name_certificate(peer, config):
    code, out, err = check("wrong.test", "--config", str(config))
    assert code == 1, out + err
    assert "✘ certificate: certificate is not valid for wrong.test: it names DNS:other.test" in out
    assert "the certificate names only DNS:other.test — get one that covers wrong.test" in out
    assert ("Verdict: ✘ federation with wrong.test cannot work: wrong.test offers no "
            "dialback, so it can only authenticate to us with its certificate, which is not "
            "valid (certificate is not valid for wrong.test: it names DNS:other.test)") in out


def test_wrong_name_certificate_required_trusted(peer, config, tmp_path):
    strict = tmp_path / "strict.toml"
    strict.write_text(config.read_text().replace('use_starttls = "required"',
                                                 'use_starttls = "required_trusted"'))
    code, out, err = check("wrong.test", "--config", str(strict), "--json")
    assert code == 1, out + err
    doc, by = steps(out)
    assert by["certificate"]["ok"] is False and by["certificate"]["fatal"] is True
    assert by["certificate"]["data"]["status"] == "name-mismatch"
    assert by["certificate"]["data"]["dns"] == ["other.test"]
    assert doc["verdict"]["ok"] is False and doc["verdict"]["exit_status"] == 1
    assert "certificate is not valid for wrong.test" in doc["verdict"]["text"]


def test_without_config_uses_system_trust(peer, dns):
    """No config: from = check.invalid, no certificate of ours, the system CA store
    (which does not know the test CA)."""
    code, out, err = check("good.test", "--nameserver", f"{dns.ip}:{dns.port}", "--json")
    assert code == 1, out + err
    doc, by = steps(out)
    assert doc["from"] == "check.invalid"
    assert by["tls"]["ok"] is True
    assert by["certificate"]["data"]["status"] == "untrusted"
    assert "system's CA store" in " ".join(by["certificate"]["advice"])
    auth = by["authentication"]
    assert auth["ok"] is False and auth["data"]["our_certificate_presented"] is False
    assert "not-authorized" in " ".join(auth["details"])


def test_closed_port(dns):
    code, out, err = check("closed.test", "--nameserver", f"{dns.ip}:{dns.port}")
    assert code == 1, out + err
    assert "127.0.0.91:5299 (closed.test): connection refused" in out
    assert "port 5299 on 127.0.0.91 is closed" in out
    assert "open it in the firewall" in out and "forward" in out and "NAT" in out
    assert "- stream: not checked: no target is reachable" in out
    assert "Verdict: ✘ federation with closed.test cannot work: no address" in out


def test_missing_domain(dns):
    code, out, err = check("missing.test", "--nameserver", f"{dns.ip}:{dns.port}", "--json")
    assert code == 1, out + err
    doc, by = steps(out)
    assert by["addresses"]["ok"] is False
    assert by["addresses"]["summary"] == "missing.test does not exist in DNS (NXDOMAIN)"
    assert by["tcp"]["ok"] is None and by["tcp"]["status"] == "skipped"
    assert doc["verdict"]["exit_status"] == 1


def test_local_domain_certificates(dns, config):
    code, out, err = check("home.test", "--config", str(config), "--json")
    doc, by = steps(out)
    assert code == 1, out + err  # nothing listens for home.test in this lab
    assert doc["from"] == "conf.home.test"
    ours = by["our-certificate"]
    assert ours["ok"] is True, ours
    assert ours["data"]["covers"] is True and ours["data"]["key_matches"] is True
    assert ours["data"]["chain"] == "trusted"
    other = by["domain-certfile"]
    assert other["ok"] is False and other["fatal"] is False
    assert "names only DNS:other.home.test, not conf.home.test" in other["summary"]


def test_idn_domain_not_served(peer, config):
    code, out, err = check("café.test", "--config", str(config), "--json")
    assert code == 1, out + err
    doc, by = steps(out)
    assert doc["ascii_domain"] == "xn--caf-dma.test"
    assert by["name"]["summary"] == "café.test is xn--caf-dma.test in DNS (IDNA 2008 A-label form)"
    assert by["tcp"]["ok"] is True
    stream = by["stream"]
    assert stream["fatal"] is True and "host-unknown" in stream["summary"]
    assert "does not serve xn--caf-dma.test" in stream["advice"][0]


def test_usage_errors(tmp_path):
    assert check("bad domain")[0] == 2
    code, _out, err = check("x.test", "--nameserver", "not-an-ip")
    assert code == 2 and "--nameserver" in err and "Traceback" not in err
    code, _out, err = check("x.test", "--config", str(tmp_path / "nope.toml"))
    assert code == 2 and "nope.toml" in err and "Traceback" not in err
