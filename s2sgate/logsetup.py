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

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                            globalLogPublisher, jsonFileLogObserver)

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "error": LogLevel.error}


def applyLevel(level, publisher=globalLogPublisher):
    """Filter every observer of C{publisher} below C{level}; return how many were wrapped."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    observers = [o for o in list(publisher._observers)
                 if not getattr(o, "_s2sgateFiltered", False)]
    for observer in observers:
        publisher.removeObserver(observer)
        wrapped = FilteringLogObserver(observer, [predicate])
        wrapped._s2sgateFiltered = True
        publisher.addObserver(wrapped)
    return len(observers)


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
    observer = FilteringLogObserver(jsonFileLogObserver(out),
                                    [LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])])
    observer._s2sgateFiltered = True
    publisher.addObserver(observer)
    return observer


def apply(logConfig, publisher=globalLogPublisher):
    if logConfig.format == "json":
        return useJSON(logConfig.level, publisher=publisher)
    return applyLevel(logConfig.level, publisher)
