"""Peer certificate verdicts: s2sgate.auth.certs (RFC 6125 / RFC 7712 identities)."""
from __future__ import annotations

import datetime as _dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import crypto

from s2sgate.auth.certs import (
    Identities,
    PeerCertificate,
    TrustStore,
    decodeDERString,
    identitiesOf,
    matchesDomain,
    verifyPeer,
)
from tests.lab.certs import TestCA
from tests.lab.require import missing

XMPP_ADDR = ObjectIdentifier("1.3.6.1.5.5.7.8.5")
SRV_NAME = ObjectIdentifier("1.3.6.1.5.5.7.8.7")


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def trust(ca):
    return TrustStore(ca.cafile)


def load(certfile):
    """(leaf, chain) from a TestCA certfile."""
    certs = x509.load_pem_x509_certificates(open(certfile, "rb").read())
    return certs[0], certs[1:]


def issue(ca, name, **kw):
    return load(ca.issue(name, **kw)[0])


def der(tag, data):
    assert len(data) < 0x80
    return bytes([tag, len(data)]) + data


def custom(sans=(), *, selfSigned=False, ca=None, notBefore=None, issuer=None):
    """A leaf with arbitrary SAN entries; self-signed, signed by TestCA's CA or by
    C{issuer}, a (name, key) pair."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _dt.datetime.now(_dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")])
    if selfSigned:
        issuerName, issuerKey = subject, key
    elif issuer is not None:
        issuerName, issuerKey = issuer
    else:
        issuerName, issuerKey = ca._ca.name, ca._ca.key
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuerName)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(notBefore or now - _dt.timedelta(days=1))
         .not_valid_after(now + _dt.timedelta(days=30)))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(issuerKey, hashes.SHA256())


def intermediate(ca, notBefore, notAfter):
    """An intermediate CA under TestCA's root valid from C{notBefore} to C{notAfter}:
    (certificate, (name, key)) to sign leaves with."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "short-lived intermediate")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca._ca.name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(notBefore).not_valid_after(notAfter)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca._ca.key, hashes.SHA256()))
    return cert, (name, key)


# --- identities -----------------------------------------------------------------


def test_identitiesOf_reads_all_three_kinds(ca):
    leaf, _ = issue(ca, "a.test", dns=["a.test"], srv=["b.test"], xmpp=["c.test"])
    ids = identitiesOf(leaf)
    assert ids == Identities(("a.test",), ("_xmpp-server.b.test",), ("c.test",))
    # pyOpenSSL certificates are accepted as well
    assert identitiesOf(crypto.X509.from_cryptography(leaf)) == ids


def test_identitiesOf_skips_undecodable_other_names(ca):
    # (cryptography refuses to build otherNames that are not DER at all;
    # decodeDERString's own tests cover truncated and over-long values.)
    leaf = custom([
        x509.OtherName(XMPP_ADDR, der(0x16, b"bad-tag.test")),   # IA5, not UTF8
        x509.OtherName(XMPP_ADDR, der(0x04, b"a.test")),          # OCTET STRING
        x509.OtherName(XMPP_ADDR, der(0x0C, b"\xff\xfe.test")),   # not UTF-8
        x509.OtherName(SRV_NAME, der(0x0C, b"_xmpp-server.x.test")),  # UTF8, not IA5
        x509.OtherName(ObjectIdentifier("1.2.3.4"), der(0x0C, b"a.test")),
        x509.OtherName(XMPP_ADDR, der(0x0C, b"ok.test")),
    ], ca=ca)
    assert identitiesOf(leaf) == Identities((), (), ("ok.test",))


