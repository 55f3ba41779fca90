from twisted.logger import LogPublisher, Logger

from s2sgate.logsetup import applyLevel


def test_level_filter_drops_debug_but_keeps_warnings():
    publisher = LogPublisher()
    seen = []
    publisher.addObserver(seen.append)
    applyLevel("info", publisher)
    log = Logger(observer=publisher)
    log.debug("noise")
    log.warn("problem")
    assert [e["log_format"] for e in seen] == ["problem"]


def test_applying_twice_does_not_wrap_twice():
    publisher = LogPublisher()
    publisher.addObserver(lambda e: None)
    assert applyLevel("warn", publisher) == 1
    assert applyLevel("warn", publisher) == 0
