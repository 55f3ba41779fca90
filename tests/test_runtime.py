"""The runtime: one immutable object per configuration, swapped in one place."""

import dataclasses

import pytest

from s2sgate import features
from s2sgate.gateway.runtime import Current, Runtime
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
