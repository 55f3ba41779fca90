# -*- test-case-name: tests.test_inbound -*-
"""XEP-0478 stream limits: tell the peer our stanza size limit and idle timeout."""

from zope.interface import implementer

from s2sgate.interfaces import IOffer
from s2sgate.xmpp.namespaces import NS_LIMITS


@implementer(IOffer)
class LimitsOffer:
    # One per stream: no instance dict.
    __slots__ = ("limits",)

    def __init__(self, runtime):
        self.limits = runtime.limits

    def advertise(self, stream, features):
        limits = features.addElement((NS_LIMITS, "limits"))
        limits.addElement("max-bytes", content=str(self.limits.stanzaBytes))
        if self.limits.idleTimeout:
            limits.addElement("idle-seconds", content=str(int(self.limits.idleTimeout)))

    def streamClosed(self, stream):
        pass

    def handlers(self):
        return {}
