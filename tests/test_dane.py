"""
DANE for outbound s2s (RFC 7673): the verdict on certificates by TLSA
records, the AD bit through the resolver (a real DNS server in tests/lab
that sets it), and the stream refusing a mismatch or a missing TLSA where
DANE is required.
"""

import dataclasses
import datetime
import hashlib
import re

import pytest
import pytest_twisted
from OpenSSL import crypto
from twisted.internet import task
from twisted.names import dns

from s2sgate.auth.certs import TrustStore, verifyPeer
from s2sgate.auth.dane import associationData
from s2sgate.auth.requirements import Requirements
from s2sgate.features.starttls import StartTLS
from s2sgate.net.connector import Connector
from s2sgate.net.dnssec import AuthenticatedLookup
from s2sgate.net.resolver import S2SResolver, Target, TLSARecord, TLSASet
from s2sgate.s2s.negotiation import InitiatingStream
from tests.lab.addns import ADServer, tlsaRecord
from tests.lab.certs import TestCA
from tests.s2sfakes import LOCAL, REMOTE, makeConfig
from tests.test_inbound_tls import FakeTLS, TLSTransport
from tests.test_outbound_tls import PROCEED, STARTTLS, failure, features, peerHeader
from tests.test_resolver import a, srv

PEER = "peer.test"
HOST = "xmpp.peer.test"


def load(certfile):
    """(leaf, [chain...]) of a TestCA PEM (leaf + CA + key)."""
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                        open(certfile, "rb").read(), re.S)
    certs = [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in blocks]
    return certs[0], certs[1:]


def record(cert, usage, selector=1, mtype=1):
    return TLSARecord(usage, selector, mtype,
                      associationData(cert.to_cryptography(), selector, mtype))


def tlsaSet(*records):
    return TLSASet(f"_5269._tcp.{HOST}", HOST, tuple(records))


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("dane-ca"))


# --- the verdict ------------------------------------------------------------------


def test_dane_ee_spki_sha256_authenticates_a_self_signed_certificate(ca):
    leaf, chain = load(ca.issue(PEER, dns=[PEER], self_signed=True)[0])
    trust = TrustStore(ca.cafile)
    assert verifyPeer(trust, leaf, chain, PEER).status == "self-signed"
    v = verifyPeer(trust, leaf, chain, PEER, dane=tlsaSet(record(leaf, 3, 1, 1)))
    assert (v.status, v.dane) == ("valid", "dane-ee")
    assert "DANE-EE" in v.reason and "_5269._tcp.xmpp.peer.test" in v.reason


def test_dane_ee_full_certificate_sha512_ignores_names(ca):
    leaf, chain = load(ca.issue("other.test", dns=["other.test"], self_signed=True)[0])
    v = verifyPeer(TrustStore(ca.cafile), leaf, chain, PEER,
                   dane=tlsaSet(record(leaf, 3, 0, 2)))
    assert (v.status, v.dane) == ("valid", "dane-ee")


def test_dane_ta_authenticates_a_chain_to_a_ca_nobody_trusts(ca):
    leaf, chain = load(ca.issue(PEER, dns=[PEER], untrusted=True)[0])
    trust = TrustStore(ca.cafile)
    assert verifyPeer(trust, leaf, chain, PEER).status == "untrusted"
    v = verifyPeer(trust, leaf, chain, PEER, dane=tlsaSet(record(chain[0], 2, 0, 1)))
    assert (v.status, v.dane) == ("valid", "dane-ta")


def test_dane_ta_accepts_the_srv_target_as_the_name(ca):
    leaf, chain = load(ca.issue(HOST, dns=[HOST], untrusted=True)[0])
    v = verifyPeer(TrustStore(ca.cafile), leaf, chain, PEER,
                   dane=tlsaSet(record(chain[0], 2, 1, 2)))
    assert (v.status, v.dane) == ("valid", "dane-ta")


