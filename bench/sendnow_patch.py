"""
Experiment only (``bench/run.py --before-patch sendnow_patch``): what the gateway's
latency would be if each batch left the process in the turn that made it.

Twisted sends nothing at ``write()``: the bytes wait in the TCP transport for its next
writable event.  When that next poll also returns the next chunk of input, the chunk is
handled before the send.  This patch, after a stream's batch is flushed (TLS writes
through already, s2sgate/net/tls.py), asks the TCP transport under it to write at once
(``doWrite``).  s2sgate's code is unchanged.
"""
from s2sgate.xmpp import stream as _stream

_flush = _stream.XmlStream.flushPending


def flushPending(self):
    had = bool(self._pending)
    _flush(self)
    transport = self.transport
    if had and transport is not None and not self.closed:
        while transport is not None and not hasattr(transport, "doWrite"):
            transport = getattr(transport, "transport", None)   # under our TLS layers
        doWrite = getattr(transport, "doWrite", None)
        if doWrite is not None:
            doWrite()


_stream.XmlStream.flushPending = flushPending
