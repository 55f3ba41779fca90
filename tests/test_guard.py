"""The rate-limited log lines a peer can make us repeat."""

from twisted.internet import task
from twisted.logger import capturedLogs

from s2sgate.s2s.guard import LogLimiter


def test_a_repeated_line_is_written_burst_times_per_interval():
    clock = task.Clock()
    limiter = LogLimiter(clock, burst=3, interval=60)
    with capturedLogs() as events:
        written = [limiter.warn("refused {n}", "x.refused", n=n) for n in range(10)]
    assert written == [True] * 3 + [False] * 7
    assert [e["n"] for e in events] == [0, 1, 2]


def test_the_next_window_says_how_many_lines_were_left_out():
    clock = task.Clock()
    limiter = LogLimiter(clock, burst=1, interval=60)
    with capturedLogs() as events:
        for _ in range(5):
            limiter.warn("refused", "x.refused")
        clock.advance(60)
        limiter.warn("refused", "x.refused")
    assert [e.get("suppressed") for e in events] == [None, 4]


def test_events_are_limited_separately():
    limiter = LogLimiter(task.Clock(), burst=1)
    with capturedLogs() as events:
        limiter.warn("a", "a")
        limiter.warn("a", "a")
        limiter.info("b", "b")
    assert [e["event"] for e in events] == ["a", "b"]
