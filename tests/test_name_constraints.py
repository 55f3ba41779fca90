"""
Name constraints cover every identity we accept (issue 10, item 1).

OpenSSL applies an intermediate's nameConstraints to dNSName entries only; a
CA constrained to evil.test could otherwise vouch for victim.test through an
XmppAddr or SRV-ID. These tests judge leaves from a real constrained
intermediate (tests/lab/certs.py) with L{verifyPeer}.
"""
from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sgate.auth.certs import (
    OID_SRV_NAME,
    OID_XMPP_ADDR,
    Identities,
    NameConstraints,
    TrustStore,
    UnreadableConstraints,
    constrain,
    constraintsOf,
    verifyPeer,
    withinSubtree,
)
from tests.lab.certs import TestCA, _ia5, _utf8


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("nc"))


@pytest.fixture(scope="module")
def trust(ca):
    return TrustStore(ca.cafile)


@pytest.fixture(scope="module")
def evil(ca):
    """An intermediate the root constrained to evil.test."""
    return ca.intermediate("evil.test CA", permitted=["evil.test"])


def judge(ca, trust, issuer, domain, cn="leaf", **names):
    """The verdict for C{domain} on a leaf from C{issuer}.  A host-like C{cn} is
    checked by OpenSSL against dNSName constraints too: the attacker's is inside."""
    certs = x509.load_pem_x509_certificates(
        open(ca.issue("leaf", issuer=issuer, cn=cn, **names)[0], "rb").read())
    return verifyPeer(trust, certs[0], certs[1:], domain)


KINDS = {"dns": "DNS-ID", "srv": "SRV-ID", "xmpp": "XmppAddr"}


# --- the subtree rule --------------------------------------------------------------


@pytest.mark.parametrize("name, base, inside", [
    ("host.example.com", "host.example.com", True),
    ("www.host.example.com", "host.example.com", True),   # RFC 5280's example
    ("host1.example.com", "host.example.com", False),     # and its counter-example
    ("xhost.example.com", "host.example.com", False),     # no label boundary
    ("example.com", "host.example.com", False),
    ("a.example.com", ".example.com", True),               # leading dot: below only
    ("example.com", ".example.com", False),
    ("anything.test", "", True),                           # empty base holds all
    ("www.example.org", ".example.com", False),            # longer, but not below it
])
def test_dns_subtree_is_the_base_with_labels_added_on_the_left(name, base, inside):
    assert withinSubtree(name, base) is inside


def test_excluded_subtrees_win_over_permitted_ones():
    c = NameConstraints("CA", permitted=("example.com",), excluded=("bad.example.com",))
    assert c.allows("good.example.com")
    assert not c.allows("bad.example.com")
    assert not c.allows("x.bad.example.com")
    assert not c.allows("other.test")


def test_no_permitted_dns_subtree_leaves_dns_names_unconstrained():
    assert NameConstraints("CA", permitted=None, excluded=("bad.test",)).allows("good.test")


@settings(max_examples=300, deadline=None)
@given(labels=st.lists(st.from_regex(r"[a-z0-9]{1,5}", fullmatch=True), min_size=1,
                       max_size=3),
       base=st.sampled_from(["evil.test", "a.evil.test"]))
def test_a_name_inside_a_subtree_ends_with_it_at_a_label_boundary(labels, base):
    name = ".".join(labels + [base])
    assert withinSubtree(name, base)
    assert not withinSubtree(labels[0] + base, base) or labels[0] + base == base


# --- reading the extension -----------------------------------------------------------


def test_constraints_are_read_from_the_intermediate(evil):
    assert constraintsOf(evil.cert) == NameConstraints("CN=evil.test CA", ("evil.test",), ())
    assert constraintsOf(evil.parent.cert) is None


def test_other_name_subtrees_we_do_not_process_bar_those_identities(ca):
    inter = ca.intermediate("otherName CA", constraints=x509.NameConstraints(
        [x509.OtherName(OID_XMPP_ADDR, _utf8("evil.test")),
         x509.OtherName(OID_SRV_NAME, _ia5("_xmpp-server.evil.test"))], None))
    c = constraintsOf(inter.cert)
    assert c.barred == {"xmpp", "srv"} and c.permitted is None
    ok, out = constrain(Identities(("evil.test",), ("_xmpp-server.evil.test",),
                                   ("evil.test",)), [c])
    assert ok == Identities(dns=("evil.test",))
    assert out == Identities((), ("_xmpp-server.evil.test",), ("evil.test",))


def _tlv(tag, content):
    assert len(content) < 0x80
    return bytes([tag, len(content)]) + content