def test_decodeDERString():
    assert decodeDERString(b"\x0c\x03abc", 0x0C) == b"abc"
    long = b"x" * 200
    assert decodeDERString(b"\x0c\x81\xc8" + long, 0x0C) == long
    for bad in (b"", b"\x0c", b"\x0c\x80abc", b"\x0c\x81\x03abc",  # indefinite, non-minimal
                b"\x0c\x04abc", b"\x0c\x02abc", b"\x16\x03abc", b"\x0c\x85\x00\x00\x00\x00\x03"):
        with pytest.raises(ValueError):
            decodeDERString(bad, 0x0C)


def test_decodeDERString_reads_an_empty_value():
    assert decodeDERString(b"\x0c\x00", 0x0C) == b""


def test_decodeDERString_reads_128_octets_in_the_long_form():
    """128 is the first length that needs the long form: minimal DER."""
    assert decodeDERString(b"\x0c\x81\x80" + b"x" * 128, 0x0C) == b"x" * 128


def test_decodeDERString_refuses_a_long_form_length_with_a_leading_zero_octet():
    with pytest.raises(ValueError):
        decodeDERString(b"\x0c\x82\x00\x81" + b"x" * 0x81, 0x0C)


def test_decodeDERString_refuses_the_indefinite_form_even_with_128_octets_after_it():
    """0x80 is the indefinite form, not a length of 128."""
    with pytest.raises(ValueError):
        decodeDERString(b"\x0c\x80" + b"x" * 0x80, 0x0C)


def test_decodeDERString_reads_a_four_octet_length():
    value = b"x" * 0x1000000
    assert decodeDERString(b"\x0c\x84\x01\x00\x00\x00" + value, 0x0C) == value


def test_identitiesOf_skips_empty_and_nul_holding_names(ca):
    leaf = custom([
        x509.DNSName(""),
        x509.OtherName(XMPP_ADDR, der(0x0C, b"")),
        x509.OtherName(XMPP_ADDR, der(0x0C, b"a.test\0.evil.test")),
        x509.OtherName(SRV_NAME, der(0x16, b"")),
        x509.OtherName(SRV_NAME, der(0x16, b"_xmpp-server.a.test\0")),
    ], ca=ca)
    assert identitiesOf(leaf) == Identities()


# --- matching -------------------------------------------------------------------


def test_dns_id_exact_and_case_insensitive():
    ids = Identities(dns=("A.Test",))
    assert matchesDomain(ids, "a.test")
    assert matchesDomain(ids, "A.TEST")
    assert not matchesDomain(ids, "b.test")
    assert not matchesDomain(ids, "x.a.test")


@pytest.mark.parametrize("domain, expected", [
    ("a.example.com", True),
    ("xmpp.example.com", True),
    ("example.com", False),
    ("a.b.example.com", False),
    ("a.example.org", False),
    ("aexample.com", False),
])
def test_wildcard(domain, expected):
    assert matchesDomain(Identities(dns=("*.example.com",)), domain) is expected


@pytest.mark.parametrize("pattern", [
    "f*.example.com", "*f.example.com", "a.*.example.com", "*.*.example.com",
    "*.com", "*", "*.", "a.example.*",
])
def test_bad_wildcards_never_match(pattern):
    for domain in ("foo.example.com", "a.example.com", "example.com",
                   "a.b.example.com", "x.com", "a.example.x"):
        assert not matchesDomain(Identities(dns=(pattern,)), domain)


def test_srv_id():
    ids = Identities(srv=("_xmpp-server.a.test",))
    assert matchesDomain(ids, "a.test")
    assert not matchesDomain(ids, "b.test")
    assert matchesDomain(Identities(srv=("_xmpps-server.a.test",)), "a.test")
    assert matchesDomain(Identities(srv=("_XMPP-Server.A.test",)), "a.test")
    for other in ("_xmpp-client.a.test", "_imap.a.test", "xmpp-server.a.test",
                  "_xmpp-server.*.test", "_xmpp-server.x.a.test"):
        assert not matchesDomain(Identities(srv=(other,)), "a.test"), other


