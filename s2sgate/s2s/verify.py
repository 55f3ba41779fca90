# -*- test-case-name: tests.test_verify -*-
"""
The dialback verify leg (XEP-0220 receiving role): a short stream of its
own to a peer's authoritative server that secures itself as any outbound
stream does, sends one C{<db:verify/>} and ends with a typed L{Verdict}.

Every leg is an outbound connection a remote peer made us open, to where
its own DNS points: the verifier is shared by all inbound streams so that
it bounds them per peer address and in total (C{[s2s.limits]}), and a leg
whose requester went away is cancelled and its connection aborted at once.
"""

import collections

from twisted.internet import defer
from twisted.logger import Logger

from s2sgate.features.dialback import DialbackVerify, Verdict
from s2sgate.net.connector import ConnectFailed
from s2sgate.ops.metrics import NullMetrics
from s2sgate.s2s.dial import dial
from s2sgate.s2s.failures import FailureLog
from s2sgate.s2s.guard import VerifyRefused
from s2sgate.s2s.negotiation import InitiatingStream

__all__ = ["Verifier", "Verdict", "VerifyRefused"]

log = Logger()


class Verifier:
    """
    Asks C{remote}'s authoritative server whether a key is right.

    @param current: the L{Current} runtime (read at each verify).
    @param failures: the L{FailureLog} operators read; a failed leg's
        details go there (and to the log), never to the peer.
    """

    def __init__(self, clock, connector, current, batch=None, metrics=None, failures=None):
        self.clock = clock
        self.connector = connector
        self.current = current
        self.batch = batch
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.failures = failures if failures is not None else FailureLog(clock)
        self.inFlight = 0
        self.byAddress = collections.Counter()   # peer IP -> legs in flight

    def admit(self, peer, limits):
        """Raise L{VerifyRefused} when one more leg for C{peer} would pass a bound."""
        if self.inFlight >= limits.verifies_total:
            raise VerifyRefused("verifies_total",
                                f"{self.inFlight} dialback verifications in flight in total")
        if peer is not None and self.byAddress[peer] >= limits.verifies_per_address:
            raise VerifyRefused("verifies_per_address",
                                f"{self.byAddress[peer]} dialback verifications in flight "
                                f"for {peer}")

    async def verify(self, local, remote, streamId, key, peer=None) -> Verdict:
        """
        The verdict on C{key} for the stream C{streamId} that C{remote} opened to C{local}.

        @param peer: the IP address the requesting stream comes from.
        @raise VerifyRefused: over a bound; nothing was opened.
        @raise ConnectFailed: the leg failed (details in the failure log).
        """
        runtime = self.current.runtime
        try:
            self.admit(peer, runtime.config.s2s.limits)
        except VerifyRefused as e:
            self.metrics.verify("refused")
            self.metrics.limitHit(e.limit)
            raise
        self.inFlight += 1
        if peer is not None:
            self.byAddress[peer] += 1
        legs = {}

        def build():
            step = DialbackVerify(streamId, key)
            steps = [s(runtime) for s in runtime.verifySteps] + [step]
            stream = InitiatingStream(self.clock, local, remote, steps,
                                      requirements=runtime.requirements, tls=runtime.tls,
                                      limits=runtime.limits, batch=self.batch,
                                      metrics=self.metrics)
            legs[stream] = step
            return stream

        try:
            stream = await dial(self.connector, local, remote, build, runtime)
        except defer.CancelledError:
            self.metrics.verify("cancelled")
            _abort(legs)
            raise
        except ConnectFailed as e:
            _abort(legs)
            self.metrics.verify("failed")
            failed = [a for a in e.attempts if not a.ok]
            self.metrics.failure(failed[-1].step if failed else "unknown")
            self.failures.record(local, remote, e.condition, e.text, e.attempts,
                                 kind="dialback verify")
            log.warn("dialback verify {local} -> {remote} for a stream from {peer} failed "
                     "({condition}): {text}", local=local, remote=remote, peer=peer,
                     condition=e.condition, text=e.text, event="verify.failed")
            raise
        except BaseException:
            _abort(legs)
            raise
        finally:
            self.inFlight -= 1
            if peer is not None:
                self.byAddress[peer] -= 1
                if not self.byAddress[peer]:
                    del self.byAddress[peer]
        verdict = legs[stream].verdict
        self.metrics.verify("valid" if verdict.valid else "invalid")
        return verdict


def _abort(legs):
    """Drop the connection of every leg still open: its requester does not wait."""
    for stream in legs:
        transport = stream.transport
        if transport is not None and not stream.closed:
            stream.closing = True
            transport.abortConnection()
