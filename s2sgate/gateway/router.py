# -*- test-case-name: tests.test_router -*-
"""
Where each stanza goes.

From the c2s server (over the component link) a stanza must come from a
local domain and go to a remote one: it is handed to the outbound side for
that (local, remote) pair.  From remote servers (inbound streams, already
checked against the stream's authenticated pairs) it goes to the c2s
server.  Anything that cannot be delivered is bounced to its sender.
"""

from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.interfaces import IOutbound
from s2sgate.ops.metrics import NullMetrics
from s2sgate.xmpp.domain import InvalidDomain, domainOf
from s2sgate.xmpp.rawstanza import RawStanza
from s2sgate.xmpp.stanzas import STANZA_NAMES, shouldBounce

NS_PING = "urn:xmpp:ping"


@implementer(IOutbound)
class NoFederation:
    """
    The outbound side when s2s is not available: every remote-bound stanza
    is bounced with C{remote-server-not-found}.
    """

    def __init__(self, bounce, deliver):
        self.bounce = bounce

    def send(self, local, remote, element):
        self.bounce(element, "remote-server-not-found",
                    f"federation with {remote} is not available")


class Router:
    """
    Classify and route stanzas between the c2s server and the s2s side.

    Stanzas are L{RawStanza}s everywhere: routing reads their outer
    attributes; only the gateway's own replies and bounces build a DOM.

    The router is the hub of the data flow, so it builds its two
    neighbours itself and hands each the methods it calls back:

      c2s server --local--> fromLocal --> outbound.send(local, remote, stanza)
      c2s server <--local-- deliverLocal <-- fromRemote <-- inbound (and bidi) streams
                                          <-- bounce <-- outbound failures

    @param current: the L{Current} runtime (policy, local domains).
    @param outbound: C{outbound(bounce=..., deliver=...) -> IOutbound}; C{deliver}
        takes what peers send on bidi streams we opened (XEP-0288).
    @param local: C{local(onStanza=..., onBounce=...) -> IComponentLink}.
    """

    log = Logger()

    def __init__(self, current, *, outbound, local, metrics=None):
        self.current = current
        self.componentJid = current.runtime.config.component.jid
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.bounced = 0
        self.outbound = outbound(bounce=self.bounce, deliver=self.fromRemote)
        self.local = local(onStanza=self.fromLocal, onBounce=self.bounceFromLocalSide)

    def isLocal(self, domain):
        return self.current.runtime.isLocal(domain)

    # from the c2s server

    def fromLocal(self, element):
        """Route a stanza the c2s server handed us."""
        if element.name not in STANZA_NAMES:
            self.log.debug("ignored non-stanza <{name}/> from the c2s server", name=element.name)
            return
        sender = element.getAttribute("from")
        recipient = element.getAttribute("to")
        if not sender:
            self.log.warn("dropped a {name} without from: the c2s server must set it",
                          name=element.name)
            return
        try:
            local = domainOf(sender)
        except InvalidDomain as e:
            self.log.warn("dropped a {name} with a malformed from: {error}", name=element.name,
                          error=str(e))
            return
        runtime = self.current.runtime   # one runtime for the whole decision
        localDomains = runtime.localDomains
        if local not in localDomains:
            self.bounce(element, "not-allowed",
                        f"{local} is not one of this gateway's local_domains")
            return
        if not recipient:
            self.forGateway(element)
            return
        try:
            remote = domainOf(recipient)
        except InvalidDomain as e:
            self.bounce(element, "jid-malformed", str(e))
            return
        if remote == self.componentJid:
            self.forGateway(element)
            return
        if remote in localDomains:
            self.bounce(element, "service-unavailable",
                        f"{remote} is a local domain; the c2s server delivers it itself")
            return
        policy = runtime.policy
        ok, condition, text = policy.check(local, remote)
        if not ok:
            policy.refuse("outbound", local, remote, text)
            self.bounce(element, condition, text)
            return
        self.metrics.stanza("out")
        self.outbound.send(local, remote, element)

    def forGateway(self, element):
        """Stanzas addressed to the gateway itself: answer pings, refuse other iqs."""
        if element.name != "iq" or element.getAttribute("type") not in ("get", "set"):
            return
        child = element.element().firstChildElement()
        if child is not None and (child.uri, child.name) == (NS_PING, "ping"):
            reply = domish.Element((element.uri, "iq"), element.uri)
            reply["type"] = "result"
            reply["id"] = element.getAttribute("id", "")
            reply["from"] = element.getAttribute("to") or self.componentJid
            reply["to"] = element.getAttribute("from")
            self.deliverLocal(RawStanza.fromElement(reply))
            return
        self.bounce(element, "service-unavailable")

    # towards the c2s server

    def fromRemote(self, element):
        """Deliver an authenticated inbound stanza to the c2s server."""
        self.metrics.stanza("in")
        self.deliverLocal(element)

    def deliverLocal(self, element):
        self.local.send(element)

    def bounce(self, element, condition, text=None):
        """Send the error reply for a local sender's stanza back to the c2s server."""
        if not shouldBounce(element):
            self.log.debug("undeliverable {name} not bounced ({condition})", name=element.name,
                           condition=condition)
            return
        self.bounced += 1
        self.metrics.bounce(condition)
        self.deliverLocal(element.errorReply(condition, text))

    def bounceFromLocalSide(self, reply):
        """
        An error reply generated for a remote sender (its stanza could not
        reach the c2s server): send it back out to the remote server.
        """
        self.fromLocal(reply)
