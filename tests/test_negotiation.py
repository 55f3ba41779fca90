"""The initiating side's engine: steps in order, outcomes, restarts, bounds (no sockets)."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.auth.requirements import Requirements
from s2sgate.interfaces import IStep
from s2sgate.net.connector import ConnectFailed
from s2sgate.s2s.negotiation import (
    MAX_WAITING_ELEMENTS,
    Authenticated,
    Failed,
    InitiatingStream,
    Restart,
    Skip,
    StreamLimits,
)
from s2sgate.xmpp.namespaces import NS_STREAMS
from tests.s2sfakes import LOCAL, REMOTE, Output, connect, makeConfig

HEADER = (f"<stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
          f"from='{REMOTE}' to='{LOCAL}' id='s1' version='1.0'>").encode()
FEATURES = b"<stream:features><x xmlns='urn:example'/></stream:features>"


@implementer(IStep)
class Scripted:
    """A step that records each run and ends with a fixed outcome."""

    def __init__(self, name, outcome, applies=True, restart=False, waitFor=None):
        self.name = name
        self.outcome = outcome
        self._applies = applies
        self.restart = restart
        self.waitFor = waitFor
        self.runs = []

    def applies(self, stream, features):
        return features is not None and self._applies

    async def run(self, stream, features):
        self.runs.append(features)
        if self.waitFor is not None:
            await stream.expect(lambda e: e.name == self.waitFor)
        if self.restart:
            stream.restart()
        return self.outcome


def negotiate(*steps):
    clock = task.Clock()
    stream = InitiatingStream(clock, LOCAL, REMOTE, steps,
                              requirements=Requirements(makeConfig().s2s),
                              limits=StreamLimits(negotiationTimeout=30))
    out = Output(connect(stream))
    results = []
    stream.ready.addBoth(results.append)
    return clock, stream, out, results


def test_steps_run_in_order_and_skip_hands_the_same_features_on():
    first = Scripted("a", Skip())
    second = Scripted("b", Authenticated("made-up"))
    _, stream, _, results = negotiate(first, second)
    stream.dataReceived(HEADER + FEATURES)
    assert results == [stream] and stream.authMethod == "made-up"
    assert len(first.runs) == 1 and first.runs[0] is second.runs[0]


def test_a_step_that_does_not_apply_is_not_run():
    unused = Scripted("a", Failed("remote-server-not-found", "must not run"), applies=False)
    _, stream, _, results = negotiate(unused, Scripted("b", Authenticated("m")))
    stream.dataReceived(HEADER + FEATURES)
    assert unused.runs == [] and results == [stream]


def test_restart_sends_a_new_header_and_the_next_features_start_a_new_round():
    tls = Scripted("tls", Restart(), restart=True)
    auth = Scripted("auth", Authenticated("m"))
    _, stream, out, results = negotiate(tls, auth)
    stream.dataReceived(HEADER + FEATURES)
    assert out.transport.value().count(b"<stream:stream") == 2
    assert auth.runs == [] and results == []
    tls._applies = False
    stream.dataReceived(HEADER.replace(b"s1", b"s2") + FEATURES)
    assert results == [stream] and stream.streamId == "s2"


def test_authenticated_after_restart_is_ready_on_the_next_features():
    sasl = Scripted("auth", Authenticated("sasl", afterRestart=True), restart=True)
    _, stream, _, results = negotiate(sasl)
    stream.dataReceived(HEADER + FEATURES)
    assert results == []
    stream.dataReceived(HEADER + FEATURES)
    assert results == [stream] and stream.authMethod == "sasl" and len(sasl.runs) == 1


def test_failed_fails_ready_with_condition_text_and_step_and_closes():
    later = Scripted("b", Authenticated("m"))
    _, stream, out, results = negotiate(Scripted("tls", Failed("remote-server-timeout", "slow")),
                                        later)
    stream.dataReceived(HEADER + FEATURES)
    [failure] = results
    assert failure.check(ConnectFailed)
    assert (failure.value.condition, failure.value.text) == ("remote-server-timeout", "slow")
    assert (failure.value.attempts[-1].step, failure.value.attempts[-1].ok) == ("tls", False)
    assert later.runs == [] and out.update().ended


def test_a_round_no_step_ends_fails_the_attempt():
    _, stream, _, results = negotiate(Scripted("a", Skip()))
    stream.dataReceived(HEADER + FEATURES)
    [failure] = results
    assert "no way to authenticate" in failure.value.text


def test_elements_sent_before_a_step_expects_them_are_kept():
    step = Scripted("a", Authenticated("m"), waitFor="early")
    _, stream, _, results = negotiate(step)
    stream.dataReceived(HEADER + b"<early xmlns='jabber:server'/>" + FEATURES)
    assert results == [stream]


def test_a_peer_flooding_the_negotiation_gets_policy_violation():
    _, stream, out, results = negotiate(Scripted("a", Authenticated("m"), waitFor="never"))
    stream.dataReceived(HEADER)
    stream.dataReceived(b"<junk xmlns='jabber:server'/>" * (MAX_WAITING_ELEMENTS + 1))
    assert out.streamError() == "policy-violation"
    assert results[0].check(ConnectFailed)


def test_pre_1_0_peer_runs_the_steps_on_no_features():
    step = Scripted("a", Authenticated("m"))
    _, stream, _, results = negotiate(step)
    stream.dataReceived(HEADER.replace(b" version='1.0'", b""))
    assert results == [stream] and step.runs[0].legacy


@settings(deadline=None)
@given(st.lists(st.sampled_from(["skip", "absent"]), max_size=6), st.booleans())
def test_the_first_step_that_ends_the_round_decides(before, restartFirst):
    steps = [Scripted(f"s{i}", Skip(), applies=kind == "skip") for i, kind in enumerate(before)]
    final = Scripted("final", Authenticated("m"))
    _, stream, _, results = negotiate(*steps, final)
    stream.dataReceived(HEADER + FEATURES)
    assert results == [stream]
    assert [len(s.runs) for s in steps] == [1 if k == "skip" else 0 for k in before]
    assert len(final.runs) == 1


def test_negotiation_timeout_is_remote_server_timeout():
    clock, stream, out, results = negotiate(Scripted("a", Authenticated("m")))
    clock.advance(30)
    assert results[0].value.condition == "remote-server-timeout"
    assert out.streamError() == "connection-timeout"


def test_element_class_is_domish():
    # Steps build plain domish elements; the stream serialises them in its scope.
    _, stream, out, _ = negotiate(Scripted("a", Authenticated("m")))
    stream.send(domish.Element(("jabber:server", "presence")))
    assert b"<presence/>" in out.transport.value()
