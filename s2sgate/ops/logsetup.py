# -*- test-case-name: tests.test_logsetup -*-
"""
Apply C{[log]} (level, format) to the observers twistd installed.

twistd starts logging before the service starts and offers a plugin no
hook to filter or reformat it, so at start the gateway wraps the observers
it finds on the global publisher in a level filter, and for
C{format = "json"} replaces them with one JSON-lines observer (one event
per line, structured fields kept: domain pair, stream id, step, event; plus
C{time}, C{level} and C{message} for readers that know nothing of Twisted).
Text lines get timestamps with milliseconds: twistd's file observer is
given L{formatText} (events a few ms apart are told apart and ordered).
docs/behaviour.md lists the fields.
"""

import sys
import time

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogPublisher,
    jsonFileLogObserver,
)

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "error": LogLevel.error}


def formatTime(when):
    """C{2026-12-01T09:27:24.123+0000}: local time with milliseconds."""
    if when is None:
        return "-"
    seconds = int(when)
    ms = int((when - seconds) * 1000)
    local = time.localtime(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{ms:03d}" + time.strftime("%z", local)


def formatText(event):
    """Twisted's classic text line, with L{formatTime}."""
    return formatEventAsClassicLogText(event, formatTime=formatTime)


def withMilliseconds(publisher=globalLogPublisher):
    """Give every text file observer of C{publisher} L{formatText}; return how many."""
    changed = 0
    for observer in _fileObservers(publisher):
        if observer.formatEvent is not formatText:
            observer.formatEvent = formatText
            changed += 1
    return changed


def _fileObservers(publisher):
    for observer in list(publisher._observers):
        # Ours are wrapped in a level filter (see _filtered).
        inner = observer.inner if isinstance(observer, _LevelFilter) else observer
        if isinstance(inner, FileLogObserver):
            yield inner


def applyLevel(level, publisher=globalLogPublisher):
    """Filter every observer of C{publisher} below C{level}; return how many were wrapped."""
    observers = []
    for observer in list(publisher._observers):
        if isinstance(observer, _LevelFilter):
            # Already ours (a reload): change its level in place.
            observer.predicate.defaultLogLevel = LEVELS[level]
            observer.predicate.clearLogLevels()   # the default level lives under namespace ""
            continue
        observers.append(observer)
        publisher.removeObserver(observer)
        publisher.addObserver(_filtered(observer, level))
    return len(observers)


class _LevelFilter(FilteringLogObserver):
    """Our level filter around one observer: a reload finds it and changes its level."""

    def __init__(self, observer, predicate):
        super().__init__(observer, [predicate])
        self.inner = observer
        self.predicate = predicate


def _filtered(observer, level):
    return _LevelFilter(observer, LogLevelFilterPredicate(defaultLogLevel=LEVELS[level]))


def useJSON(level, out=None, publisher=globalLogPublisher):
    """
    Replace the observers of C{publisher} with one writing JSON lines to
    C{out} (default: standard output, which systemd's journal collects).
    """
    for observer in list(publisher._observers):
        publisher.removeObserver(observer)
    if out is None:
        # twistd replaces sys.stdout with a logging file: write to the real
        # one, a line at a time.
        out = open(sys.__stdout__.fileno(), "w", buffering=1, encoding="utf-8", closefd=False)
    observer = _filtered(_flatFields(jsonFileLogObserver(out)), level)
    publisher.addObserver(observer)
    return observer


def _flatFields(observer):
    """
    Add C{time} (ISO 8601 with ms), C{level} and C{message} (the formatted
    line) to each event on its way to C{observer}; an event's own field of
    the same name wins.
    """
    def observe(event):
        level = event.get("log_level")
        observer({"time": formatTime(event.get("log_time")),
                  "level": level.name if level is not None else None,
                  "message": formatEvent(event), **event})
    return observe


def apply(logConfig, publisher=globalLogPublisher):
    if logConfig.format == "json":
        return useJSON(logConfig.level, publisher=publisher)
    withMilliseconds(publisher)
    return applyLevel(logConfig.level, publisher)
