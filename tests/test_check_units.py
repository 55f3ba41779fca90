"""
`s2sgate check` without real servers: the Checker against s2sgate's own inbound
streams listening in this process on loopback (NET.x below), with real TLS and test
certificates, and an in-memory DNS.  Each peer is one way a remote server can be
set up (good certificate, wrong name, expired, no STARTTLS, SRV "."), and each
test reads the verdict of every step and the JSON.

  good.test    NET.1      STARTTLS, certificate DNS:good.test
  wrong.test   NET.2      STARTTLS, certificate DNS:other.test
  expired.test NET.3      STARTTLS, expired certificate for expired.test
  plain.test   NET.4      no TLS at all (use_starttls = "false")
  both.test    NET.5      STARTTLS on 5269 and direct TLS on 5270, both in SRV
  dot.test     SRV "."    (no service)

NET is 127.N.8 with N from the id of the process that runs the test (net()), so that
two test runs on one machine (two mutmut workers, forked from one process, or a
mutation run beside a unit suite) do not both listen on NET.x:5269.

Every peer's dialback secret (s2s.shared) is "shared-" + its domain: checking
good.test as one of our own domains with that secret proves its listener is ours.
"""

import dataclasses
import os

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.protocols.tls import TLSMemoryBIOFactory

from s2sgate.auth.tls import TLSContexts
from s2sgate.config import MultiplexConfig, parse_config
from s2sgate.gateway.runtime import Current, Runtime
from s2sgate.net.resolver import S2SResolver
from s2sgate.ops.check import Checker, CheckOptions
from s2sgate.s2s.inbound import InboundFactory
from s2sgate.s2s.sessions import SessionTable
from tests.lab.certs import TestCA
from tests.s2sfakes import FakeVerifier, makeRouter
from tests.test_resolver import FakeResolver, a, srv


def net():
    return f"127.{8 + os.getpid() % 200}.8"


def peers():
    return {"good.test": (f"{net()}.1", {"dns": ["good.test"]}),
            "wrong.test": (f"{net()}.2", {"dns": ["other.test"]}),
            "expired.test": (f"{net()}.3", {"dns": ["expired.test"], "expired": True}),
            "plain.test": (f"{net()}.4", None),
            "both.test": (f"{net()}.5", {"dns": ["both.test"]})}


def peerConfig(domain, certfile, cafile):
    s2s = {"use_starttls": "required", "certfile": str(certfile), "cafile": str(cafile),
           "shared": f"shared-{domain}"}
    if certfile is None:
        s2s = {"use_starttls": "false", "shared": f"shared-{domain}"}
    return parse_config({"local_domains": [domain],
                         "component": {"jid": f"s2s.{domain}", "secret": "x"},
                         "s2s": s2s}, f"{domain}.toml")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One listening s2sgate inbound side per peer domain; an in-memory DNS for all."""
    ca = TestCA(tmp_path_factory.mktemp("check-units"))
    ports = []
    records = {("_xmpp-server._tcp.dot.test", 33): [srv("_xmpp-server._tcp.dot.test", ".")]}
    for domain, (ip, cert) in peers().items():
        certfile = ca.issue(domain, **cert)[0] if cert is not None else None
        config = peerConfig(domain, certfile, ca.cafile)
        tls = TLSContexts(config.s2s, config.local_domains) if certfile else None
        current = Current(Runtime.build(config, tls=tls))
        factory = InboundFactory(reactor, current, makeRouter(current), FakeVerifier(),
                                 SessionTable())
        ports.append(reactor.listenTCP(5269, factory, interface=ip))
        records[(domain, 1)] = [a(domain, ip)]
        if domain == "both.test":
            direct = InboundFactory(reactor, current, makeRouter(current), FakeVerifier(),
                                    SessionTable(), directTLS=True)
            ports.append(reactor.listenTCP(5270, TLSMemoryBIOFactory(
                tls.directTLSServerCreator(), False, direct), interface=ip))
            records[("_xmpps-server._tcp.both.test", 33)] = [
                srv("_xmpps-server._tcp.both.test", "both.test", 5270)]
            records[("_xmpp-server._tcp.both.test", 33)] = [
                srv("_xmpp-server._tcp.both.test", "both.test", 5269)]
    yield {"ca": ca, "records": records}
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


def checker(lab, domain, local=(), extraChecks=(), **s2s):
    """A Checker with the gateway's default policy, trusting the test CA, presenting no cert."""
    base = parse_config({"local_domains": ["home.test"],
                         "component": {"jid": "s2s.home.test", "secret": "x"},
                         "s2s": {"use_starttls": "false"}}, "check.toml").s2s
    config = dataclasses.replace(base, cafile=str(lab["ca"].cafile),
                                 use_starttls=s2s.pop("use_starttls", "required"), **s2s)
    resolver = S2SResolver(reactor, resolver=FakeResolver(lab["records"]), port=5269,
                           ip_versions=(4,))
    return Checker(reactor, CheckOptions(domain, s2s=config, timeout=5, localDomains=local),
                   resolver=resolver, extraChecks=extraChecks)


