# -*- test-case-name: tests.test_stream_management -*-
"""
XEP-0198 stream management on s2s, both sides, without resumption.

Outbound, L{StreamManagement} runs once the pair is authenticated: when the
peer offers C{<sm/>} it sends C{<enable/>} and, on C{<enabled/>}, gives the
stream an L{AckWindow}, which keeps every stanza until the peer says it
handled it.  That is what lets the outbound link know, when a stream dies,
exactly which stanzas may not have arrived (and re-send or bounce them)
instead of losing them silently.

Inbound, L{StreamManagementOffer} offers C{<sm/>}, accepts C{<enable/>} once
a pair is authenticated and answers C{<r/>} with the number of stanzas the
stream handed on (C{<a h=.../>}).
"""

import collections

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.interfaces import IDeliveryTracker, IOffer, IStep
from s2sgate.s2s.negotiation import Skip, Track
from s2sgate.timers import cancel
from s2sgate.xmpp.namespaces import NS_SM, NS_STANZA_ERRORS

log = Logger()

# h counts modulo 2^32 (XEP-0198 §4).
WRAP = 2 ** 32


def _element(name, **attrs):
    e = domish.Element((NS_SM, name))
    for k, v in attrs.items():
        e[k] = v
    return e


@implementer(IDeliveryTracker)
class AckWindow:
    """
    The unacknowledged stanzas of one outbound stream and when to ask for acks.

    An C{<r/>} goes out at the end of each burst (the reactor turn in which
    stanzas were written), and at once when C{requestEvery} stanzas are
    unacknowledged since the last request: the window stays small under
    steady traffic and a burst never waits for a timer.

    @param stream: the L{InitiatingStream} the window belongs to (it sends C{<r/>}).
    """

    enabled = True

    def __init__(self, stream, clock, requestEvery):
        self.stream = stream
        self.clock = clock
        self.requestEvery = requestEvery
        self.window = collections.deque()   # (element, or None once released; resent)
        self.sent = 0
        self.acked = 0          # stanzas acknowledged
        self._h = 0             # the peer's last h (mod 2^32)
        self._sinceRequest = 0
        self._awaiting = False
        self._burstCall = None
        self._drains = []

    @property
    def unacked(self):
        return sum(1 for element, _ in self.window if element is not None)

    def stanzaSent(self, element, resent=False):
        self.window.append((element, resent))
        self.sent += 1
        self._sinceRequest += 1
        if self._sinceRequest >= self.requestEvery:
            self.request()
        elif self._burstCall is None:
            self._burstCall = self.clock.callLater(0, self._endOfBurst)

    def _endOfBurst(self):
        self._burstCall = None
        if self._sinceRequest and not self._awaiting:
            self.request()

    def request(self):
        """Ask the peer how many stanzas it handled."""
        if self.stream.closing or self.stream.closed:
            return
        self._sinceRequest = 0
        self._awaiting = True
        self.stream.send(_element("r"))

    def elementReceived(self, element):
        if element.uri != NS_SM:
            return False
        if element.name == "a":
            self._ack(element.getAttribute("h"))
        elif element.name == "r":
            # What the peer sent us on this stream: nothing, unless it is
            # bidirectional (XEP-0288); enabled before any stanza could come.
            self.stream.send(_element("a", h=str(self.stream.stanzasIn % WRAP)))
        return True

    def _ack(self, h):
        try:
            h = int(h)
        except (TypeError, ValueError):
            self.stream.streamError("invalid-xml", "<a/> needs a numeric h")
            return
        count = (h - self._h) % WRAP
        if count > len(self.window):
            self.stream.streamError("undefined-condition",
                                    f"h={h} acknowledges more stanzas than were sent")
            return
        self._h = h % WRAP
        self.acked += count
        for _ in range(count):
            self.window.popleft()
        self._awaiting = False
        if self._sinceRequest:
            self.request()
        if not self.window:
            drains, self._drains = self._drains, []
            for d in drains:
                d.callback(None)

    def drained(self):
        """A Deferred that fires once every stanza sent so far is acknowledged."""
        if not self.window:
            return defer.succeed(None)
        d = defer.Deferred()
        self._drains.append(d)
        if not self._awaiting:
            self.request()
        return d

    def unacknowledged(self):
        return [(e, resent) for e, resent in self.window if e is not None]

    def release(self):
        # Placeholders stay, so that the peer's later acks still count right.
        window = self.unacknowledged()
        self.window = collections.deque((None, resent) for _, resent in self.window)
        return window

    def streamGone(self):
        cancel(self._burstCall)
        self._burstCall = None
        drains, self._drains = self._drains, []
        for d in drains:
            d.callback(None)


@implementer(IStep)
class StreamManagement:
    """After authentication: enable acks when the peer offers C{<sm/>}."""

    name = "sm"

    def __init__(self, runtime):
        self.config = runtime.config.s2s.stream_management
        self.tried = False

    def applies(self, stream, features):
        return (self.config.enabled and not self.tried and features is not None
                and features.child(NS_SM, "sm") is not None)

    async def run(self, stream, features):
        self.tried = True
        stream.send(_element("enable"))
        answer = await stream.expect(lambda e: e.uri == NS_SM and e.name in ("enabled", "failed"))
        if answer.name == "enabled":
            return Track(AckWindow(stream, stream.clock, self.config.request_every))
        reason = ", ".join(c.name for c in answer.elements()) or "no reason given"
        log.info("{remote} refused stream management for {local} ({reason}); "
                 "stanzas go without acks", remote=stream.remote, local=stream.local,
                 reason=reason, event="outbound.sm_refused")
        return Skip()


@implementer(IOffer)
class StreamManagementOffer:
    """
    Offer C{<sm/>}; once enabled, C{h} is the number of stanzas this stream
    handed to the router since C{<enable/>}.
    """

    # One per stream: no instance dict.
    __slots__ = ("enabled", "base")

    def __init__(self, runtime):
        self.enabled = runtime.config.s2s.stream_management.enabled
        self.base = None   # stream.stanzasIn when enabled

    def advertise(self, stream, features):
        # Offered before authentication too (as servers do on c2s): an
        # initiating server that authenticates by dialback sees no new
        # features afterwards, and XEP-0198 only orders the <enable/>.
        if self.enabled and self.base is None and not stream.verifyOnly:
            features.addElement((NS_SM, "sm"))

    def handlers(self):
        return {(NS_SM, None): self.element} if self.enabled else {}

    def element(self, stream, element):
        if element.name == "enable":
            if self.base is not None or not stream.pairs:
                self._failed(stream, "unexpected-request")
                return
            self.base = stream.stanzasIn
            stream.acknowledging()
            stream.send(_element("enabled"))
        elif element.name == "r":
            if self.base is None:
                stream.streamError("unsupported-stanza-type", "<r/> before <enable/>")
                return
            stream.send(_element("a", h=str(self.handled(stream) % WRAP)))
        elif element.name == "a":
            pass   # we send no stanzas on inbound streams: nothing to release
        else:
            stream.streamError("unsupported-stanza-type", f"<{element.name}/> is not handled here")

    def handled(self, stream):
        return stream.stanzasIn - self.base

    def _failed(self, stream, condition):
        failed = _element("failed")
        failed.addElement((NS_STANZA_ERRORS, condition))
        stream.send(failed)

    def streamClosed(self, stream):
        pass
