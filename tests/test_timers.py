"""s2sgate.timers: cancelling a delayed call whatever became of it."""

from twisted.internet import task

from s2sgate.timers import cancel


def test_a_pending_call_is_cancelled_and_never_runs():
    clock, ran = task.Clock(), []
    call = clock.callLater(1, ran.append, "ran")
    cancel(call)
    clock.advance(2)
    assert (ran, call.cancelled) == ([], True)


def test_a_call_that_ran_already_is_left_alone():
    clock, ran = task.Clock(), []
    call = clock.callLater(1, ran.append, "ran")
    clock.advance(1)
    cancel(call)
    assert ran == ["ran"]


def test_a_call_cancelled_already_is_left_alone():
    clock = task.Clock()
    call = clock.callLater(1, lambda: None)
    call.cancel()
    cancel(call)
    assert call.cancelled


def test_no_call_is_nothing_to_cancel():
    cancel(None)
