# -*- test-case-name: tests.test_verify -*-
"""
The failure log operators read (C{s2sgate failures}, the admin API, the
status page): outbound attempts and dialback verify legs that failed, each
with its steps, and authenticated streams that were lost.  Details a remote
peer must not learn (addresses we tried, "connection refused") are kept
here, not sent to it.
"""

import collections


class FailureLog:
    """The last C{size} failures, oldest first."""

    def __init__(self, clock, size=50):
        self.clock = clock
        self._entries = collections.deque(maxlen=size)

    def record(self, local, remote, condition, text, attempts, kind="outbound"):
        """Keep one failure; C{kind} is "outbound", "dialback verify" or "stream lost"."""
        self._entries.append({
            "time": self.clock.seconds(), "kind": kind, "local": local, "remote": remote,
            "condition": condition, "text": text,
            "steps": [{"step": a.step, "target": a.target, "ok": a.ok, "detail": a.error}
                      for a in attempts],
        })

    def __iter__(self):
        return iter(self._entries)

    def __reversed__(self):
        return reversed(self._entries)

    def __len__(self):
        return len(self._entries)

    def __getitem__(self, index):
        return self._entries[index]
