"""Requirements: what use_starttls, secure_auth, secure_domains and insecure_domains demand."""

from types import SimpleNamespace

import pytest

from s2sgate.auth.certs import NO_CERTIFICATE, PeerCertificate
from s2sgate.auth.requirements import Requirements
from s2sgate.config import S2SConfig
from tests.s2sfakes import makeConfig

SEC = "sec.test"      # in secure_domains
INS = "ins.test"      # in insecure_domains
OTHER = "other.test"  # in neither
DANE = "dane.test"    # in dane_domains, where the tests name them

def policy(mode, secureAuth=False, secure=(SEC,), insecure=(INS,), dane="off", daneDomains=()):
    return Requirements(SimpleNamespace(use_starttls=mode, secure_auth=secureAuth,
                                          secure_domains=secure, insecure_domains=insecure,
                                          dane=dane, dane_domains=daneDomains))


VALID = PeerCertificate("valid", f"certificate is valid for {OTHER}")
MISMATCH = PeerCertificate("name-mismatch", f"certificate is not valid for {OTHER}: "
                                            "it names DNS:elsewhere.test")
SELF_SIGNED = PeerCertificate("self-signed", "self-signed certificate")
EXPIRED = PeerCertificate("expired", "certificate for other.test has expired")


# tlsEnabled


@pytest.mark.parametrize("mode, enabled", [("false", False), ("optional", True),
                                           ("required", True), ("required_trusted", True)])
def test_tls_enabled_unless_use_starttls_is_false(mode, enabled):
    assert policy(mode).tlsEnabled is enabled


# mustEncrypt: (mode, secure_auth) -> {remote: expected}, with SEC secure and INS insecure

MUST_ENCRYPT = [
    # mode, secure_auth, OTHER, SEC, INS, None (no 'from' in the header)
    ("false", False, False, True, False, False),
    ("optional", False, False, True, False, False),
    ("optional", True, True, True, False, True),
    ("required", False, True, True, True, True),
    ("required", True, True, True, True, True),
    ("required_trusted", False, True, True, True, True),
    ("required_trusted", True, True, True, True, True),
]


@pytest.mark.parametrize("mode, secureAuth, other, sec, ins, anonymous", MUST_ENCRYPT)
def test_must_encrypt(mode, secureAuth, other, sec, ins, anonymous):
    p = policy(mode, secureAuth)
    assert (p.mustEncrypt(OTHER), p.mustEncrypt(SEC), p.mustEncrypt(INS),
            p.mustEncrypt(None)) == (other, sec, ins, anonymous)


@pytest.mark.parametrize("mode", ["false", "optional"])
def test_must_encrypt_without_domain_lists_is_false_below_required(mode):
    p = policy(mode, secure=(), insecure=())
    assert not p.mustEncrypt(OTHER)
    assert not p.mustEncrypt(None)


def test_insecure_domain_does_not_escape_required_tls():
    # insecure_domains relaxes authentication (dialback), never the TLS mode.
    for mode in ("required", "required_trusted"):
        assert policy(mode, secureAuth=True).mustEncrypt(INS)


# mustBeTrusted

MUST_BE_TRUSTED = [
    # mode, secure_auth, OTHER, SEC, INS
    ("false", False, False, True, False),
    ("optional", False, False, True, False),
    ("optional", True, True, True, False),
    ("required", False, False, True, False),
    ("required", True, True, True, False),
    ("required_trusted", False, True, True, False),
    ("required_trusted", True, True, True, False),
]


@pytest.mark.parametrize("mode, secureAuth, other, sec, ins", MUST_BE_TRUSTED)
def test_must_be_trusted(mode, secureAuth, other, sec, ins):
    p = policy(mode, secureAuth)
    assert (p.mustBeTrusted(OTHER), p.mustBeTrusted(SEC), p.mustBeTrusted(INS)) == (other, sec, ins)


# DANE (RFC 7673): a peer DANE must authenticate must be trusted, and so encrypt


