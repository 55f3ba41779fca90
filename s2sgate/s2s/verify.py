# -*- test-case-name: tests.test_verify -*-
"""
The dialback verify leg (XEP-0220 receiving role): a short stream of its
own to a peer's authoritative server that secures itself as any outbound
stream does, sends one C{<db:verify/>} and ends with a typed L{Verdict}.
"""


from s2sgate.features.dialback import DialbackVerify, Verdict
from s2sgate.s2s.dial import dial
from s2sgate.s2s.negotiation import InitiatingStream

__all__ = ["Verifier", "Verdict"]


class Verifier:
    """
    Asks C{remote}'s authoritative server whether a key is right.

    @param current: the L{Current} runtime (read at each verify).
    """

    def __init__(self, clock, connector, current, batch=None, metrics=None):
        self.clock = clock
        self.connector = connector
        self.current = current
        self.batch = batch
        self.metrics = metrics

    async def verify(self, local, remote, streamId, key) -> Verdict:
        """The verdict on C{key} for the stream C{streamId} that C{remote} opened to C{local}."""
        runtime = self.current.runtime
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

        stream = await dial(self.connector, local, remote, build, runtime)
        return legs[stream].verdict
