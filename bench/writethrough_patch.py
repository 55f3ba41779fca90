"""
Experiment only (``bench/run.py --writethrough``): after STARTTLS, Twisted's
BufferingTLSTransport holds each write for one reactor turn to join small
writes; s2sgate's WriteBatch joins them already, so this turn is pure
latency.  The patch makes every TLS connection of the gateway process the
unbuffered TLSMemoryBIOProtocol.  s2sgate's own code is unchanged.
"""
from twisted.protocols import tls

tls.TLSMemoryBIOFactory.protocol = tls.TLSMemoryBIOProtocol
