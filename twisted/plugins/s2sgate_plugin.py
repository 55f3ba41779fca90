# -*- test-case-name: tests.test_tap -*-
"""The C{twistd s2sgate} plugin; the work is in L{s2sgate.tap}."""

from twisted.application.service import ServiceMaker

s2sgate = ServiceMaker(
    "s2sgate",
    "s2sgate.tap",
    "XMPP federation gateway (s2s for a c2s server, as an XEP-0114 component)",
    "s2sgate",
)
