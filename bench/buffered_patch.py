"""
The gateway section's "before" gateway (bench/run.py): TLS writes as Twisted buffers
them, one reactor turn after the write (``BufferingTLSTransport``, what
``ITLSTransport.startTLS`` and ``wrapClientTLS`` give), instead of s2sgate's
write-through layers (s2sgate/net/tls.py).  Nothing else changes.
"""
from twisted.protocols import tls

from s2sgate.net import tls as ours

ours.WriteThroughTLSFactory.protocol = tls.BufferingTLSTransport
