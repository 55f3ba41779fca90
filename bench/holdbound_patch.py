"""
Experiment (``bench/run.py --before-patch holdbound_patch``): a batch holds writes at most
``S2SGATE_BENCH_HOLD_US`` µs (default 300): a stream that writes inside a batch open longer
than that has every held stream's writes flushed and sent at once, and the batch starts its
hold again.  The first stanzas of a long input chunk then wait at most that long for the
chunk's end.
"""
import os
import time

from s2sgate.xmpp import stream as _stream

HOLD = float(os.environ.get("S2SGATE_BENCH_HOLD_US", "300")) / 1e6
_enter = _stream.WriteBatch.enter
_send = _stream.XmlStream.send


def enter(self, size=0):
    if self.depth == 0:
        self.started = time.monotonic()
    _enter(self, size)


def send(self, data):
    sent = _send(self, data)
    batch = self.batch
    if batch is not None and batch.depth and time.monotonic() - batch.started >= HOLD:
        while batch.pending:
            pending, batch.pending = batch.pending, []
            for stream in dict.fromkeys(pending):
                stream.flushPending()
                stream._fullRecords = False
                stream.sendNow()
        batch.started = time.monotonic()
    return sent


_stream.WriteBatch.enter = enter
_stream.XmlStream.send = send
