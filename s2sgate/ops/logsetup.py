# -*- test-case-name: tests.test_logsetup -*-
"""
Apply C{[log]} (level, format) to the observers twistd installed.

twistd starts logging before the service starts and offers a plugin no
hook to filter or reformat it, so at start the gateway wraps the observers
it finds on the global publisher in a level filter, and for
C{format = "json"} replaces them with one JSON-lines observer (one event
per line, structured fields kept: domain pair, stream id, step, event).
"""

import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    jsonFileLogObserver,
)

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "error": LogLevel.error}


def applyLevel(level, publisher=globalLogPublisher):
    """Filter every observer of C{publisher} below C{level}; return how many were wrapped."""
    observers = []
    for observer in list(publisher._observers):
        predicate = getattr(observer, "_s2sgatePredicate", None)
        if predicate is not None:
            # Already ours (a reload): change its level in place.
            predicate.defaultLogLevel = LEVELS[level]
            predicate.clearLogLevels()   # the default level lives under namespace ""
            continue
        observers.append(observer)
        publisher.removeObserver(observer)
        publisher.addObserver(_filtered(observer, level))
    return len(observers)


def _filtered(observer, level):
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    wrapped = FilteringLogObserver(observer, [predicate])
    wrapped._s2sgatePredicate = predicate
    return wrapped


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
    observer = _filtered(jsonFileLogObserver(out), level)
    publisher.addObserver(observer)
    return observer


def apply(logConfig, publisher=globalLogPublisher):
    if logConfig.format == "json":
        return useJSON(logConfig.level, publisher=publisher)
    return applyLevel(logConfig.level, publisher)
