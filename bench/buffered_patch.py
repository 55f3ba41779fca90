"""
The gateway section's "before" gateway (bench/run.py): TLS and TCP writes as Twisted
makes them, instead of s2sgate's (s2sgate/net/tls.py).  Twisted's TLS holds each write
one reactor turn (``BufferingTLSTransport``, what ``ITLSTransport.startTLS`` and
``wrapClientTLS`` give), and its TCP transport sends at its next writable event, not at
``write()`` (no ``sendNow``).  Nothing else changes.
"""
from twisted.protocols import tls

from s2sgate.net import tls as ours
from s2sgate.xmpp import stream as _stream

ours.WriteThroughTLSFactory.protocol = tls.BufferingTLSTransport
ours.sendTCPNow = _stream.sendTCPNow = lambda transport: None