def test_dane_ta_with_a_name_of_someone_else_is_a_mismatch(ca):
    leaf, chain = load(ca.issue("evil.test", dns=["evil.test"], untrusted=True)[0])
    v = verifyPeer(TrustStore(ca.cafile), leaf, chain, PEER,
                   dane=tlsaSet(record(chain[0], 2, 0, 1)))
    assert (v.status, v.dane) == ("dane-mismatch", "mismatch")
    assert "evil.test" in v.reason


def test_mismatch_refuses_even_a_publicly_trusted_certificate(ca):
    leaf, chain = load(ca.issue(PEER, dns=[PEER])[0])
    other, _ = load(ca.issue(PEER, dns=[PEER])[0])
    trust = TrustStore(ca.cafile)
    assert verifyPeer(trust, leaf, chain, PEER).status == "valid"
    v = verifyPeer(trust, leaf, chain, PEER, dane=tlsaSet(record(other, 3, 1, 1)))
    assert (v.status, v.valid, v.trusted) == ("dane-mismatch", False, False)
    assert "does not match the DNSSEC-authenticated TLSA records" in v.reason


def test_pkix_usages_are_unusable_and_leave_the_pkix_verdict(ca):
    leaf, chain = load(ca.issue(PEER, dns=[PEER], self_signed=True)[0])
    v = verifyPeer(TrustStore(ca.cafile), leaf, chain, PEER,
                   dane=tlsaSet(record(leaf, 1, 1, 1)))
    assert (v.status, v.dane) == ("self-signed", None)


def test_dane_ta_judges_the_dates_by_the_clock_it_is_given(ca):
    leaf, chain = load(ca.issue(PEER, dns=[PEER], untrusted=True)[0])
    later = leaf.to_cryptography().not_valid_after_utc + datetime.timedelta(days=1)
    v = verifyPeer(TrustStore(ca.cafile), leaf, chain, PEER, now=later,
                   dane=tlsaSet(record(chain[0], 2, 0, 1)))
    assert (v.status, v.dane) == ("dane-mismatch", "mismatch")
    assert "does not chain to the DANE-TA" in v.reason


def test_a_tlsa_set_that_cannot_be_checked_refuses_the_peer(ca):
    """Fail closed: DNSSEC said there are TLSA records; the PKIX verdict does not stand in."""
    leaf, chain = load(ca.issue(PEER, dns=[PEER])[0])
    broken = TLSASet(f"_5269._tcp.{HOST}", HOST, (None,))
    v = verifyPeer(TrustStore(ca.cafile), leaf, chain, PEER, dane=broken)
    assert (v.status, v.dane, v.valid) == ("dane-mismatch", "mismatch", False)
    assert (v.identities.dns, v.notAfter) == ((PEER,), leaf.to_cryptography().not_valid_after_utc)
    assert v.reason.startswith("certificate cannot be checked against the TLSA records (")


# --- the stream ---------------------------------------------------------------------


class DaneTLS(FakeTLS):
    def __init__(self, verdict):
        super().__init__({REMOTE: verdict})
        self.daneSeen = []

    def peerVerdict(self, conn, domain, dane=None):
        self.daneSeen.append(dane)
        return self.verdicts[domain]


def negotiate(verdict, tlsa, **s2s):
    s = dataclasses.replace(makeConfig().s2s, use_starttls="optional", **s2s)
    tls = DaneTLS(verdict)
    stream = InitiatingStream(task.Clock(), LOCAL, REMOTE, [StartTLS()],
                              requirements=Requirements(s), tls=tls)
    stream.makeConnection(TLSTransport())
    if tlsa is not None:
        stream.useDANE(tlsa)
    results = []
    stream.ready.addBoth(results.append)
    stream.dataReceived(peerHeader() + features(STARTTLS))
    stream.dataReceived(PROCEED)
    stream.handshakeCompleted()
    return stream, tls, results


def verdict(status, dane=None):
    from s2sgate.auth.certs import PeerCertificate
    return PeerCertificate(status, f"certificate {status}", dane=dane)


