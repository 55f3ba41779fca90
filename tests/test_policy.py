from s2sgate.gateway.policy import Policy
from tests.s2sfakes import LOCAL, MUC, REMOTE, makeConfig


def policy(**s2s):
    return Policy(makeConfig(**s2s))


def test_default_policy_allow_allows_any_remote():
    assert policy().check(LOCAL, REMOTE) == (True, None, None)


def test_default_policy_deny_refuses_with_not_allowed():
    ok, condition, text = policy(default_policy="deny").check(LOCAL, REMOTE)
    assert (ok, condition) == (False, "not-allowed")
    assert REMOTE in text


def test_host_policy_deny_overrides_default_allow():
    p = policy(host_policy=[{"host": REMOTE, "policy": "deny"}])
    assert p.check(LOCAL, REMOTE)[0] is False
    assert p.check(LOCAL, "other.test")[0] is True


def test_host_policy_allow_overrides_default_deny():
    p = policy(default_policy="deny", host_policy=[{"host": REMOTE, "policy": "allow"}])
    assert p.check(LOCAL, REMOTE)[0] is True
    assert p.check(LOCAL, "other.test")[0] is False


def test_disabled_domain_refuses_every_remote():
    p = policy(disabled_domains=[LOCAL], host_policy=[{"host": REMOTE, "policy": "allow"}])
    ok, condition, text = p.check(LOCAL, REMOTE)
    assert (ok, condition) == (False, "not-allowed")
    assert LOCAL in text
    assert p.check(MUC, REMOTE)[0] is True


def test_anonymous_domain_refused_unless_allow_anonymous_s2s():
    p = policy(anonymous_domains=[MUC])
    assert p.check(MUC, REMOTE)[:2] == (False, "not-allowed")
    assert p.check(LOCAL, REMOTE)[0] is True


def test_anonymous_domain_allowed_with_allow_anonymous_s2s():
    p = policy(anonymous_domains=[MUC], allow_anonymous_s2s=True)
    assert p.check(MUC, REMOTE) == (True, None, None)


def test_anonymous_domain_still_subject_to_host_policy():
    p = policy(anonymous_domains=[MUC], allow_anonymous_s2s=True,
               host_policy=[{"host": REMOTE, "policy": "deny"}])
    assert p.check(MUC, REMOTE)[0] is False


def test_refuse_only_logs():
    assert policy().refuse("inbound", LOCAL, REMOTE, "no") is None
