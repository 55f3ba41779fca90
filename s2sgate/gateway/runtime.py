# -*- test-case-name: tests.test_runtime -*-
"""
Everything a new stream needs to know of the configuration, as one
immutable object: the policy, what security the requirements demand, the
TLS contexts, the dialback keys, the limits and the registered negotiation
features.  A reload builds a new L{Runtime} and swaps it in L{Current}, one
place; streams keep the runtime they started with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from s2sgate import features
from s2sgate.auth.dialback import DialbackKeys
from s2sgate.auth.requirements import Requirements
from s2sgate.gateway.policy import Policy
from s2sgate.s2s.negotiation import StreamLimits


@dataclass(frozen=True)
class Runtime:
    config: Any
    policy: Policy
    requirements: Requirements
    tls: Any                      # TLSContexts, or None without TLS
    keys: DialbackKeys
    limits: StreamLimits
    localDomains: frozenset
    steps: tuple = features.STEPS
    afterAuthSteps: tuple = features.AFTER_AUTH_STEPS
    verifySteps: tuple = features.VERIFY_STEPS
    offers: tuple = features.OFFERS
    dialbackShortcuts: tuple = features.DIALBACK_SHORTCUTS

    @classmethod
    def build(cls, config, tls=None, keys=None, **registered) -> "Runtime":
        """
        @param registered: C{steps}, C{afterAuthSteps}, C{verifySteps}, C{offers},
            C{dialbackShortcuts} to replace the default registry (tests,
            plug-ins).
        """
        return cls(config=config, policy=Policy(config), requirements=Requirements(config.s2s),
                   tls=tls, keys=keys if keys is not None else DialbackKeys(config.s2s.shared),
                   limits=StreamLimits.fromConfig(config.s2s),
                   localDomains=frozenset(config.local_domains), **registered)

    def reloaded(self, config, tls) -> "Runtime":
        """The runtime for a re-read file; the dialback secret and features stay."""
        return replace(self, config=config, policy=Policy(config),
                       requirements=Requirements(config.s2s), tls=tls,
                       limits=StreamLimits.fromConfig(config.s2s))

    def isLocal(self, domain) -> bool:
        return domain in self.localDomains

    def stepsForStream(self) -> list:
        """Fresh step objects for one outbound stream."""
        return [step(self) for step in self.steps]

    def afterAuthStepsForStream(self) -> list:
        """Fresh post-authentication step objects for one outbound stream."""
        return [step(self) for step in self.afterAuthSteps]

    def offersForStream(self) -> list:
        return [offer(self) for offer in self.offers]

    @cached_property
    def offerIndex(self) -> dict:
        """
        C{{(namespace, name): i}}: which of L{offersForStream}'s offers handles
        an element (C{name} None: all of a namespace; a later offer wins).
        One table for every stream of this runtime, instead of a dict of
        bound handlers in each of thousands of idle streams.
        """
        return {key: i for i, offer in enumerate(self.offersForStream())
                for key in offer.handlers()}


class Current:
    """Holds the runtime in use; L{swap} is the one place a reload changes it."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def swap(self, runtime: Runtime) -> Runtime:
        old, self.runtime = self.runtime, runtime
        return old
