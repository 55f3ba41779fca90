# -*- test-case-name: tests.test_guard -*-
"""
What bounds a misbehaving peer across streams: the log line it can make us
repeat, and the refusal a verify leg over its bound raises.

The bounds themselves are C{[s2s.limits]} (L{s2sgate.config.PeerLimits});
each one is checked where the work it bounds starts: the inbound stream
(claims, unauthenticated streams), the dialback offer (verifies per
stream) and the verifier (verifies per address and in total).
"""

from twisted.logger import Logger

__all__ = ["LogLimiter", "VerifyRefused"]


class VerifyRefused(Exception):
    """A verify leg over a bound (C{limit}, the config key): nothing was opened."""

    def __init__(self, limit, text):
        super().__init__(text)
        self.limit = limit
        self.text = text


class LogLimiter:
    """
    At most C{burst} lines per event per C{interval} seconds, so that a peer
    repeating one refusal cannot grow the log; the first line of the next
    window says how many were left out (field C{suppressed}).
    """

    def __init__(self, clock, log=None, burst=10, interval=60.0):
        self.clock = clock
        self.log = log if log is not None else Logger(namespace="s2sgate.peers")
        self.burst = burst
        self.interval = interval
        self._windows = {}   # event -> [start, lines, suppressed]

    def warn(self, format, event, **fields):
        """Log C{format} unless C{event} used its lines; True when logged."""
        return self.emit(self.log.warn, format, event, fields)

    def info(self, format, event, **fields):
        return self.emit(self.log.info, format, event, fields)

    def emit(self, method, format, event, fields):
        now = self.clock.seconds()
        window = self._windows.get(event)
        if window is None or now - window[0] >= self.interval:
            suppressed = window[2] if window is not None else 0
            window = self._windows[event] = [now, 0, 0]
            if suppressed:
                format += " ({suppressed} similar lines suppressed)"
                fields["suppressed"] = suppressed
        if window[1] >= self.burst:
            window[2] += 1
            return False
        window[1] += 1
        method(format, event=event, **fields)
        return True