def test_stream_judges_the_certificate_with_the_tlsa_it_was_given():
    tlsa = tlsaSet(TLSARecord(3, 1, 1, b"x" * 32))
    stream, tls, results = negotiate(verdict("valid", "dane-ee"), tlsa, dane="opportunistic")
    assert tls.daneSeen == [tlsa]
    assert results == []
    assert "DANE dane-ee" in stream.securitySummary()


def test_dane_mismatch_refuses_the_peer_even_when_nothing_demands_trust():
    tlsa = tlsaSet(TLSARecord(3, 1, 1, b"x" * 32))
    stream, tls, results = negotiate(verdict("dane-mismatch", "mismatch"), tlsa,
                                     dane="opportunistic")
    e = failure(results)
    assert e.condition == "remote-server-not-found"
    assert "failed the certificate check" in e.text


def test_dane_domain_without_tlsa_is_refused():
    stream, tls, results = negotiate(verdict("valid"), None, dane_domains=(REMOTE,))
    assert "DANE is required" in failure(results).text


def test_dane_domain_whose_certificate_matches_its_tlsa_is_accepted():
    tlsa = tlsaSet(TLSARecord(3, 1, 1, b"x" * 32))
    stream, tls, results = negotiate(verdict("valid", "dane-ee"), tlsa, dane_domains=(REMOTE,))
    assert results == []
    assert "DANE dane-ee" in stream.securitySummary()


def test_opportunistic_without_tlsa_keeps_the_pkix_rules():
    stream, tls, results = negotiate(verdict("self-signed"), None, dane="opportunistic")
    assert results == [] and tls.daneSeen == [None]


# --- the AD bit, from a real DNS server ---------------------------------------------------

DNS_IP = "127.0.6.53"


def zone(certData):
    tlsaName = f"_5269._tcp.{HOST}"
    records = {}
    for domain, host in ((PEER, HOST), ("plain.test", "xmpp.plain.test")):
        xs = f"_xmpp-server._tcp.{domain}"
        records[(xs, dns.SRV)] = [srv(xs, host, 5269)]
        records[(host, dns.A)] = [a(host, "127.0.6.60")]
        records[(f"_5269._tcp.{host}", 52)] = [tlsaRecord(f"_5269._tcp.{host}", 3, 1, 1,
                                                          certData)]
    records[(tlsaName, 52)].append(tlsaRecord(tlsaName, 0, 0, 1, b"\x01" * 32))
    return records


@pytest.fixture
def adServer():
    from twisted.internet import reactor
    server = ADServer(zone(hashlib.sha256(b"spki").digest()),
                      unsigned={"_xmpp-server._tcp.plain.test", "_5269._tcp.xmpp.plain.test"})
    port = reactor.listenUDP(0, server, interface=DNS_IP)
    yield server, port.getHost().port
    port.stopListening()


def realResolver(port):
    from twisted.internet import reactor
    servers = [(DNS_IP, port)]
    return S2SResolver(reactor, nameservers=servers, timeout=2, retries=0,
                       dnssec=AuthenticatedLookup(reactor, servers, (2,)))


@pytest_twisted.ensureDeferred
async def test_authenticated_srv_and_tlsa_reach_the_connection(adServer):
    server, port = adServer
    resolver = realResolver(port)
    [target] = await resolver.targets(PEER)
    assert target == Target(HOST, 5269, False, secure=True)
    tlsa = await resolver.tlsa(target)
    assert tlsa.name == f"_5269._tcp.{HOST}" and tlsa.host == HOST
    assert [(r.usage, r.selector, r.mtype) for r in tlsa.records] == [(3, 1, 1), (0, 0, 1)]
    assert tlsa.records[0].data == hashlib.sha256(b"spki").digest()
    assert all(ad for _, _, ad in server.queries), "every query asks for the AD bit"


