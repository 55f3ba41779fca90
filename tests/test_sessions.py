"""The session table: every stream, its pairs, what operators see of it."""

from s2sgate.s2s.negotiation import Untracked
from s2sgate.s2s.sessions import SessionTable


class Stream:
    """What the table reads of a stream (hashable, as streams are)."""

    def __init__(self, **values):
        self.__dict__.update(values)


def stream(direction, pairs=(), peer="remote.test", closing=False, **kw):
    values = dict(direction=direction, pairs=set(pairs), peer=peer, closing=closing,
                  closed=False, local="home.test", remote=peer, streamId="s1", peerAddress=None,
                  secure=False, tlsInfo={}, directTLS=False, authMethod="dialback", since=0.0,
                  stanzasIn=2, stanzasOut=3, bytesIn=10, bytesOut=20, certificate=None,
                  certificates={}, peerHost="127.0.3.7", bidi=False, streamManagement=False,
                  delivery=Untracked())
    values.update(kw)
    return Stream(**values)


def test_an_authenticated_outbound_stream_is_found_by_its_pair_until_it_closes():
    table = SessionTable()
    out = stream("out")
    table.authenticated(out, "home.test", "remote.test")
    assert table.outgoing("home.test", "remote.test") is out
    assert table.outgoing("home.test", "other.test") is None
    table.untrack(out)
    assert table.outgoing("home.test", "remote.test") is None
    assert table.streams() == []


def test_a_closing_outbound_stream_is_not_offered_for_new_stanzas():
    table = SessionTable()
    out = stream("out", closing=True)
    table.authenticated(out, "home.test", "remote.test")
    assert table.outgoing("home.test", "remote.test") is None


def test_inbound_streams_are_tracked_before_authentication_and_never_used_outbound():
    table = SessionTable()
    inbound = stream("in", authMethod=None)
    table.track(inbound)
    table.authenticated(inbound, "remote.test", "home.test")
    assert table.streams("in") == [inbound] and table.streams("out") == []
    assert table.outgoing("home.test", "remote.test") is None


def test_unauthenticated_inbound_streams_are_counted_per_address_until_they_authenticate():
    table = SessionTable()
    a1, a2 = stream("in", authMethod=None), stream("in", authMethod=None)
    b = stream("in", authMethod=None, peerHost="127.0.3.8")
    for s in (a1, a2, b):
        table.track(s)
    assert (table.unauthenticated("127.0.3.7"), table.unauthenticated("127.0.3.8"),
            table.unauthenticated()) == (2, 1, 3)
    table.authenticated(a1, "remote.test", "home.test")
    table.untrack(b)
    assert (table.unauthenticated("127.0.3.7"), table.unauthenticated("127.0.3.8"),
            table.unauthenticated()) == (1, 0, 1)
    table.untrack(a1)
    table.untrack(a2)
    assert table.unauthenticated() == 0 and table.unauthenticated("127.0.3.7") == 0


def test_with_peer_finds_inbound_streams_by_any_authenticated_sender():
    table = SessionTable()
    inbound = stream("in", pairs={("other.test", "home.test")}, peer="remote.test")
    table.track(inbound)
    assert table.withPeer("other.test") == [inbound]
    assert table.withPeer("home.test") == []


def test_describe_lists_authenticated_outbound_and_all_inbound_streams():
    table = SessionTable()
    table.track(stream("out", authMethod=None))          # not authenticated: not shown
    out = stream("out", pairs={("home.test", "remote.test")})
    table.authenticated(out, "home.test", "remote.test")
    table.track(stream("in", pairs={("remote.test", "home.test")}))
    rows = sorted(table.describe(queued=lambda local, remote: 7), key=lambda r: r["direction"])
    assert [(r["direction"], r["pairs"], r["queue"]) for r in rows] == [
        ("in", [["remote.test", "home.test"]], 0), ("out", [["home.test", "remote.test"]], 7)]
    assert rows[1]["stanzas_out"] == 3 and rows[0]["stanzas_in"] == 2


def test_an_outbound_stream_shared_by_two_local_domains_is_one_row_with_both_pairs():
    table = SessionTable()
    out = stream("out", pairs={("home.test", "remote.test"),
                               ("conference.home.test", "remote.test")})
    table.authenticated(out, "home.test", "remote.test")
    table.authenticated(out, "conference.home.test", "remote.test")
    assert table.outgoing("conference.home.test", "remote.test") is out
    queued = {("home.test", "remote.test"): 2, ("conference.home.test", "remote.test"): 3}
    [row] = table.describe(queued=lambda local, remote: queued[(local, remote)])
    # The pair that opened the stream first.
    assert row["pairs"] == [["home.test", "remote.test"],
                            ["conference.home.test", "remote.test"]]
    assert row["local"] == "home.test" and row["queue"] == 5
    table.untrack(out)
    assert table.outgoing("conference.home.test", "remote.test") is None