def test_a_wildcard_srv_id_never_matches():
    """RFC 6125 has no wildcard SRV-IDs (service_identity refuses them too)."""
    for pattern in ("_xmpp-server.*.a.test", "_xmpps-server.*.a.test"):
        assert not matchesDomain(Identities(srv=(pattern,)), "x.a.test"), pattern


_otherDomains = st.lists(st.from_regex(r"[a-z]{1,8}\.other\.test", fullmatch=True),
                         max_size=4)


@settings(deadline=None)
@given(before=_otherDomains, after=_otherDomains,
       kind=st.sampled_from(["dns", "srv", "xmpp"]))
def test_any_identity_of_several_may_name_the_domain(before, after, kind):
    """Names that do not match (service_identity raises for each) do not end the search."""
    form = {"dns": "{}", "srv": "_xmpp-server.{}", "xmpp": "{}"}[kind]
    names = tuple(form.format(d) for d in [*before, "a.test", *after])
    assert matchesDomain(Identities(**{kind: names}), "a.test")


def test_xmpp_addr():
    assert matchesDomain(Identities(xmpp=("a.test",)), "a.test")
    assert matchesDomain(Identities(xmpp=("A.Test",)), "a.test")
    for other in ("b.test", "user@a.test", "a.test/resource", "*.test", "", "a.test."):
        assert not matchesDomain(Identities(xmpp=(other,)), "a.test"), other


def test_no_identities_never_match():
    assert not matchesDomain(Identities(), "a.test")
    assert not matchesDomain(None, "a.test")


def test_idn():
    ids = Identities(dns=("xn--bcher-kva.test",))
    assert matchesDomain(ids, "xn--bcher-kva.test")
    assert matchesDomain(ids, "bücher.test")  # a U-label is normalised first
    assert not matchesDomain(ids, "bucher.test")
    # An XmppAddr is UTF-8 and may hold U-labels
    assert matchesDomain(Identities(xmpp=("bücher.test",)), "xn--bcher-kva.test")
    # Non-ASCII DNS names are not valid dNSNames: no match
    assert not matchesDomain(Identities(dns=("bücher.test",)), "xn--bcher-kva.test")


def test_invalid_domain_is_no_match():
    ids = Identities(dns=("a.test",), xmpp=("a.test",))
    for bad in ("", "a.test.", "[::1]", "a..test", "\0", "-" * 300):
        assert not matchesDomain(ids, bad)


_names = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[*a-zA-Z0-9_.@/-]{0,30}", fullmatch=True),
    st.sampled_from(["*.a.test", "_xmpp-server.a.test", "a.test", "*", ".", "_", "xn--", "xn--zz.test"]),
)


@settings(max_examples=300, deadline=None)
@given(dns=st.lists(_names, max_size=3), srv=st.lists(_names, max_size=3),
       xmpp=st.lists(_names, max_size=3),
       domain=st.one_of(st.text(max_size=40), st.sampled_from(["a.test", "b.a.test"])))
def test_matchesDomain_never_raises(dns, srv, xmpp, domain):
    result = matchesDomain(Identities(tuple(dns), tuple(srv), tuple(xmpp)), domain)
    assert result is True or result is False


# --- verdicts -------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    dict(dns=["a.test"]),
    dict(srv=["a.test"]),
    dict(xmpp=["a.test"]),
    dict(dns=["*.test"]),  # two labels: wildcard not allowed -> checked below
], ids=["dns", "srv", "xmpp", "wild2"])
def test_verify_single_identity(ca, trust, kw):
    leaf, chain = issue(ca, "a.test", **kw)
    verdict = verifyPeer(trust, leaf, chain, "a.test")
    if "dns" in kw and kw["dns"][0].startswith("*"):
        assert verdict.status == "name-mismatch"
    else:
        assert verdict.status == "valid", verdict.reason
        assert verdict.trusted and verdict.valid
        assert verdict.notAfter == leaf.not_valid_after_utc


