# -*- test-case-name: tests.test_outbound,tests.test_inbound -*-
"""
Server Dialback (XEP-0220) in its four parts.

  L{Dialback}        originating: send our key, wait for the peer's verdict
  L{DialbackVerify}  the verify leg: ask a peer's authoritative server about a key
  L{DialbackOffer}   receiving: check a peer's key through the verify leg;
                     authoritative: answer verify requests from our own keys

Keys are XEP-0185 HMACs (L{s2sgate.auth.dialback.DialbackKeys}): any gateway
process with the same secret answers for any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from s2sgate.auth.dialback import dbElement, dbError, dbErrorReason
from s2sgate.interfaces import IOffer, IStep
from s2sgate.net.connector import ConnectFailed
from s2sgate.s2s.guard import VerifyRefused
from s2sgate.s2s.negotiation import Authenticated, Failed, Finished
from s2sgate.xmpp.domain import InvalidDomain, normalize
from s2sgate.xmpp.namespaces import NS_DB, NS_DB_FEATURE

log = Logger()

# What a peer learns when its key could not be checked: nothing of our
# connector's attempts (addresses, "connection refused", "timed out"), which
# would make us a port scanner for anyone with their own DNS.  One condition
# for every failure, as a timeout against a refusal is an answer too.
VERIFY_FAILED = ("remote-server-not-found", "could not verify the key")


@implementer(IStep)
class Dialback:
    """Originating role: the last resort, tried whatever the peer advertised."""

    name = "auth"

    def __init__(self, runtime):
        self.keys = runtime.keys

    def applies(self, stream, features):
        return features is not None

    async def run(self, stream, features):
        local, remote = stream.local, stream.remote
        stream.send(dbElement("result", local, remote,
                              key=self.keys.generate(remote, local, stream.streamId)))
        answer = await stream.expect(
            lambda e: (e.uri, e.name) == (NS_DB, "result")
            and e.getAttribute("from") == remote and e.getAttribute("to") == local)
        kind = answer.getAttribute("type")
        if kind == "valid":
            return Authenticated("dialback")
        if kind == "error":
            return Failed("remote-server-not-found",
                          f"{remote} refused dialback: {dbErrorReason(answer)}")
        return Failed("remote-server-not-found",
                      f"{remote} could not verify our dialback key (type={kind})")


@dataclass(frozen=True)
class Verdict:
    """What a peer's authoritative server said of a key: C{answer} is 'valid', 'invalid' or 'error: …'."""

    valid: bool
    answer: str


@implementer(IStep)
class DialbackVerify:
    """The verify leg's one job: send C{<db:verify/>}, keep the L{Verdict}."""

    name = "auth"

    def __init__(self, streamId, key):
        self.streamId = streamId
        self.key = key
        self.verdict = None

    def applies(self, stream, features):
        return features is not None

    async def run(self, stream, features):
        stream.send(dbElement("verify", stream.local, stream.remote, key=self.key,
                              streamId=self.streamId))
        answer = await stream.expect(lambda e: (e.uri, e.name) == (NS_DB, "verify"))
        kind = answer.getAttribute("type")
        if kind == "error":
            self.verdict = Verdict(False, "error: " + dbErrorReason(answer))
        else:
            self.verdict = Verdict(kind == "valid", kind or "no type")
        return Finished()