def permittedDNS(base):
    """A nameConstraints extension permitting the dNSName C{base} (bytes), unchecked:
    cryptography's own builder refuses some of the values tested here."""
    der = _tlv(0x30, _tlv(0xA0, _tlv(0x30, _tlv(0x82, base))))
    return x509.UnrecognizedExtension(ExtensionOID.NAME_CONSTRAINTS, der)


@pytest.mark.parametrize("base", [".", "evil.test..", "bü.test"])
def test_a_dns_constraint_that_is_no_dns_name_makes_the_ca_unreadable(ca, base):
    """RFC 5280: a constraint we cannot process rejects what the CA issued.
    (A "*" never reaches us: cryptography refuses to parse it.)"""
    inter = ca.intermediate("odd CA", constraints=permittedDNS(base.encode()))
    with pytest.raises(UnreadableConstraints):
        constraintsOf(inter.cert)


def test_a_dns_constraint_with_a_trailing_dot_is_the_same_subtree(ca):
    inter = ca.intermediate("dotted CA", permitted=["Evil.Test."])
    assert constraintsOf(inter.cert).permitted == ("evil.test",)


def test_a_one_letter_dns_constraint_is_read_in_lower_case(ca):
    inter = ca.intermediate("short CA", permitted=["T"])
    assert constraintsOf(inter.cert).permitted == ("t",)


def test_a_name_with_a_trailing_dot_is_judged_without_it():
    assert NameConstraints("CA", ("evil.test",)).allows("chat.evil.test.")
    assert not NameConstraints("CA", ("evil.test",), ("chat.evil.test",)).allows("chat.evil.test.")


def test_a_full_jid_xmppaddr_is_constrained_by_its_domainpart(evil):
    constraints = [constraintsOf(evil.cert)]
    inside = ("user@evil.test/victim.test", "evil.test/res/victim.test", "user@evil.test")
    outside = ("user@victim.test/evil.test", "evil.test@victim.test")
    ok, out = constrain(Identities(xmpp=inside + outside), constraints)
    assert (ok.xmpp, out.xmpp) == (inside, outside)


def test_an_srv_id_of_another_service_is_outside_every_constraint(evil):
    ok, out = constrain(Identities(srv=("_imap.evil.test", "_xmpp-server.evil.test")),
                        [constraintsOf(evil.cert)])
    assert (ok.srv, out.srv) == (("_xmpp-server.evil.test",), ("_imap.evil.test",))


def test_ip_address_subtrees_are_left_to_openssl(ca):
    import ipaddress

    inter = ca.intermediate("ip CA", constraints=x509.NameConstraints(
        [x509.DNSName("evil.test"), x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))],
        None))
    assert constraintsOf(inter.cert) == NameConstraints("CN=ip CA", ("evil.test",))


def test_the_reason_names_each_kind_of_constraint_of_every_ca(ca, trust):
    upper = ca.intermediate("upper CA", permitted=["test"])
    inter = ca.intermediate("mixed CA", parent=upper, constraints=x509.NameConstraints(
        [x509.DNSName("corp.test"), x509.DNSName("corp.example"),
         x509.OtherName(OID_XMPP_ADDR, _utf8("corp.test")),
         x509.OtherName(OID_SRV_NAME, _ia5("_xmpp-server.corp.test"))],
        [x509.DNSName("secret.corp.test"), x509.DNSName("hidden.corp.test")]))
    verdict = judge(ca, trust, inter, "secret.corp.test", cn="a leaf with no identity")
    assert verdict.reason == (
        "certificate is not valid for secret.corp.test: it names no DNS, SRV or XmppAddr "
        "identity; outside the name constraints of CA 'CN=mixed CA' (permitted corp.test, "
        "corp.example; excluded secret.corp.test, hidden.corp.test; unprocessed srv, xmpp "
        "subtrees), CA 'CN=upper CA' (permitted test)")


def test_a_domain_outside_the_constraints_is_said_so_though_nothing_names_it(ca, trust, evil):
    verdict = judge(ca, trust, evil, "victim.test", xmpp=["evil.test"])
    assert verdict.reason == ("certificate is not valid for victim.test: it names "
                              "XmppAddr:evil.test; outside the name constraints of "
                              "CA 'CN=evil.test CA' (permitted evil.test)")


def test_a_domain_inside_the_constraints_that_nothing_names_is_a_plain_mismatch(ca, trust,
                                                                                 evil):
    verdict = judge(ca, trust, evil, "chat.evil.test", xmpp=["evil.test"])
    assert verdict.reason == ("certificate is not valid for chat.evil.test: it names "
                              "XmppAddr:evil.test")