def test_verify_wildcard(ca, trust):
    leaf, chain = issue(ca, "wild", dns=["*.example.com"])
    assert verifyPeer(trust, leaf, chain, "xmpp.example.com").status == "valid"
    assert verifyPeer(trust, leaf, chain, "example.com").status == "name-mismatch"
    assert verifyPeer(trust, leaf, chain, "a.b.example.com").status == "name-mismatch"


@pytest.mark.parametrize("eku", [("serverAuth",), ("clientAuth",), ()])
def test_extended_key_usage_is_not_checked(ca, trust, eku):
    """A serverAuth-only certificate is fine for an inbound peer (a TLS client)."""
    leaf, chain = issue(ca, "a.test", dns=["a.test"], eku=eku)
    verdict = verifyPeer(trust, leaf, chain, "a.test")
    assert verdict.status == "valid", verdict.reason


def test_expired(ca, trust):
    leaf, chain = issue(ca, "b.test", dns=["b.test"], expired=True)
    verdict = verifyPeer(trust, leaf, chain, "b.test")
    assert verdict.status == "expired"
    assert not verdict.trusted
    day = leaf.not_valid_after_utc.strftime("%Y-%m-%d")
    assert verdict.reason.startswith(f"certificate for b.test has expired (notAfter {day}")


def test_expired_and_not_yet_valid_by_clock(ca, trust):
    leaf, chain = issue(ca, "b.test", dns=["b.test"])
    later = leaf.not_valid_after_utc + _dt.timedelta(days=1)
    assert verifyPeer(trust, leaf, chain, "b.test", now=later).status == "expired"
    tomorrow = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(days=1)
    leaf = custom([x509.DNSName("b.test")], ca=ca, notBefore=tomorrow)
    verdict = verifyPeer(trust, leaf, chain, "b.test")
    assert verdict.status == "not-yet-valid"
    day = leaf.not_valid_before_utc.strftime("%Y-%m-%d")
    assert verdict.reason.startswith(f"certificate for b.test is not yet valid (notBefore {day}")
    # the CA itself is not valid that early either
    verdict = verifyPeer(trust, leaf, chain, "b.test", now=_dt.datetime(2000, 1, 1))
    assert verdict.status == "not-yet-valid"


def test_an_aware_clock_in_another_time_zone_is_the_same_instant(ca, trust):
    leaf, chain = issue(ca, "b.test", dns=["b.test"])
    west = _dt.timezone(_dt.timedelta(hours=-12))
    later = (leaf.not_valid_after_utc + _dt.timedelta(hours=1)).astimezone(west)
    assert verifyPeer(trust, leaf, chain, "b.test", now=later).status == "expired"


def test_the_verdict_does_not_depend_on_the_machine_s_time_zone(ca, trust):
    """A naive clock is UTC, and an aware one is not read in local time."""
    import time

    leaf, chain = issue(ca, "b.test", dns=["b.test"])
    end = leaf.not_valid_after_utc
    old = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ-14"   # POSIX form: local time is UTC+14
    time.tzset()
    try:
        naiveLater = (end + _dt.timedelta(hours=1)).replace(tzinfo=None)
        assert verifyPeer(trust, leaf, chain, "b.test", now=naiveLater).status == "expired"
        earlier = end - _dt.timedelta(hours=1)
        assert verifyPeer(trust, leaf, chain, "b.test", now=earlier).status == "valid"
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_an_expired_intermediate_makes_the_chain_expired(ca, trust):
    now = _dt.datetime.now(_dt.timezone.utc)
    inter, issuer = intermediate(ca, now - _dt.timedelta(days=30), now - _dt.timedelta(days=1))
    leaf = custom([x509.DNSName("a.test")], issuer=issuer)
    verdict = verifyPeer(trust, leaf, [inter], "a.test")
    assert verdict.status == "expired"
    assert verdict.reason == "a CA certificate (depth 1) in the chain for a.test has expired"


