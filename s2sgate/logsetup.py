# -*- test-case-name: tests.test_logsetup -*-
"""
Apply C{[log] level} to the observers twistd already installed.

twistd starts logging before the service starts and offers no hook to
filter it from a plugin, so the gateway wraps the observers it finds on the
global publisher in a level filter once, at start.
"""

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                            globalLogPublisher)

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