@pytest_twisted.ensureDeferred
async def test_no_ad_bit_means_no_dane(adServer):
    server, port = adServer
    resolver = realResolver(port)
    [target] = await resolver.targets("plain.test")
    assert target.secure is False
    assert await resolver.tlsa(target) is None
    assert [q for q in server.queries if q[1] == 52] == [], "no TLSA asked for an insecure SRV"
    signedSRVunsignedTLSA = Target("xmpp.plain.test", 5269, secure=True)
    assert await resolver.tlsa(signedSRVunsignedTLSA) is None


@pytest_twisted.ensureDeferred
async def test_connector_hands_the_tlsa_of_the_winning_target(adServer):
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    server, port = adServer
    listener = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.6.60")
    resolver = realResolver(port)
    try:
        tcp = listener.getHost().port
        server.records[(f"_xmpp-server._tcp.{PEER}", dns.SRV)] = [
            srv(f"_xmpp-server._tcp.{PEER}", HOST, tcp)]
        tlsaName = f"_{tcp}._tcp.{HOST}"
        server.records[(tlsaName, 52)] = [tlsaRecord(tlsaName, 3, 1, 1, b"\x02" * 32)]
        connection = await Connector(reactor, resolver, timeout=2).connect(
            PEER, Factory.forProtocol(Protocol))
        connection.protocol.transport.loseConnection()
    finally:
        await listener.stopListening()
    assert connection.dane is not None and connection.dane.name == tlsaName
    assert connection.dane.records == (TLSARecord(3, 1, 1, b"\x02" * 32),)



@pytest_twisted.ensureDeferred
async def test_check_reports_the_authenticated_tlsa(adServer):
    from twisted.internet import reactor

    from s2sgate.ops.check import Checker, CheckOptions
    server, port = adServer
    s2s = dataclasses.replace(makeConfig().s2s, use_starttls="optional", dane="opportunistic")
    options = CheckOptions(PEER, s2s=s2s, nameservers=((DNS_IP, port),), timeout=1,
                           dnsTimeout=1, dnsRetries=0)
    report = await Checker(reactor, options).run()
    [step] = [s for s in report.steps if s.name == "dane"]
    assert step.status == "ok"
    assert step.summary.startswith(f"DNSSEC-authenticated TLSA _5269._tcp.{HOST}: 3 1 1")


@pytest_twisted.ensureDeferred
async def test_check_says_no_dane_without_the_ad_bit(adServer):
    from twisted.internet import reactor

    from s2sgate.ops.check import Checker, CheckOptions
    server, port = adServer
    s2s = dataclasses.replace(makeConfig().s2s, use_starttls="optional",
                              dane_domains=("plain.test",))
    options = CheckOptions("plain.test", s2s=s2s, nameservers=((DNS_IP, port),), timeout=1,
                           dnsTimeout=1, dnsRetries=0)
    report = await Checker(reactor, options).run()
    [step] = [s for s in report.steps if s.name == "dane"]
    assert (step.status, step.fatal) == ("fail", True)
    assert "not DNSSEC-authenticated" in step.summary


# --- what operators see -------------------------------------------------------------


def test_sessions_and_cli_show_how_dane_decided():
    from types import SimpleNamespace

    from s2sgate.auth.certs import PeerCertificate
    from s2sgate.commands.ops import certificateColumn
    from s2sgate.s2s.sessions import sessionInfo
    stream = SimpleNamespace(direction="out", local=LOCAL, peer=REMOTE, streamId="s",
                             peerAddress="127.0.6.60:5269", secure=True, tlsInfo={},
                             directTLS=False, authMethod="dialback", since=0, bytesIn=0,
                             bytesOut=0, bidi=False)
    info = sessionInfo(stream, [[LOCAL, REMOTE]], stanzasIn=0, stanzasOut=0, queue=0,
                       certificate=PeerCertificate("valid", "by DANE", dane="dane-ee"))
    assert info["certificate"]["dane"] == "dane-ee"
    assert certificateColumn(info["certificate"]) == "valid (DANE dane-ee)"
    assert certificateColumn({"status": "valid", "dane": None}) == "valid"
