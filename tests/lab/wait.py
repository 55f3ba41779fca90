"""
Waiting for an event without guessing how long it takes: poll with a deadline.

A loaded two-core machine makes any fixed sleep too short some day; a
deadline only decides how long to wait before giving up.
"""

import time

from twisted.internet import reactor, task


async def until(predicate, timeout=20, interval=0.05):
    """Poll C{predicate()} until it is true or C{timeout} seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        await task.deferLater(reactor, interval)


def untilSync(predicate, timeout=20, interval=0.05):
    """L{until} for code outside the reactor (subprocess tests)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