async def run(lab, domain, local=(), **s2s):
    report = await checker(lab, domain, local, **s2s).run()
    return report, {s.name: s for s in report.steps}, report.toJSON()


@pytest_twisted.ensureDeferred
async def test_a_good_peer_passes_every_step(lab):
    report, steps, doc = await run(lab, "good.test")
    assert [s.name for s in report.steps] == [
        "name", "srv-xmpps", "srv", "addresses", "tcp", "stream", "tls", "certificate",
        "authentication", "stream-features"]
    assert steps["tls"].status == "ok" and steps["tls"].summary.startswith("STARTTLS: TLSv1.")
    assert steps["certificate"].status == "ok"
    assert steps["certificate"].data["dns"] == ["good.test"]
    assert steps["stream"].data["features"]["starttls_required"] is True
    # The peer offers dialback after TLS; EXTERNAL only to a valid certificate (we sent none).
    assert steps["authentication"].data["dialback"] is True
    assert steps["authentication"].data["sasl_external"] is False
    assert doc["verdict"] == {"ok": True, "exit_status": 0,
                              "text": "federation with good.test can work, but see the "
                                      "1 warning above"}


@pytest_twisted.ensureDeferred
async def test_a_wrong_name_fails_the_certificate_step_without_stopping_federation(lab):
    report, steps, doc = await run(lab, "wrong.test")
    cert = steps["certificate"]
    assert (cert.status, cert.fatal, cert.data["status"]) == ("fail", False, "name-mismatch")
    assert cert.data["dns"] == ["other.test"]
    assert "get one that covers wrong.test" in cert.advice[0]
    assert doc["verdict"]["ok"] is True    # dialback still authenticates it here


@pytest_twisted.ensureDeferred
async def test_a_wrong_name_is_fatal_under_required_trusted(lab):
    report, steps, doc = await run(lab, "wrong.test", use_starttls="required_trusted")
    assert steps["certificate"].fatal is True
    assert doc["verdict"]["ok"] is False and doc["verdict"]["exit_status"] == 1


@pytest_twisted.ensureDeferred
async def test_an_expired_certificate_is_reported_as_expired(lab):
    report, steps, doc = await run(lab, "expired.test")
    cert = steps["certificate"]
    assert (cert.status, cert.data["status"]) == ("fail", "expired")
    assert cert.data["days_left"] < 0
    assert cert.advice and "renew it" in cert.advice[0]


@pytest_twisted.ensureDeferred
async def test_a_peer_without_starttls_fails_the_tls_step_when_tls_is_required(lab):
    report, steps, doc = await run(lab, "plain.test")
    assert steps["tls"].status == "fail" and steps["tls"].fatal
    assert "does not offer STARTTLS" in steps["tls"].summary
    assert steps["certificate"].status == "skipped"
    assert steps["authentication"].data["after_tls"] is False
    assert doc["verdict"]["ok"] is False


@pytest_twisted.ensureDeferred
async def test_a_peer_without_starttls_is_a_warning_when_tls_is_optional(lab):
    report, steps, doc = await run(lab, "plain.test", use_starttls="optional")
    assert steps["tls"].status == "warn" and not steps["tls"].fatal
    assert doc["verdict"]["ok"] is True


@pytest_twisted.ensureDeferred
async def test_srv_dot_says_there_is_no_federation_service(lab):
    report, steps, doc = await run(lab, "dot.test")
    assert steps["srv"].status == "fail" and steps["srv"].fatal
    assert "publishes SRV '.'" in steps["srv"].summary
    assert [steps[n].status for n in ("tcp", "stream", "tls", "certificate",
                                      "authentication")] == ["skipped"] * 5
    assert doc["verdict"]["exit_status"] == 1


@pytest_twisted.ensureDeferred
async def test_the_json_has_the_same_shape_for_every_step(lab):
    report, steps, doc = await run(lab, "good.test")
    assert set(doc) == {"domain", "ascii_domain", "from", "nameservers", "steps", "verdict"}
    for step in doc["steps"]:
        assert set(step) == {"name", "title", "status", "summary", "details", "advice",
                             "fatal", "data", "ok"}


# --- what the best testers report too -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_offered_features_show_the_peers_limits_and_dialback_errors(lab):
    report, steps, doc = await run(lab, "good.test")
    features = steps["stream-features"]
    assert features.status == "ok"
    # The peer is an s2sgate inbound stream: XEP-0478 limits with its stanza_size_limit.
    assert features.data["limits"]["max_bytes"] == 524288
    assert features.data["dialback_errors"] is True
    # An s2sgate offers bidi (XEP-0288) and <sm/> before authentication (so that dialback
    # peers can enable it).
    assert (features.data["bidi"], features.data["stream_management"]) == (True, True)
    assert "dialback with errors (XEP-0220)" in features.summary
    assert "stream management (XEP-0198)" in features.summary
    # It speaks dialback: our further local domains would share one stream with it.
    assert features.data["multiplex"] is True
    assert ("our local domains can share one stream to good.test: each further one asks for "
            "it with dialback (XEP-0220 multiplexing)") in features.details