def test_a_ca_whose_constraints_cannot_be_read_vouches_for_nothing(ca, trust):
    """OpenSSL passes the chain (the leaf has no dNSName); we cannot read the CA's
    constraint, so we do not know what it may vouch for."""
    inter = ca.intermediate("odd CA", constraints=permittedDNS(b"evil.test.."))
    verdict = judge(ca, trust, inter, "victim.test", xmpp=["victim.test"])
    assert (verdict.status, verdict.trusted) == ("untrusted", False)
    assert verdict.reason.startswith("a CA in the chain has name constraints that cannot be read")


# --- verdicts: inside the constraint accepted, outside refused --------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_identity_inside_the_constraint_is_accepted(ca, trust, evil, kind):
    verdict = judge(ca, trust, evil, "evil.test", **{kind: ["evil.test"]})
    assert verdict.status == "valid", verdict.reason
    sub = judge(ca, trust, evil, "xmpp.evil.test", **{kind: ["xmpp.evil.test"]})
    assert sub.status == "valid", sub.reason


@pytest.mark.parametrize("kind", ["srv", "xmpp"])
def test_identity_outside_the_constraint_is_no_identity(ca, trust, evil, kind):
    """The attack: OpenSSL passes the chain, the identity names victim.test."""
    verdict = judge(ca, trust, evil, "victim.test", cn="evil.test", **{kind: ["victim.test"]})
    assert verdict.status == "name-mismatch"
    assert not verdict.valid and verdict.trusted
    assert "outside the name constraints of CA 'CN=evil.test CA' (permitted evil.test)" \
        in verdict.reason
    assert verdict.identities == Identities()   # nothing it names counts


def test_dns_id_outside_the_constraint_is_refused_by_the_chain(ca, trust, evil):
    """OpenSSL applies dNSName constraints itself: the chain fails (error 47)."""
    verdict = judge(ca, trust, evil, "victim.test", dns=["victim.test"])
    assert verdict.status == "untrusted"
    assert not verdict.valid


def test_identity_outside_is_refused_even_beside_one_inside(ca, trust, evil):
    verdict = judge(ca, trust, evil, "victim.test", dns=["evil.test"], xmpp=["victim.test"],
                    srv=["victim.test"])
    assert verdict.status == "name-mismatch"
    assert judge(ca, trust, evil, "evil.test", dns=["evil.test"],
                 xmpp=["victim.test"]).status == "valid"


def test_a_look_alike_outside_the_label_boundary_is_refused(ca, trust, evil):
    verdict = judge(ca, trust, evil, "notevil.test", xmpp=["notevil.test"])
    assert verdict.status == "name-mismatch"


def test_excluded_subtree_refuses_xmppaddr_and_srv_id(ca, trust):
    inter = ca.intermediate("exclusive CA", permitted=["corp.test"],
                            excluded=["secret.corp.test"])
    for kind in ("srv", "xmpp"):
        assert judge(ca, trust, inter, "chat.corp.test",
                     **{kind: ["chat.corp.test"]}).status == "valid"
        verdict = judge(ca, trust, inter, "secret.corp.test", **{kind: ["secret.corp.test"]})
        assert verdict.status == "name-mismatch", kind
        assert "excluded secret.corp.test" in verdict.reason


def test_wildcard_dns_id_does_not_reach_into_an_excluded_subtree(ca, trust):
    inter = ca.intermediate("wild CA", permitted=["corp.test"], excluded=["secret.corp.test"])
    assert judge(ca, trust, inter, "chat.corp.test", dns=["*.corp.test"]).status == "valid"
    assert judge(ca, trust, inter, "secret.corp.test",
                 dns=["*.corp.test"]).status == "name-mismatch"


def test_constraints_of_every_ca_in_the_chain_apply(ca, trust):
    """A sub-CA without constraints under a constrained one inherits them."""
    upper = ca.intermediate("upper CA", permitted=["evil.test"])
    lower = ca.intermediate("lower CA", parent=upper)
    assert judge(ca, trust, lower, "evil.test", xmpp=["evil.test"]).status == "valid"
    assert judge(ca, trust, lower, "victim.test",
                 xmpp=["victim.test"]).status == "name-mismatch"


def test_unconstrained_intermediate_still_accepts_every_kind(ca, trust):
    plain = ca.intermediate("plain CA")
    for kind in KINDS:
        assert judge(ca, trust, plain, "victim.test",
                     **{kind: ["victim.test"]}).status == "valid", kind


def test_idn_xmppaddr_is_compared_in_a_label_form(ca, trust):
    inter = ca.intermediate("idn CA", permitted=["xn--bcher-kva.test"])
    assert judge(ca, trust, inter, "bücher.test", xmpp=["bücher.test"]).status == "valid"
    assert judge(ca, trust, inter, "xn--bcher-kva.test",
                 srv=["xn--bcher-kva.test"]).status == "valid"
