from twisted.logger import Logger, LogLevel, LogPublisher

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


def test_text_lines_have_millisecond_timestamps(monkeypatch):
    import io
    import re
    import time

    from twisted.logger import textFileLogObserver

    from s2sgate.config import LogConfig
    from s2sgate.ops.logsetup import apply

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    publisher = LogPublisher()
    out = io.StringIO()
    publisher.addObserver(textFileLogObserver(out))
    apply(LogConfig(level="info", format="text"), publisher)
    publisher({"log_format": "hello {who}", "who": "there", "log_time": 1796117417.8673,
               "log_level": LogLevel.info,
               "log_namespace": "t", "log_system": "-"})
    Logger(observer=publisher).info("now")
    first, second = out.getvalue().splitlines()
    assert first == "2026-12-01T09:30:17.867+0000 [-] hello there"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000 \[", second), second
    monkeypatch.delenv("TZ")
    time.tzset()


def test_json_lines_carry_time_level_and_message_beside_the_fields():
    import io
    import json

    from s2sgate.ops.logsetup import useJSON

    publisher = LogPublisher()
    out = io.StringIO()
    useJSON("info", out, publisher)
    Logger(observer=publisher).warn("stream {pair} lost", pair="a.test -> b.test",
                                    text="own text field", event="stream.lost")
    [line] = [json.loads(x.strip("\x1e")) for x in out.getvalue().splitlines() if x.strip()]
    assert line["level"] == "warn" and line["message"] == "stream a.test -> b.test lost"
    assert line["event"] == "stream.lost" and line["text"] == "own text field"
    assert line["time"][:2] == "20" and "." in line["time"] and isinstance(line["log_time"], float)
