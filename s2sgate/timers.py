# -*- test-case-name: tests.test_timers -*-
"""Delayed calls that may have run, or been cancelled, already."""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall


def cancel(call: IDelayedCall | None) -> None:
    """Cancel C{call} unless it ran or was cancelled already (Twisted raises for those)."""
    if call is not None and call.active():
        call.cancel()