@implementer(IOffer)
class DialbackOffer:
    """
    Receiving and authoritative roles on an inbound stream.

    @param runtime: keys, requirements, the shortcuts (XEP-0344) and the
        verifier (the verify leg) come from it.
    """

    # One per stream: no instance dict.
    __slots__ = ("runtime", "pending")

    def __init__(self, runtime):
        self.runtime = runtime
        self.pending = {}          # (remote, local) -> Deferred of a verify

    def advertise(self, stream, features):
        if stream.mayAuthenticate():
            db = features.addElement((NS_DB_FEATURE, "dialback"))
            db.addElement("errors")

    def handlers(self):
        return {(NS_DB, None): self.dialback}

    def dialback(self, stream, element):
        if not stream.requireTLS(element.getAttribute("from")):
            return
        if element.name == "result":
            self.result(stream, element)
        elif element.name == "verify":
            self.verify(stream, element)

    def _parties(self, stream, element):
        """
        The (sender, local recipient) domains of a dialback request, or None
        after answering a malformed or misaddressed one.
        """
        sender, to = element.getAttribute("from"), element.getAttribute("to")
        try:
            remote, local = normalize(sender), normalize(to)
        except (InvalidDomain, TypeError):
            stream.streamError("improper-addressing", f"<db:{element.name}/> without valid from/to")
            return None
        if not self.runtime.isLocal(local):
            stream.send(dbError(element.name, to, sender, "item-not-found",
                                f"this server does not serve {to}",
                                streamId=element.getAttribute("id")))
            return None
        return remote, local

    # receiving role

    def result(self, stream, element):
        if element.getAttribute("type"):
            return
        parties = self._parties(stream, element)
        if parties is None:
            return
        remote, local = parties
        refuse = None
        if stream.pairs:
            # A further pair on an established stream (XEP-0220 multiplexing):
            # refused alone, with a dialback error; the stream stays.
            def refuse(text):
                stream.refuseClaim(remote, local, text,
                                   lambda why: dbError("result", local, remote, "not-allowed", why))
        if not stream.allowedByPolicy(remote, local, refuse):
            return
        if (remote, local) in stream.pairs or (remote, local) in self.pending:
            return
        if not stream.claim(remote):
            stream.refuseClaim(remote, local, "too many domains claimed on one stream",
                               lambda text: dbError("result", local, remote, "policy-violation",
                                                    text))
            return
        certificate = stream.certificateFor(remote)
        allowed, why = self.runtime.requirements.dialbackAllowed(remote, certificate)
        if not allowed:
            stream.refuseClaim(remote, local, why,
                               lambda text: dbError("result", local, remote, "not-authorized",
                                                    text))
            return
        for shortcut in self.runtime.dialbackShortcuts:
            method = shortcut(stream, remote, local)
            if method is not None:
                stream.authenticated(remote, local, method)
                stream.send(dbElement("result", local, remote, kind="valid"))
                return
        bound = stream.limits.verifies_per_stream
        if len(self.pending) >= bound:
            stream.limitHit("verifies_per_stream")
            stream.send(dbError("result", local, remote, "resource-constraint",
                                f"more than {bound} dialback requests at once on this stream"))
            return
        key = str(element).strip()
        d = defer.ensureDeferred(stream.verifier.verify(local, remote, stream.streamId, key,
                                                        peer=stream.peerHost))
        # Pending before the callbacks: a refusal over a bound fires at once.
        self.pending[(remote, local)] = d
        d.addCallbacks(self._verified, self._notVerified, callbackArgs=(stream, remote, local),
                       errbackArgs=(stream, remote, local))

    def _verified(self, verdict, stream, remote, local):
        self.pending.pop((remote, local), None)
        if stream.closed:
            return
        if verdict.valid:
            stream.authenticated(remote, local, "dialback")
            stream.send(dbElement("result", local, remote, kind="valid"))
            return
        log.warn("dialback key from {remote} for {local} not confirmed: {answer}",
                 remote=remote, local=local, answer=verdict.answer,
                 event="inbound.dialback_failed")
        stream.send(dbElement("result", local, remote, kind="invalid"))

    def _notVerified(self, failure, stream, remote, local):
        self.pending.pop((remote, local), None)
        if stream.closed or failure.check(defer.CancelledError):
            return
        if failure.check(VerifyRefused):
            stream.send(dbError("result", local, remote, "resource-constraint",
                                "too many dialback verifications in progress; try again later"))
            return
        if not failure.check(ConnectFailed):
            log.failure("verifying dialback from {remote} for {local} failed", failure,
                        remote=remote, local=local)
        # The details are in our log and failure log (the verifier's): not for the peer.
        stream.send(dbError("result", local, remote, *VERIFY_FAILED))

    def streamClosed(self, stream):
        for d in list(self.pending.values()):
            d.cancel()

    # authoritative role

    def verify(self, stream, element):
        if element.getAttribute("type"):
            return
        parties = self._parties(stream, element)
        if parties is None:
            return
        receiving, originating = parties
        streamId = element.getAttribute("id")
        valid = streamId and self.runtime.keys.check(receiving, originating, streamId,
                                                     str(element))
        stream.send(dbElement("verify", originating, receiving, streamId=streamId,
                              kind="valid" if valid else "invalid"))