def test_an_intermediate_not_yet_valid_makes_the_chain_not_yet_valid(ca, trust):
    now = _dt.datetime.now(_dt.timezone.utc)
    inter, issuer = intermediate(ca, now + _dt.timedelta(days=1), now + _dt.timedelta(days=30))
    leaf = custom([x509.DNSName("a.test")], issuer=issuer)
    verdict = verifyPeer(trust, leaf, [inter], "a.test")
    assert verdict.status == "not-yet-valid"
    assert verdict.reason == "a CA certificate (depth 1) in the chain for a.test is not yet valid"


def test_an_unreadable_leaf_is_untrusted(trust):
    verdict = verifyPeer(trust, b"not a certificate", None, "a.test")
    assert (verdict.status, verdict.trusted) == ("untrusted", False)
    assert verdict.reason == "unreadable certificate (not a certificate: bytes)"


def test_the_leaf_in_the_chain_does_not_end_it(ca, trust):
    now = _dt.datetime.now(_dt.timezone.utc)
    inter, issuer = intermediate(ca, now - _dt.timedelta(days=1), now + _dt.timedelta(days=30))
    leaf = custom([x509.DNSName("a.test")], issuer=issuer)
    assert verifyPeer(trust, leaf, [leaf, inter], "a.test").status == "valid"


def test_an_unreadable_chain_entry_is_passed_over(ca, trust):
    now = _dt.datetime.now(_dt.timezone.utc)
    inter, issuer = intermediate(ca, now - _dt.timedelta(days=1), now + _dt.timedelta(days=30))
    leaf = custom([x509.DNSName("a.test")], issuer=issuer)
    assert verifyPeer(trust, leaf, [b"junk", inter], "a.test").status == "valid"


def test_a_trust_store_that_cannot_be_built_fails_closed(ca):
    def unreadable():
        raise OSError("CA directory is gone")

    leaf, chain = issue(ca, "a.test", dns=["a.test"])
    verdict = verifyPeer(unreadable, leaf, chain, "a.test")
    assert (verdict.status, verdict.trusted) == ("untrusted", False)
    assert verdict.reason == "certificate chain cannot be verified (CA directory is gone)"
    assert verdict.identities.dns == ("a.test",)


def test_untrusted_with_and_without_the_rogue_root(ca, trust):
    leaf, chain = issue(ca, "a.test", dns=["a.test"], untrusted=True)
    assert chain  # the rogue root is in the PEM: OpenSSL error 19
    for c in (chain, []):  # without it: error 20
        verdict = verifyPeer(trust, leaf, c, "a.test")
        assert verdict.status == "untrusted"
        assert not verdict.trusted
        assert verdict.reason.startswith("certificate chain does not lead to a trusted CA (")
        assert verdict.identities.dns == ("a.test",)


def test_self_signed(ca, trust):
    leaf = custom([x509.DNSName("a.test")], selfSigned=True)
    verdict = verifyPeer(trust, leaf, [leaf], "a.test")
    assert verdict.status == "self-signed"
    assert verdict.reason == "self-signed certificate"
    assert not verdict.trusted


def test_the_ca_itself_is_not_trusted_as_an_intermediate_leaf(ca, trust):
    """A peer sending only the (trusted) CA certificate: no SAN, name-mismatch."""
    _, chain = issue(ca, "a.test", dns=["a.test"])
    verdict = verifyPeer(trust, chain[0], [], "a.test")
    assert verdict.status == "name-mismatch"


def test_name_mismatch_lists_the_names(ca, trust):
    leaf, chain = issue(ca, "a.test", dns=["a.test"], srv=["x.test"])
    verdict = verifyPeer(trust, leaf, chain, "c.test")
    assert verdict.status == "name-mismatch"
    assert verdict.trusted and not verdict.valid
    assert verdict.reason == ("certificate is not valid for c.test: "
                              "it names DNS:a.test, SRV:_xmpp-server.x.test")


