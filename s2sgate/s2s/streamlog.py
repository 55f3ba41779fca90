# -*- test-case-name: tests.test_logged_once -*-
"""
The log line of an authenticated stream's end: closed (a closing tag or a
stream error, from either side, or our idle timeout) or lost (the connection
dropped without either), with the pairs, direction, security and counters,
so that one grep tells an operator what a link carried and how it ended.
A stream that did not end cleanly (lost, a stream error, dropped by us) is
a warning, and says what became of the stanzas it never acknowledged.
"""

__all__ = ["logStreamEnd", "pairText"]


def pairText(direction, pairs):
    """C{"a.test -> b.test"} for the first pair (sender first), C{" (+N more)"} after."""
    if not pairs:
        return "?"
    sender, receiver = pairs[0]
    more = f" (+{len(pairs) - 1} more)" if len(pairs) > 1 else ""
    return f"{sender} -> {receiver}{more}"


def logStreamEnd(stream, *, remote, pairs, stanzasIn, stanzasOut, security, now, fate=None,
                 **delivery):
    """
    One C{stream.closed} or C{stream.lost} event for C{stream}: info for a
    clean close, warn otherwise.  C{fate}: what became of the stanzas the
    stream never acknowledged (text), with C{delivery} as its fields.
    """
    lost = stream.endReason is None
    how = "lost (connection dropped without a closing tag)" if lost else stream.endReason
    seconds = max(0.0, now - stream.since)
    emit = stream.log.info if stream.endClean and not delivery.get("bounced") else stream.log.warn
    emit("{direction} stream {pair} {how} after {duration}: {stanzas_in} stanzas in, "
         "{stanzas_out} out, {bytes_in} bytes in, {bytes_out} out ({security}; {method})"
         + ("; {fate}" if fate else ""), fate=fate, **delivery,
         direction="outbound" if stream.direction == "out" else "inbound",
         pair=pairText(stream.direction, pairs), how=how, duration=_duration(seconds),
         seconds=round(seconds, 3), pairs=[list(p) for p in pairs], local=stream.local,
         remote=remote, stream=stream.streamId, security=security,
         method=stream.authMethod, reason=None if lost else stream.endReason,
         stanzas_in=stanzasIn, stanzas_out=stanzasOut, bytes_in=stream.bytesIn,
         bytes_out=stream.bytesOut, event="stream.lost" if lost else "stream.closed")


def _duration(seconds):
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min {int(seconds % 60)} s"
    return f"{minutes // 60} h {minutes % 60} min"
