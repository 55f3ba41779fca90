"""The runtime: one immutable object per configuration, swapped in one place."""

import dataclasses

import pytest

from s2sgate import features
from s2sgate.gateway.runtime import Current, Runtime
from s2sgate.xmpp.namespaces import NS_SM
from tests.s2sfakes import makeConfig


def test_the_runtime_is_immutable():
    runtime = Runtime.build(makeConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        runtime.tls = object()


def test_a_reloaded_runtime_has_the_new_policy_and_keeps_the_keys_and_features():
    before = Runtime.build(makeConfig(), steps=features.STEPS[:1])
    after = before.reloaded(makeConfig(default_policy="deny"), None)
    assert after.policy.check("home.test", "x.test")[0] is False
    assert before.policy.check("home.test", "x.test")[0] is True
    assert after.keys is before.keys and after.steps == features.STEPS[:1]


def test_current_swaps_and_returns_the_old_runtime():
    first = Runtime.build(makeConfig())
    current = Current(first)
    second = first.reloaded(makeConfig(), None)
    assert current.swap(second) is first and current.runtime is second


def test_each_stream_gets_fresh_steps_and_offers():
    runtime = Runtime.build(makeConfig())
    one, two = runtime.stepsForStream(), runtime.stepsForStream()
    assert [type(s) for s in one] == list(features.STEPS)
    assert all(a is not b for a, b in zip(one, two))
    assert [type(o) for o in runtime.offersForStream()] == list(features.OFFERS)


class _Takes:
    """An offer that handles one namespace (for the handler table)."""

    def __init__(self, runtime):
        pass

    def handlers(self):
        return {("urn:test", None): self.handle}

    def handle(self, stream, element):
        pass


class _TakesToo(_Takes):
    pass


def test_the_handler_table_names_the_offer_that_takes_each_element_the_later_one_winning():
    runtime = Runtime.build(makeConfig(), offers=(_Takes, _TakesToo))
    assert runtime.offerIndex == {("urn:test", None): 1}


def test_a_reloaded_runtime_builds_its_own_handler_table():
    before = Runtime.build(makeConfig(stream_management={"enabled": True}))
    after = before.reloaded(makeConfig(stream_management={"enabled": False}), None)
    assert (NS_SM, None) in before.offerIndex
    assert (NS_SM, None) not in after.offerIndex
