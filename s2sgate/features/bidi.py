# -*- test-case-name: tests.test_bidi -*-
"""
Bidirectional s2s streams (XEP-0288), both sides.

  L{Bidi}       initiating: ask for bidi when the peer offers it, before
                authentication; the peer may then send its stanzas to us on
                the stream we opened (no connection back to us is needed)
  L{BidiOffer}  receiving: offer it before authentication and accept the
                request; our stanzas to that peer then go over its stream

A bidi stream carries, in the reverse direction, the pairs authenticated on
it: the peer's own authentication (certificate or dialback) is what proves
who it is, exactly as for a stream it opened to us.  Like Prosody's
mod_s2s_bidi, neither side offers or asks on a plaintext stream that the
requirements would not let carry stanzas.
"""

from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.interfaces import IOffer, IStep
from s2sgate.s2s.negotiation import Skip
from s2sgate.xmpp.namespaces import NS_BIDI, NS_BIDI_FEATURE


@implementer(IStep)
class Bidi:
    """
    Send C{<bidi/>} once, in the round that authenticates: after TLS (the
    restart throws away what was said before it), before SASL or dialback.
    """

    name = "bidi"

    def __init__(self, runtime):
        self.enabled = runtime.config.s2s.bidi

    def applies(self, stream, features):
        return (self.enabled and features is not None and not stream.bidi
                and features.child(NS_BIDI_FEATURE, "bidi") is not None
                and (stream.secure or not stream.requirements.mustEncrypt(stream.remote)))

    async def run(self, stream, features):
        stream.requestBidi(domish.Element((NS_BIDI, "bidi")))
        return Skip()


@implementer(IOffer)
class BidiOffer:
    """Offer bidi to a peer that has not authenticated yet; take its request."""

    # One per stream: no instance dict.
    __slots__ = ("enabled",)

    def __init__(self, runtime):
        self.enabled = runtime.config.s2s.bidi

    def advertise(self, stream, features):
        if (self.enabled and not stream.pairs and not stream.verifyOnly
                and stream.mayAuthenticate()):
            features.addElement((NS_BIDI_FEATURE, "bidi"))

    def handlers(self):
        return {(NS_BIDI, "bidi"): self.bidi}

    def bidi(self, stream, element):
        if not self.enabled:
            stream.streamError("unsupported-stanza-type", "bidirectional streams are not offered")
        elif stream.pairs:
            stream.streamError("policy-violation",
                               "<bidi/> must come before authentication (XEP-0288)")
        elif stream.mayAuthenticate():
            stream.useBidi()
        else:
            stream.streamError("policy-violation", "this server requires TLS (STARTTLS) first")

    def streamClosed(self, stream):
        pass
