from twisted.logger import Logger, LogPublisher

from s2sgate.ops.logsetup import applyLevel


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


def test_json_format_writes_one_event_per_line_with_structured_fields():
    import io
    import json

    from s2sgate.ops.logsetup import useJSON

    publisher = LogPublisher()
    publisher.addObserver(lambda e: None)
    out = io.StringIO()
    useJSON("info", out, publisher)
    log = Logger(observer=publisher)
    log.info("connecting {local} -> {remote}", local="a.test", remote="b.test",
             event="outbound.connecting")
    log.debug("noise")
    lines = [json.loads(line.strip("\x1e")) for line in out.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0]["local"] == "a.test" and lines[0]["event"] == "outbound.connecting"
    assert len(publisher._observers) == 1


def test_reapplying_changes_the_level_in_place():
    publisher = LogPublisher()
    seen = []
    publisher.addObserver(seen.append)
    applyLevel("warn", publisher)
    log = Logger(observer=publisher)
    log.info("hidden")
    applyLevel("debug", publisher)
    log.debug("shown")
    assert [e["log_format"] for e in seen] == ["shown"]
    assert len(publisher._observers) == 1
