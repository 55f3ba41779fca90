"""
s2sgate: an XMPP federation gateway.

It runs beside a c2s server as an XEP-0114 component and does all of the
server-to-server work for it.
"""

__version__ = "0.1.0"
