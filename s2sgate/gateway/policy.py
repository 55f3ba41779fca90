# -*- test-case-name: tests.test_policy -*-
"""
Federation policy: which (local, remote) pairs may talk at all.

One place answers for both directions, so outbound bounces and inbound
stream errors always agree.
"""

from twisted.logger import Logger


class Policy:
    log = Logger()

    def __init__(self, config):
        s = config.s2s
        self.default = s.default_policy
        self.hosts = {p.host: p.policy for p in s.host_policy}
        self.disabled = frozenset(s.disabled_domains)
        self.anonymous = frozenset(s.anonymous_domains)
        self.allowAnonymous = s.allow_anonymous_s2s

    def check(self, local, remote):
        """
        Return C{(ok, condition, text)}; C{condition} is the stanza error
        condition for an outbound refusal.
        """
        if local in self.disabled:
            return False, "not-allowed", f"federation is switched off for {local}"
        if local in self.anonymous and not self.allowAnonymous:
            return False, "not-allowed", f"users of {local} may not reach other servers"
        policy = self.hosts.get(remote, self.default)
        if policy != "allow":
            return False, "not-allowed", f"federation between {local} and {remote} is not allowed by this server's policy"
        return True, None, None

    def refuse(self, direction, local, remote, text):
        self.log.info("policy refused {direction} {local} <-> {remote}: {text}",
                      direction=direction, local=local, remote=remote, text=text,
                      event="policy.refused")
