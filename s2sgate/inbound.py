# -*- test-case-name: tests.test_inbound -*-
"""
Inbound s2s: streams remote servers open to us.

One L{InboundStream} holds the state of one connection: the header checks,
the features, the dialback pairs it has authenticated (receiving role), the
verify requests it answers (authoritative role), and the check that every
stanza's C{from}/C{to} domains are one of its authenticated pairs.
"""

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.words.xish import domish

from s2sgate.connector import ConnectFailed
from s2sgate.dialback import NS_DB, NS_DB_FEATURE, dbElement, dbError
from s2sgate.domain import InvalidDomain, domainOf, normalize
from s2sgate.stanzas import STANZA_NAMES
from s2sgate.stream import XmlStream, newStreamId

NS_LIMITS = "urn:xmpp:stream-limits:0"


class InboundStream(XmlStream):
    extraNamespaces = (("db", NS_DB),)

    def __init__(self, gateway):
        s = gateway.config.s2s
        XmlStream.__init__(self, gateway.clock, maxStanzaBytes=s.stanza_size_limit,
                           idleTimeout=s.idle_timeout)
        self.gateway = gateway
        self.streamId = newStreamId()
        self.local = None          # the domain in the header's 'to'
        self.remoteHeader = None   # the header's 'from', if any
        self.pairs = set()         # authenticated (remote, local)
        self.pending = {}          # (remote, local) -> Deferred of a verify
        self.authMethod = None
        self.secure = False
        self.stanzasIn = 0
        self._negotiationCall = None

    def describe(self):
        return f"inbound {self.remoteHeader or '?'} -> {self.local or '?'} [{self.streamId}]"

    def connectionMade(self):
        XmlStream.connectionMade(self)
        self.gateway.inboundStreams.add(self)
        self._negotiationCall = self.clock.callLater(self.gateway.config.s2s.negotiation_timeout,
                                                     self._negotiationTimedOut)

    def errorHeaderAttrs(self):
        attrs = {"id": self.streamId, "version": "1.0"}
        if self.local:
            attrs["from"] = self.local
        return attrs

    def streamStarted(self, header):
        to = header.getAttribute("to")
        try:
            local = normalize(to) if to else None
        except InvalidDomain:
            local = None
        if local is None or not self.gateway.router.isLocal(local):
            self.streamError("host-unknown", f"this server does not serve {to!r}")
            return
        self.local = local
        sender = header.getAttribute("from")
        if sender:
            try:
                self.remoteHeader = normalize(sender)
            except InvalidDomain:
                self.streamError("invalid-from", f"{sender!r} is not a valid domain")
                return
        attrs = {"from": local, "id": self.streamId}
        version = header.getAttribute("version")
        if version and version >= "1.0":
            attrs["version"] = "1.0"
        if self.remoteHeader:
            attrs["to"] = self.remoteHeader
        self.sendHeader(attrs)
        if "version" in attrs:
            self.send(self.features())

    def features(self):
        f = domish.Element(("http://etherx.jabber.org/streams", "features"))
        db = f.addElement((NS_DB_FEATURE, "dialback"))
        db.addElement("errors")
        limits = f.addElement((NS_LIMITS, "limits"))
        limits.addElement("max-bytes", content=str(self.maxStanzaBytes))
        if self.idleTimeout:
            limits.addElement("idle-seconds", content=str(int(self.idleTimeout)))
        return f

    def elementReceived(self, element):
        if element.uri == NS_DB:
            if element.name == "result":
                self._dialbackResult(element)
            elif element.name == "verify":
                self._dialbackVerify(element)
            return
        if element.name not in STANZA_NAMES or element.uri != "jabber:server":
            self.streamError("unsupported-stanza-type", f"<{element.name}/> is not a stanza")
            return
        self._stanza(element)

    # receiving role

    def _dialbackParties(self, element):
        """
        The (sender, local recipient) domains of a dialback request, or None
        after answering a malformed or misaddressed one.
        """
        sender, to = element.getAttribute("from"), element.getAttribute("to")
        try:
            remote, local = normalize(sender), normalize(to)
        except (InvalidDomain, TypeError):
            self.streamError("improper-addressing", f"<db:{element.name}/> without valid from/to")
            return None
        if not self.gateway.router.isLocal(local):
            self.send(dbError(element.name, to, sender, "item-not-found",
                              f"this server does not serve {to}",
                              streamId=element.getAttribute("id")))
            return None
        return remote, local

    def _dialbackResult(self, element):
        if element.getAttribute("type"):
            return
        parties = self._dialbackParties(element)
        if parties is None:
            return
        remote, local = parties
        ok, _, text = self.gateway.policy.check(local, remote)
        if not ok:
            self.gateway.policy.refuse("inbound", local, remote, text)
            self.streamError("policy-violation", text)
            return
        if (remote, local) in self.pairs or (remote, local) in self.pending:
            return
        key = str(element).strip()
        d = defer.ensureDeferred(self.gateway.pool.verify(local, remote, self.streamId, key))
        self.pending[(remote, local)] = d
        d.addBoth(self._verified, remote, local)

    def _verified(self, result, remote, local):
        self.pending.pop((remote, local), None)
        if self.closed:
            return
        if isinstance(result, str) and result == "valid":
            self.pairs.add((remote, local))
            self.authMethod = self.authMethod or "dialback"
            self._cancelNegotiationTimer()
            self.log.info("inbound stream {remote} -> {local} authenticated (dialback, {tls})",
                          remote=remote, local=local, tls="TLS" if self.secure else "no TLS",
                          stream=self.streamId, event="inbound.established")
            self.send(dbElement("result", local, remote, kind="valid"))
            return
        if isinstance(result, str):
            self.log.warn("dialback key from {remote} for {local} not confirmed: {answer}",
                          remote=remote, local=local, answer=result, event="inbound.dialback_failed")
            self.send(dbElement("result", local, remote, kind="invalid"))
            return
        if result.check(ConnectFailed):
            condition, text = result.value.condition, result.value.text
        else:
            condition, text = "remote-server-not-found", result.getErrorMessage()
        self.log.warn("cannot verify dialback from {remote} for {local}: {text}", remote=remote,
                      local=local, text=text, event="inbound.dialback_failed")
        self.send(dbError("result", local, remote, condition, text))

    # authoritative role

    def _dialbackVerify(self, element):
        if element.getAttribute("type"):
            return
        parties = self._dialbackParties(element)
        if parties is None:
            return
        receiving, originating = parties
        streamId = element.getAttribute("id")
        valid = streamId and self.gateway.keys.check(receiving, originating, streamId, str(element))
        self.send(dbElement("verify", originating, receiving, streamId=streamId,
                            kind="valid" if valid else "invalid"))

    # stanzas

    def _stanza(self, element):
        sender, to = element.getAttribute("from"), element.getAttribute("to")
        if not sender or not to:
            self.streamError("improper-addressing", "stanzas on s2s streams need from and to")
            return
        try:
            remote = domainOf(sender)
        except InvalidDomain:
            self.streamError("invalid-from", f"{sender!r} is not a valid address")
            return
        try:
            local = domainOf(to)
        except InvalidDomain:
            self.streamError("improper-addressing", f"{to!r} is not a valid address")
            return
        if not self.gateway.router.isLocal(local):
            self.streamError("host-unknown", f"this server does not serve {local}")
            return
        if (remote, local) not in self.pairs:
            self.streamError("invalid-from",
                             f"{remote} is not authenticated on this stream for {local}")
            return
        self.stanzasIn += 1
        self.gateway.router.fromRemote(element)

    # timers and teardown

    def _negotiationTimedOut(self):
        self._negotiationCall = None
        if not self.pairs and not self.pending:
            self.streamError("connection-timeout", "no authentication in time")

    def _cancelNegotiationTimer(self):
        if self._negotiationCall is not None and self._negotiationCall.active():
            self._negotiationCall.cancel()
        self._negotiationCall = None

    def streamClosed(self, reason):
        self._cancelNegotiationTimer()
        self.gateway.inboundStreams.discard(self)
        for d in list(self.pending.values()):
            d.cancel()


class InboundFactory(Factory):
    def __init__(self, gateway):
        self.gateway = gateway

    def buildProtocol(self, addr):
        p = InboundStream(self.gateway)
        p.factory = self
        p.peerAddress = addr
        return p
