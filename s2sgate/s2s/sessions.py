# -*- test-case-name: tests.test_sessions -*-
"""
The session table: every open s2s stream, both directions, and the
authenticated pairs each one carries.

The outbound links find their stream here, the admin API, the status
page, the metrics and C{s2sgate sessions} read it; nothing else keeps a
list of streams.  A stream is tracked when it connects, indexed by pair
when a pair is authenticated on it, and forgotten when it closes.

A bidirectional inbound stream (XEP-0288) serves both directions: each
(remote, local) pair authenticated on it also carries our stanzas from
local to remote, when no outbound stream of our own does.
"""

import collections

from zope.interface import implementer

from s2sgate.interfaces import ISessionTable


@implementer(ISessionTable)
class SessionTable:
    def __init__(self):
        self._streams = set()
        self._outgoing = {}    # (local, remote) -> stream
        self._reverse = {}     # (local, remote) -> bidi inbound stream that carries it
        self.inboundPaused = False
        # Inbound streams with no pair yet, counted per peer IP: what an
        # unauthenticated peer holds open ([s2s.limits] unauthenticated_*).
        self._waiting = set()
        self._waitingByHost = collections.Counter()

    def track(self, session):
        self._streams.add(session)
        if session.direction == "in" and not session.pairs and session not in self._waiting:
            self._waiting.add(session)
            self._waitingByHost[session.peerHost] += 1

    def authenticated(self, session, sender, receiver):
        self._streams.add(session)
        self._stopWaiting(session)
        if session.direction == "out":
            self._outgoing[(sender, receiver)] = session
            if session.bidi and self.inboundPaused:
                session.pauseReading()
            return
        if session.bidi:
            self._reverse[(receiver, sender)] = session
        if self.inboundPaused:
            session.pauseReading()

    # Back-pressure from the component link: inbound streams that carry
    # stanzas stop being read (unauthenticated ones may still negotiate;
    # they cannot send stanzas yet), including streams authenticated while
    # the pause lasts.

    def pauseInbound(self):
        """Stop reading from every authenticated inbound stream; returns how many."""
        self.inboundPaused = True
        paused = [s for s in self._streams if _delivers(s) and not s.closed]
        for stream in paused:
            stream.pauseReading()
        return len(paused)

    def resumeInbound(self):
        """Read from every inbound stream again."""
        self.inboundPaused = False
        for stream in [s for s in self._streams if s.direction == "in" or s.bidi]:
            stream.resumeReading()

    def unauthenticated(self, host=None):
        return self._waitingByHost[host] if host is not None else len(self._waiting)

    def _stopWaiting(self, session):
        if session in self._waiting:
            self._waiting.discard(session)
            self._waitingByHost[session.peerHost] -= 1
            if not self._waitingByHost[session.peerHost]:
                del self._waitingByHost[session.peerHost]

    def untrack(self, session):
        self._streams.discard(session)
        self._stopWaiting(session)
        for table in (self._outgoing, self._reverse):
            for pair in [p for p, s in table.items() if s is session]:
                del table[pair]

    def outgoing(self, local, remote):
        """
        The stream our stanzas from C{local} to C{remote} go on: our own
        outbound stream, else a bidi stream the peer opened to us.
        """
        for table in (self._outgoing, self._reverse):
            stream = table.get((local, remote))
            # Once our closing tag is out, anything written would be lost.
            if stream is not None and not stream.closing:
                return stream
        return None

    def streams(self, direction=None):
        """Open streams (authenticated or not), optionally of one direction."""
        return [s for s in self._streams if direction is None or s.direction == direction]

    def live(self):
        """Streams that are neither closing nor closed."""
        return [s for s in self._streams if not (s.closing or s.closed)]

    def withPeer(self, remote):
        """Live streams that carry a pair with C{remote}."""
        return [s for s in self.live() if s.peer == remote or (
            s.direction == "in" and any(r == remote for r, _ in s.pairs))]

    def describe(self, queued=lambda local, remote: 0):
        """One dict per live authenticated outbound stream and per live inbound stream."""
        result = []
        for stream in self.live():
            if stream.direction == "out":
                if not stream.authMethod:
                    continue
                d = stream.delivery
                # Several local domains may share it (XEP-0220 multiplexing):
                # the pair that opened it first, then those that joined.
                first = [stream.local, stream.remote]
                pairs = [first] + sorted([local, remote] for local, remote in stream.pairs
                                         if [local, remote] != first)
                result.append(sessionInfo(stream, pairs,
                                          stanzasIn=stream.stanzasIn, stanzasOut=stream.stanzasOut,
                                          queue=sum(queued(*pair) for pair in pairs),
                                          certificate=stream.certificate,
                                          sm=d.enabled, unacked=d.unacked))
            else:
                remote = stream.peer
                result.append(sessionInfo(stream, sorted([sender, to] for sender, to in stream.pairs),
                                          stanzasIn=stream.stanzasIn, stanzasOut=stream.stanzasOut,
                                          queue=0,
                                          certificate=stream.certificates.get(remote),
                                          sm=stream.streamManagement,
                                          unacked=0 if stream.streamManagement else None))
        return result


def _delivers(stream):
    """Whether stanzas from the peer arrive on C{stream} (inbound, or bidi outbound)."""
    if stream.direction == "in":
        return bool(stream.pairs)
    return stream.bidi and stream.authMethod is not None


def domainsOf(info, ours, none="-"):
    """
    Our domains on a stream (C{ours}) or the peer's, from a L{sessionInfo}'s
    pairs, comma-separated: several when they share it (XEP-0220
    multiplexing).  For tables: C{s2sgate sessions}, the demo.
    """
    outbound = info["direction"] == "out"
    side = 0 if outbound == ours else 1
    domains = list(dict.fromkeys(p[side] for p in info.get("pairs") or []))
    if not domains:
        return info.get("local" if ours else "remote") or none
    return ",".join(domains)


def sessionInfo(stream, pairs, *, stanzasIn, stanzasOut, queue, certificate, sm=False,
                unacked=None):
    """What operators see of one stream (admin API, status page, CLI)."""
    return {
        "direction": stream.direction, "local": stream.local, "remote": stream.peer,
        "pairs": pairs, "stream_id": stream.streamId, "peer": str(stream.peerAddress or ""),
        "tls": dict(stream.tlsInfo) if stream.secure else None,
        "direct_tls": bool(stream.directTLS),
        "bidi": bool(stream.bidi),
        "certificate": None if certificate is None else {
            "status": certificate.status, "reason": certificate.reason,
            "names": certificate.identities.describe() if certificate.identities else "",
            "dane": certificate.dane,
            "not_after": certificate.notAfter.timestamp() if certificate.notAfter else None},
        "auth": stream.authMethod, "since": stream.since,
        "stanzas_in": stanzasIn, "stanzas_out": stanzasOut,
        "bytes_in": stream.bytesIn, "bytes_out": stream.bytesOut, "queue": queue,
        # XEP-0198: whether acks are on, and (outbound) how many stanzas await one.
        "sm": bool(sm), "unacked": unacked,
    }