@pytest_twisted.ensureDeferred
async def test_offered_features_say_each_local_domain_gets_its_own_stream_with_multiplex_off(lab):
    report, steps, doc = await run(lab, "good.test", multiplex=MultiplexConfig(enabled=False))
    features = steps["stream-features"]
    assert features.data["multiplex"] is False
    assert ("each local domain opens a stream of its own (s2s.multiplex.enabled = false)"
            in features.details)


@pytest_twisted.ensureDeferred
async def test_direct_tls_and_starttls_are_probed_separately(lab):
    report, steps, doc = await run(lab, "both.test")
    # _xmpps-server comes first: the main steps are the direct TLS probe ...
    assert steps["stream"].data["direct_tls"] is True
    assert steps["tls"].summary.startswith("direct TLS (XEP-0368): TLSv1.")
    assert steps["certificate"].status == "ok"
    # ... and STARTTLS on the _xmpp-server target gets its own step.
    other = steps["starttls"]
    assert other.status == "ok" and other.title == f"STARTTLS at {net()}.5:5269 (both.test)"
    assert other.summary.startswith("STARTTLS: TLSv1.")
    assert [s["name"] for s in other.data["steps"]] == [
        "stream", "tls", "certificate", "authentication", "stream-features"]
    assert doc["verdict"]["ok"] is True


@pytest_twisted.ensureDeferred
async def test_a_peer_with_only_starttls_gets_no_second_probe(lab):
    report, steps, doc = await run(lab, "good.test")
    assert "starttls" not in steps and "direct-tls" not in steps


@pytest_twisted.ensureDeferred
async def test_our_own_srv_target_proves_it_reaches_this_gateway(lab):
    report, steps, doc = await run(lab, "good.test", local=("good.test",),
                                   shared="shared-good.test")
    own = steps["own-listener"]
    assert own.status == "ok", own
    assert own.summary == "1 of 1 reachable target answered as this gateway"
    assert own.data["targets"][0]["ours"] is True


@pytest_twisted.ensureDeferred
async def test_our_own_srv_target_at_another_server_is_fatal(lab):
    report, steps, doc = await run(lab, "good.test", local=("good.test",),
                                   shared="not-the-secret-good.test-uses")
    own = steps["own-listener"]
    assert (own.status, own.fatal) == ("fail", True)
    assert "is served by another server" in own.summary
    assert own.data["targets"][0]["answer"] == "invalid"


@pytest_twisted.ensureDeferred
async def test_without_a_shared_secret_the_listener_cannot_be_proved(lab):
    report, steps, doc = await run(lab, "good.test", local=("good.test",))
    own = steps["own-listener"]
    assert own.status == "skipped" and "s2s.shared is not set" in own.summary


@pytest_twisted.ensureDeferred
async def test_our_presented_certificate_days_left(lab):
    certfile = lab["ca"].issue("home.test", dns=["home.test"], days=10)[0]
    report, steps, doc = await run(lab, "good.test", local=("home.test",), certfile=certfile)
    mine = steps["presented-certificate"]
    assert mine.status == "warn" and mine.data["days_left"] in (9, 10)
    assert mine.data["covers"] is True and "renew it" in mine.advice[0]
    # Presenting it, EXTERNAL is offered to us now.
    assert steps["authentication"].data["sasl_external"] is True


@pytest_twisted.ensureDeferred
async def test_an_s2s_address_override_is_probed_where_the_gateway_goes(lab):
    from s2sgate.config import AddressOverride

    override = AddressOverride(host="nodns.test", ip_address=f"{net()}.1", port=5269)
    report, steps, doc = await run(lab, "nodns.test", address=(override,),
                                   use_starttls="optional")
    assert not steps["srv"].fatal
    assert steps["tcp"].data["addresses"][0]["address"] == f"{net()}.1:5269"
    # It reached good.test's server there, which rightly does not serve nodns.test.
    assert steps["stream"].data["address"] == f"{net()}.1:5269"
    assert "host-unknown" in steps["stream"].summary
    assert steps["name"].data["override"] == {"ip_address": f"{net()}.1", "port": 5269}


@pytest_twisted.ensureDeferred
async def test_extra_checks_get_the_peers_chain(lab):
    from s2sgate.ops.check import Step

    seen = []

    async def tlsa(checker, reachable, peerChain):
        seen.append((checker.domain, [str(a) for _, a in reachable], peerChain is not None))
        return Step("tlsa", "TLSA", summary="seen")

    report = await checker(lab, "good.test", extraChecks=(tlsa,)).run()
    assert seen == [("good.test", [f"{net()}.1:5269"], True)]
    assert [s.name for s in report.steps][-2:] == ["stream-features", "tlsa"]
