"""
Experiment (``bench/run.py --before-patch recordsend_patch``): a full TLS record that a
batch flushes in the middle of an input chunk (FLUSH_BYTES) is also sent at once, not with
the rest at the batch's end.  Lower latency for the first stanzas of a large chunk, one
send per 16 KiB instead of one per chunk.
"""
from s2sgate.xmpp import stream as _stream

_flush = _stream.XmlStream.flushPending


def flushPending(self):
    _flush(self)
    if self.batch is not None and self.batch.depth:
        self.sendNow()


_stream.XmlStream.flushPending = flushPending