def test_fail_open_trap_xmppaddr_only(ca, trust):
    """DESIGN.md: a CA-trusted XmppAddr-only certificate for c.test must not pass for a.test."""
    leaf, chain = issue(ca, "c.test", xmpp=["c.test"])
    verdict = verifyPeer(trust, leaf, chain, "a.test")
    assert verdict.status == "name-mismatch"
    assert verdict.reason == "certificate is not valid for a.test: it names XmppAddr:c.test"
    assert verifyPeer(trust, leaf, chain, "c.test").status == "valid"


def test_no_san_at_all_is_a_mismatch_even_with_a_matching_cn(ca, trust):
    leaf, chain = issue(ca, "a.test")
    verdict = verifyPeer(trust, leaf, chain, "a.test")
    assert verdict.status == "name-mismatch"
    assert verdict.reason.endswith("it names no DNS, SRV or XmppAddr identity")


def test_idn_certificate(ca, trust):
    leaf, chain = issue(ca, "idn", dns=["xn--bcher-kva.test"])
    assert verifyPeer(trust, leaf, chain, "xn--bcher-kva.test").status == "valid"
    assert verifyPeer(trust, leaf, chain, "bücher.test").status == "valid"
    leaf, chain = issue(ca, "idn", xmpp=["bücher.test"])
    assert verifyPeer(trust, leaf, chain, "xn--bcher-kva.test").status == "valid"


def test_no_certificate(trust):
    verdict = verifyPeer(trust, None, None, "a.test")
    assert verdict == PeerCertificate("none", "no certificate presented", None, None)
    assert not verdict.trusted


def test_chain_may_contain_the_leaf_and_pyopenssl_objects(ca, trust):
    leaf, chain = issue(ca, "a.test", dns=["a.test"])
    x = crypto.X509.from_cryptography
    verdict = verifyPeer(trust, x(leaf), [x(leaf)] + [x(c) for c in chain], "a.test")
    assert verdict.status == "valid"


def test_store_builder_forms(ca, trust):
    leaf, chain = issue(ca, "a.test", dns=["a.test"])
    assert verifyPeer(trust.store, leaf, chain, "a.test").status == "valid"
    assert verifyPeer(trust.store(), leaf, chain, "a.test").status == "valid"
    # a store is fresh each time
    assert trust.store() is not trust.store()


def test_system_trust_store_does_not_trust_the_test_ca(ca):
    leaf, chain = issue(ca, "a.test", dns=["a.test"])
    verdict = verifyPeer(TrustStore(None), leaf, chain, "a.test")
    assert verdict.status == "untrusted"


def test_system_trust_store_has_anchors():
    import s2sgate.auth.certs as certs

    bundle = certs._systemBundle()
    if bundle is None:
        missing("no system CA bundle", "apt-get install ca-certificates")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some distro roots have non-positive serials
        roots = x509.load_pem_x509_certificates(open(bundle, "rb").read())
    now = _dt.datetime.now(_dt.timezone.utc)
    root = next(r for r in roots if r.not_valid_before_utc < now < r.not_valid_after_utc)
    verdict = verifyPeer(TrustStore(None), root, [], "nothing.test")
    assert verdict.status == "name-mismatch", verdict.reason  # trusted chain


def test_trust_store_passes_over_a_pem_block_openssl_cannot_read(ca, tmp_path):
    bad = (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n"
           b"-----END CERTIFICATE-----\n")
    (tmp_path / "bundle.pem").write_bytes(bad + open(ca.cafile, "rb").read())
    leaf, chain = issue(ca, "a.test", dns=["a.test"])
    assert verifyPeer(TrustStore(tmp_path / "bundle.pem"), leaf, [], "a.test").status == "valid"


def test_trust_store_unreadable_cafile(tmp_path):
    with pytest.raises(OSError):
        TrustStore(tmp_path / "missing.pem")
    (tmp_path / "empty.pem").write_text("nothing here\n")
    with pytest.raises(ValueError):
        TrustStore(tmp_path / "empty.pem")


