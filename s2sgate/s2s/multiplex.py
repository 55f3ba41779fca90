# -*- test-case-name: tests.test_multiplex -*-
"""
Several local domains on one outbound stream (XEP-0220 multiplexing).

Once C{example.com} has a stream to a peer, C{conference.example.com}'s
first stanza to that peer need not open another connection: a
C{<db:result/>} for the new pair on the established stream asks the peer
to accept it.  The peer verifies the key by dialing back, or answers at
once when the certificate we presented covers that domain too (XEP-0344);
to us both are the same exchange.

  L{ExtraPairs}   per stream: the pairs added after the first, the
                  requests still waiting for an answer and their timers
  L{PeerMemory}   peers that refused an extra pair or did not answer in
                  time: bounded, and forgotten after a while
  L{Multiplexer}  what the pool asks before it dials: is there a stream
                  this pair may join, and did the peer take it?

The peer's word is final: an error, a refusal, no answer within
C{[s2s.multiplex] answer_timeout} or a stream error means a stream of the
pair's own, and the peer is remembered so that its next pairs are not
asked again.  Stanzas for the pair wait in its link's queue meanwhile, in
order, whichever stream they end up on.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from s2sgate.auth.dialback import dbElement, dbErrorReason
from s2sgate.timers import cancel
from s2sgate.xmpp.namespaces import NS_DB


@dataclass(frozen=True)
class PairAnswer:
    """
    How the peer took an extra pair: C{accepted}, or why not (C{why}) and
    whether that says the peer does not want extra pairs (C{remember}); a
    connection lost meanwhile says nothing about the peer.  C{outcome}
    names it for the metrics.
    """

    accepted: bool
    why: str = ""
    remember: bool = False
    outcome: str = "joined"


ACCEPTED = PairAnswer(True)


class ExtraPairs:
    """
    The pairs one outbound stream carries besides its first, and those it
    asked for that the peer has not answered yet.

    @param clock: the L{IReactorTime} of the answer timers.
    @param keys: the L{DialbackKeys} our keys come from.
    """

    def __init__(self, clock, keys):
        self.clock = clock
        self.keys = keys
        self.pairs = set()       # (local, remote) accepted on the stream
        self._pending = {}       # local -> (Deferred, DelayedCall)

    def pending(self, local):
        return local in self._pending

    def request(self, stream, local, timeout):
        """
        Send C{<db:result from=local to=remote>key</db:result>} on C{stream};
        a Deferred that fires with a L{PairAnswer}, always.
        """
        remote = stream.remote
        # Cancelled (the gateway is stopping): forget the request and its timer.
        d = defer.Deferred(lambda _: self._forget(local))
        call = self.clock.callLater(timeout, self._answer, local, PairAnswer(
            False, f"{remote} did not answer within {timeout:g} s", remember=True,
            outcome="timeout"))
        self._pending[local] = (d, call)
        stream.send(dbElement("result", local, remote,
                              key=self.keys.generate(remote, local, stream.streamId)))
        return d

    def answered(self, stream, element):
        """
        Take a C{<db:result/>} answer for one of our requests; True when the
        element was one (a late answer after the timeout is dropped here).
        """
        if (element.uri, element.name) != (NS_DB, "result") or not element.getAttribute("type"):
            return False
        local, kind = element.getAttribute("to"), element.getAttribute("type")
        if element.getAttribute("from") != stream.remote or local not in self._pending:
            stream.log.debug("{stream}: ignored a <db:result type={kind}/> for {local} that we no "
                      "longer wait for", stream=stream.describe(), kind=kind, local=local)
            return True
        if kind == "valid":
            self.pairs.add((local, stream.remote))
            self._answer(local, ACCEPTED)
        elif kind == "error":
            self._answer(local, PairAnswer(
                False, f"{stream.remote} refused {local} on the stream: "
                f"{dbErrorReason(element)}", remember=True, outcome="refused"))
        else:
            self._answer(local, PairAnswer(
                False, f"{stream.remote} did not accept {local} on the stream (type={kind})",
                remember=True, outcome="refused"))
        return True

    def streamGone(self, stream):
        """
        The stream ended: every request is answered no.  A stream error
        from the peer while we waited is its answer too (a peer that does
        not take extra pairs may close the stream over one).
        """
        refused = stream.peerError is not None
        why = (f"{stream.remote} closed the stream: {stream.peerError[0]}" if refused
               else "the stream ended before the answer")
        for local in list(self._pending):
            self._answer(local, PairAnswer(False, why, remember=refused,
                                           outcome="closed" if refused else "lost"))

    def _forget(self, local):
        d, call = self._pending.pop(local, (None, None))
        cancel(call)
        return d

    def _answer(self, local, answer):
        d = self._forget(local)
        if d is not None:
            d.callback(answer)


class PeerMemory:
    """
    Peers that will not take extra pairs: at most C{bound} of them (the
    oldest is forgotten first), each for C{keep} seconds.
    """

    def __init__(self, clock):
        self.clock = clock
        self._refused = collections.OrderedDict()   # remote -> (until, why)

    def remember(self, remote, why, *, keep, bound):
        self._refused.pop(remote, None)
        self._refused[remote] = (self.clock.seconds() + keep, why)
        while len(self._refused) > bound:
            self._refused.popitem(last=False)

    def refusal(self, remote):
        """Why C{remote} is not asked for extra pairs, or None."""
        entry = self._refused.get(remote)
        if entry is None:
            return None
        until, why = entry
        if until <= self.clock.seconds():
            del self._refused[remote]
            return None
        return why

    def __len__(self):
        return len(self._refused)

    def describe(self):
        """C{[{remote, why, until}]} for operators."""
        now = self.clock.seconds()
        return [{"remote": remote, "why": why, "until": until}
                for remote, (until, why) in self._refused.items() if until > now]


class Multiplexer:
    """
    What the outbound pool asks before it dials: whether a new pair can
    join an established stream to the same peer.

    @param sessions: the L{SessionTable} the streams are found in.
    @param current: the L{Current} runtime (C{[s2s.multiplex]}, read at
        each use: a reload applies at once).
    @param memory: the L{PeerMemory}.
    @param failures: the L{FailureLog}: a refusal is kept there too.
    @param metrics: counts each answer (C{extraPair(outcome)}).
    """

    log = Logger()

    def __init__(self, sessions, current, memory, failures, metrics):
        self.sessions = sessions
        self.current = current
        self.memory = memory
        self.failures = failures
        self.metrics = metrics

    @property
    def settings(self):
        return self.current.runtime.config.s2s.multiplex

    def candidate(self, local, remote):
        """The stream (local, remote) may join, or None."""
        if not self.settings.enabled or self.memory.refusal(remote) is not None:
            return None
        streams = [s for s in self.sessions.withPeer(remote)
                   if s.direction == "out" and s.authMethod is not None
                   and s.remote == remote and (local, remote) not in s.pairs
                   and not s.extraPairs.pending(local)
                   and (s.authMethod == "dialback" or s.dialbackOffered)]
        # The stream with the fewest pairs, the oldest of those.
        return min(streams, key=lambda s: (len(s.pairs), s.since), default=None)

    async def join(self, local, remote):
        """
        Authenticate (local, remote) on an established stream: the stream
        once the peer accepted, None when a stream of its own is needed.
        """
        stream = self.candidate(local, remote)
        if stream is None:
            return None
        settings = self.settings
        self.log.info("asking {remote} to take {local} on the stream of {first}",
                 remote=remote, local=local, first=stream.local, stream=stream.streamId,
                 event="outbound.pair_asked")
        answer = await stream.extraPairs.request(stream, local, settings.answer_timeout)
        self.metrics.extraPair(answer.outcome)
        if answer.accepted:
            # The stream's diagnostic log (s2sgate connect, the status page) says so too.
            stream.record("auth", f"{local} -> {remote} added to this stream with dialback "
                                  "(XEP-0220 multiplexing)")
            self.log.info("{remote} took {local} on the stream of {first}: {count} pairs on it",
                     remote=remote, local=local, first=stream.local, count=len(stream.pairs),
                     stream=stream.streamId, event="outbound.pair_added")
            return stream
        if answer.remember:
            self.memory.remember(remote, answer.why, keep=settings.forget_after,
                                 bound=settings.remember_peers)
            self.failures.record(local, remote, "extra-pair-refused",
                                 f"{answer.why}; a stream of its own instead, and none of "
                                 f"{remote}'s next pairs asked for {settings.forget_after:g} s",
                                 (), kind="extra pair refused")
        self.log.info("{remote} did not take {local} on an established stream ({why}); opening a "
                 "stream of its own", remote=remote, local=local, why=answer.why,
                 remembered=answer.remember, event="outbound.pair_refused")
        return None