def test_dane_required_demands_a_trusted_certificate_of_every_peer_insecure_ones_too():
    p = policy("optional", dane="required")
    assert (p.daneRequired(OTHER), p.mustBeTrusted(OTHER), p.mustBeTrusted(INS)) == (True, True, True)


def test_a_dane_domain_must_be_trusted_when_dane_is_otherwise_off():
    p = policy("optional", daneDomains=(DANE,))
    assert (p.mustBeTrusted(DANE), p.mustBeTrusted(OTHER)) == (True, False)


def test_a_dane_domain_must_encrypt_under_optional():
    p = policy("optional", daneDomains=(DANE,))
    assert (p.mustEncrypt(DANE), p.mustEncrypt(OTHER)) == (True, False)


# dialbackAllowed


@pytest.mark.parametrize("mode", ["false", "optional", "required"])
@pytest.mark.parametrize("certificate", [None, NO_CERTIFICATE, SELF_SIGNED, MISMATCH, VALID])
def test_dialback_allowed_for_any_certificate_without_secure_auth(mode, certificate):
    assert policy(mode).dialbackAllowed(OTHER, certificate) == (True, None)


@pytest.mark.parametrize("mode, secureAuth, remote", [
    ("optional", True, OTHER), ("required", True, OTHER),
    ("required_trusted", False, OTHER), ("optional", False, SEC), ("required", False, SEC)])
def test_dialback_allowed_with_a_valid_certificate_when_trust_is_demanded(mode, secureAuth, remote):
    assert policy(mode, secureAuth).dialbackAllowed(remote, VALID) == (True, None)


@pytest.mark.parametrize("mode, secureAuth, remote", [
    ("optional", True, OTHER), ("required", True, OTHER),
    ("required_trusted", False, OTHER), ("optional", False, SEC), ("required", False, SEC)])
@pytest.mark.parametrize("certificate", [SELF_SIGNED, MISMATCH, EXPIRED, NO_CERTIFICATE])
def test_dialback_refused_with_the_reason_for_an_invalid_certificate(mode, secureAuth, remote,
                                                                     certificate):
    ok, why = policy(mode, secureAuth).dialbackAllowed(remote, certificate)
    assert ok is False
    assert remote in why
    assert certificate.reason in why


@pytest.mark.parametrize("mode, secureAuth, remote", [
    ("optional", True, OTHER), ("required_trusted", False, OTHER), ("optional", False, SEC)])
def test_dialback_refused_without_tls_when_trust_is_demanded(mode, secureAuth, remote):
    ok, why = policy(mode, secureAuth).dialbackAllowed(remote, None)
    assert ok is False
    assert "no TLS" in why


@pytest.mark.parametrize("mode", ["optional", "required", "required_trusted"])
@pytest.mark.parametrize("certificate", [None, SELF_SIGNED, MISMATCH])
def test_insecure_domains_may_always_use_dialback(mode, certificate):
    assert policy(mode, secureAuth=True).dialbackAllowed(INS, certificate) == (True, None)


def test_name_mismatch_is_trusted_but_not_valid_for_dialback():
    # A chain we trust that names another domain is still refused.
    assert MISMATCH.trusted
    ok, _ = policy("required_trusted").dialbackAllowed(OTHER, MISMATCH)
    assert not ok


# from a parsed configuration


def test_policy_from_config_uses_normalized_domain_lists():
    config = makeConfig(insecure_domains=["Ins.TEST"])
    p = Requirements(config.s2s)
    assert p.mode == "false"
    assert not p.tlsEnabled
    assert p.insecureDomains == {INS}
    assert not p.mustBeTrusted(INS)


def test_policy_for_the_default_s2s_config_requires_tls_but_not_trust():
    p = Requirements(S2SConfig())   # use_starttls defaults to "required"
    assert p.mustEncrypt(OTHER)
    assert not p.mustBeTrusted(OTHER)