def test_reason_lists_eight_names_in_full(ca, trust):
    leaf = custom([x509.DNSName(f"n{i}.test") for i in range(8)], ca=ca)
    verdict = verifyPeer(trust, leaf, [], "a.test")
    assert verdict.reason.endswith("it names " + ", ".join(f"DNS:n{i}.test" for i in range(8)))


def test_reason_escapes_control_characters_and_commas_in_names(ca, trust):
    """A name cannot start a log line of its own or pose as two names."""
    leaf = custom([x509.OtherName(XMPP_ADDR, der(0x0C, "evil\n.test, ok.test".encode()))],
                  ca=ca)
    verdict = verifyPeer(trust, leaf, [], "a.test")
    assert verdict.reason.endswith("it names XmppAddr:evil\\n.test\\x2c ok.test")


def test_reason_shortens_a_name_longer_than_80_characters(ca, trust):
    eighty = "a" * 63 + "." + "b" * 11 + ".test"
    longer = "c" * 63 + "." + "d" * 12 + ".test"
    assert (len(eighty), len(longer)) == (80, 81)
    leaf = custom([x509.DNSName(eighty), x509.DNSName(longer)], ca=ca)
    verdict = verifyPeer(trust, leaf, [], "a.test")
    assert verdict.reason.endswith(f"it names DNS:{eighty}, DNS:{longer[:77]}...")


def test_reason_is_one_line_for_hostile_names(ca, trust):
    leaf = custom([x509.OtherName(XMPP_ADDR, der(0x0C, "evil\n.test".encode()))]
                  + [x509.DNSName(f"n{i}.test") for i in range(20)], ca=ca)
    verdict = verifyPeer(trust, leaf, [], "a.test")
    assert verdict.status == "name-mismatch"
    assert "\n" not in verdict.reason
    assert "and 13 more" in verdict.reason


def hashedDirectory(path, cafile):
    """A c_rehash-style directory (<subject hash>.0) holding the certificates of C{cafile}."""
    path.mkdir()
    for cert in x509.load_pem_x509_certificates(open(cafile, "rb").read()):
        name = f"{crypto.X509.from_cryptography(cert).subject_name_hash():08x}.0"
        (path / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_system_store_without_a_readable_bundle_uses_the_hashed_directory(ca, tmp_path,
                                                                          monkeypatch):
    """Some systems ship only /etc/ssl/certs/<hash>.0: SSL_CERT_DIR names it."""
    (tmp_path / "empty.pem").write_text("no certificate\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "empty.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(hashedDirectory(tmp_path / "certs", ca.cafile)))
    leaf, chain = issue(ca, "a.test", dns=["a.test"])
    assert verifyPeer(TrustStore(None), leaf, chain, "a.test").status == "valid"


def test_system_store_with_a_bundle_does_not_read_the_directory(ca, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.untrusted_cafile))
    monkeypatch.setenv("SSL_CERT_DIR", str(hashedDirectory(tmp_path / "certs", ca.cafile)))
    leaf, chain = issue(ca, "a.test", dns=["a.test"])
    assert verifyPeer(TrustStore(None), leaf, chain, "a.test").status == "untrusted"


def test_ssl_cert_dir_that_is_no_directory_is_passed_over(tmp_path, monkeypatch):
    import s2sgate.auth.certs as certs

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "file"))
    assert certs._systemDirectory() != str(tmp_path / "file")
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    assert certs._systemDirectory() == str(tmp_path)


def test_system_bundle_without_ssl_cert_file_is_the_default_one(monkeypatch):
    import ssl

    import s2sgate.auth.certs as certs

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    default = ssl.get_default_verify_paths().cafile
    if default is None:
        missing("no system CA bundle", "apt-get install ca-certificates")
    assert certs._systemBundle() == default
