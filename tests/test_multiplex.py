"""
Several local domains on one outbound stream (XEP-0220 multiplexing, issue
12 §2).

First against a scripted peer on an in-memory transport (task.Clock): what
we send for the extra pair and what each of the peer's answers does to it.
Then two whole gateways federating in memory, where the peer is our own
inbound side: the extra pair shares the stream both sides agree on, and a
lost stream gives each pair back what it never had acknowledged.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from s2sgate.auth.dialback import NS_DB
from s2sgate.config import parse_config
from s2sgate.gateway.service import GatewayService
from s2sgate.net.connector import Connection
from s2sgate.s2s.multiplex import ExtraPairs, PeerMemory
from s2sgate.xmpp.rawstanza import RawStanza
from s2sgate.xmpp.stanzas import NS_STANZA_ERRORS
from tests.s2sfakes import LOCAL, MUC, REMOTE, SECRET, Output, connect, makeGateway, stanza
from tests.test_inbound_tls import valid
from tests.test_outbound import (
    FEATURES,
    dbAnswer,
    peerHeader,
)
from tests.test_outbound import makePool as _makePool
from tests.test_outbound_tls import DIALBACK, EXTERNAL, PROCEED, STARTTLS, SUCCESS, features
from tests.test_outbound_tls import newStream as tlsStream
from tests.test_outbound_tls import peerHeader as tlsPeerHeader
from tests.test_plugin_feature import LocalDeliveries, MemoryNetwork

UPLOAD = "upload.home.test"


def threeDomains(**s2s):
    s = {"use_starttls": "false", "shared": SECRET}
    s.update(s2s)
    return parse_config({"local_domains": [LOCAL, MUC, UPLOAD],
                         "component": {"jid": "s2s.home.test", "secret": "x"},
                         "s2s": s}, "t.toml")


def makePool(**s2s):
    gw, pool, connector = _makePool(config=threeDomains(**s2s))
    return gw, pool, connector


def fromDomain(domain, body):
    return RawStanza.fromElement(stanza(sender=f"user@{domain}/r", to=f"bob@{REMOTE}", body=body))


def succeed(call, local=MUC):
    """Complete connection attempt C{call} for C{local}: connect, negotiate, dialback valid."""
    stream = call.factory.buildProtocol(None)
    out = Output(connect(stream))
    call.d.callback(Connection(stream, None, None))
    stream.dataReceived(peerHeader() + FEATURES)
    answer(stream, "valid", to=local)
    assert stream.authMethod == "dialback"
    return stream, out


def connected(**s2s):
    """A pool whose LOCAL -> REMOTE stream is established (dialback valid)."""
    gw, pool, connector = makePool(**s2s)
    pool.send(LOCAL, REMOTE, fromDomain(LOCAL, "first"))
    stream, out = succeed(connector.calls[0], LOCAL)
    return gw, pool, connector, stream, out


def bodiesFrom(out, domain):
    return [str(m.body) for m in out.named("message") if m["from"].endswith("@" + domain + "/r")]


def answer(stream, kind, to=MUC, inner=""):
    stream.dataReceived(f"<db:result from='{REMOTE}' to='{to}' type='{kind}'>{inner}"
                        f"</db:result>".encode())


def extraResults(out, local=MUC):
    return [r for r in out.named("result", NS_DB) if r["from"] == local]


# the peer's answers


def test_a_second_local_domain_asks_on_the_established_stream_with_its_own_dialback_key():
    gw, pool, connector, stream, out = connected()
    pool.send(MUC, REMOTE, fromDomain(MUC, "m0"))
    [result] = extraResults(out)
    assert (result["to"], str(result)) == (REMOTE, gw.keys.generate(REMOTE, MUC, stream.streamId))
    assert len(connector.calls) == 1            # no new connection
    assert bodiesFrom(out, MUC) == []           # nothing before the peer accepts


def test_when_the_peer_accepts_the_stanzas_go_over_the_same_stream():
    gw, pool, connector, stream, out = connected()
    pool.send(MUC, REMOTE, fromDomain(MUC, "m0"))
    answer(stream, "valid")
    pool.send(MUC, REMOTE, fromDomain(MUC, "m1"))
    assert bodiesFrom(out, MUC) == ["m0", "m1"]
    assert len(connector.calls) == 1
    assert gw.sessions.outgoing(MUC, REMOTE) is stream
    assert stream.pairs == {(LOCAL, REMOTE), (MUC, REMOTE)}
    assert (stream.trace[-1].step, stream.trace[-1].error) == (
        "auth", f"{MUC} -> {REMOTE} added to this stream with dialback (XEP-0220 multiplexing)")


def test_stanzas_queued_while_the_extra_pair_is_pending_go_out_in_order_and_the_first_pair_flows():
    gw, pool, connector, stream, out = connected()
    for i in range(3):
        pool.send(MUC, REMOTE, fromDomain(MUC, f"m{i}"))
        pool.send(LOCAL, REMOTE, fromDomain(LOCAL, f"l{i}"))
    assert bodiesFrom(out, LOCAL) == ["first", "l0", "l1", "l2"]
    assert len(extraResults(out)) == 1          # one request, however many stanzas
    answer(stream, "valid")
    assert bodiesFrom(out, MUC) == ["m0", "m1", "m2"]
    assert gw.router.delivered == []


def test_a_dialback_error_opens_a_stream_of_its_own_and_the_peer_is_remembered():
    gw, pool, connector, stream, out = connected()
    for i in range(2):
        pool.send(MUC, REMOTE, fromDomain(MUC, f"m{i}"))
    answer(stream, "error", inner=f"<error type='cancel'><not-allowed xmlns='{NS_STANZA_ERRORS}'/>"
                                  f"</error>")
    [_, call] = connector.calls
    own, ownOut = succeed(call)
    assert own is not stream and (own.local, own.remote) == (MUC, REMOTE)
    assert bodiesFrom(ownOut, MUC) == ["m0", "m1"] and bodiesFrom(out, MUC) == []
    assert gw.router.delivered == []            # nothing bounced on the way
    assert "not-allowed" in pool.multiplexer.memory.refusal(REMOTE)
    # The next local domain does not ask this peer again: it dials at once.
    pool.send(UPLOAD, REMOTE, fromDomain(UPLOAD, "u0"))
    assert extraResults(out, UPLOAD) == [] and extraResults(ownOut, UPLOAD) == []
    assert len(connector.calls) == 3
    [failure] = [f for f in pool.failures if f["kind"] == "extra pair refused"]
    assert (failure["local"], failure["remote"]) == (MUC, REMOTE)


def test_an_invalid_answer_is_a_refusal_too():
    gw, pool, connector, stream, out = connected()
    pool.send(MUC, REMOTE, fromDomain(MUC, "m0"))
    answer(stream, "invalid")
    assert len(connector.calls) == 2
    assert pool.multiplexer.memory.refusal(REMOTE) is not None
    assert out.streamError() is None and not stream.closing   # the first pair keeps its stream


def test_no_answer_in_time_opens_a_stream_of_its_own_and_the_peer_is_remembered():
    gw, pool, connector, stream, out = connected(multiplex={"answer_timeout": 4})
    pool.send(MUC, REMOTE, fromDomain(MUC, "m0"))
    gw.clock.advance(3.9)
    assert len(connector.calls) == 1
    gw.clock.advance(0.1)
    [_, call] = connector.calls
    own, ownOut = succeed(call)
    assert bodiesFrom(ownOut, MUC) == ["m0"]
    assert "did not answer within 4 s" in pool.multiplexer.memory.refusal(REMOTE)
    # A late "valid" changes nothing: the pair has its own stream now.
    answer(stream, "valid")
    assert stream.pairs == {(LOCAL, REMOTE)}
    assert gw.sessions.outgoing(MUC, REMOTE) is own
    assert out.streamError() is None


def test_a_peer_that_closes_the_stream_over_the_request_is_remembered_and_both_pairs_reconnect():
    gw, pool, connector, stream, out = connected()
    pool.send(MUC, REMOTE, fromDomain(MUC, "m0"))
    stream.dataReceived(b"<stream:error><unsupported-stanza-type "
                        b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
    stream.connectionLost(Failure(ConnectionLost("closed")))
    assert "unsupported-stanza-type" in pool.multiplexer.memory.refusal(REMOTE)
    [_, call] = connector.calls
    assert call.domain == REMOTE
    own, ownOut = succeed(call)
    assert (own.local, bodiesFrom(ownOut, MUC)) == (MUC, ["m0"])


def test_a_connection_lost_while_asking_dials_without_holding_it_against_the_peer():
    gw, pool, connector, stream, out = connected()
    pool.send(MUC, REMOTE, fromDomain(MUC, "m0"))
    stream.connectionLost(Failure(ConnectionLost("reset")))
    assert pool.multiplexer.memory.refusal(REMOTE) is None
    [_, call] = connector.calls
    own, ownOut = succeed(call)
    assert bodiesFrom(ownOut, MUC) == ["m0"]


def test_stopping_while_the_peer_has_not_answered_leaves_no_timer_and_ignores_the_answer():
    gw, pool, connector, stream, out = connected()
    pool.send(MUC, REMOTE, fromDomain(MUC, "m0"))
    assert pool.closeAll(stopping=True) == 1         # m0 never had a stream
    assert [c for c in gw.clock.getDelayedCalls()
            if c.func.__qualname__.startswith("ExtraPairs")] == []
    answer(stream, "valid")
    assert stream.pairs == {(LOCAL, REMOTE)}
    assert len(connector.calls) == 1


def test_the_extra_pair_leaves_the_session_table_when_the_stream_closes():
    gw, pool, connector, stream, out = connected()
    pool.send(MUC, REMOTE, fromDomain(MUC, "m0"))
    answer(stream, "valid")
    stream.connectionLost(Failure(ConnectionLost("reset")))
    assert gw.sessions.outgoing(MUC, REMOTE) is None
    assert gw.sessions.outgoing(LOCAL, REMOTE) is None
    assert gw.sessions.describe() == []
    # Its next stanza opens a stream again (no other stream to join).
    pool.send(MUC, REMOTE, fromDomain(MUC, "m1"))
    [_, call] = connector.calls
    own, ownOut = succeed(call)
    assert bodiesFrom(ownOut, MUC) == ["m1"]


def test_with_multiplexing_off_every_pair_opens_its_own_stream():
    gw, pool, connector, stream, out = connected(multiplex={"enabled": False})
    pool.send(MUC, REMOTE, fromDomain(MUC, "m0"))
    assert extraResults(out) == []
    assert [c.domain for c in connector.calls] == [REMOTE, REMOTE]


def test_a_stream_authenticated_by_dialback_is_asked_even_if_the_feature_was_not_offered():
    gw, pool, connector = makePool()
    pool.send(LOCAL, REMOTE, fromDomain(LOCAL, "first"))
    call = connector.calls[0]
    stream = call.factory.buildProtocol(None)
    connect(stream)
    call.d.callback(Connection(stream, None, None))
    # No <dialback/> offered; our Dialback step tries anyway, and the peer took it.
    stream.dataReceived(peerHeader() + b"<stream:features/>" + dbAnswer("valid"))
    assert stream.authMethod == "dialback" and not stream.dialbackOffered
    assert pool.multiplexer.candidate(MUC, REMOTE) is stream


def saslStream(dialback):
    """An outbound stream authenticated by SASL EXTERNAL; C{dialback}: offered before it."""
    offered = (DIALBACK,) if dialback else ()
    gw, pool, stream, out, results = tlsStream(verdicts={REMOTE: valid(REMOTE)})
    stream.dataReceived(tlsPeerHeader() + features(STARTTLS, *offered))
    stream.dataReceived(PROCEED)
    stream.handshakeCompleted()
    stream.dataReceived(tlsPeerHeader("peer-2") + features(EXTERNAL, *offered))
    stream.dataReceived(SUCCESS)
    stream.dataReceived(tlsPeerHeader("peer-3") + features())
    assert results == [stream] and stream.authMethod == "sasl-external"
    gw.sessions.authenticated(stream, LOCAL, REMOTE)
    return pool, stream


def test_a_sasl_stream_whose_peer_offered_dialback_before_sasl_is_asked():
    pool, stream = saslStream(dialback=True)
    assert pool.multiplexer.candidate(MUC, REMOTE) is stream


def test_a_sasl_stream_whose_peer_never_offered_dialback_is_not_asked():
    # A <db:result/> to a peer without dialback could cost the first pair its stream.
    pool, stream = saslStream(dialback=False)
    assert pool.multiplexer.candidate(MUC, REMOTE) is None


def test_one_request_per_pair_even_when_two_streams_to_the_peer_exist():
    gw, pool, connector, stream, out = connected()
    pool.send(MUC, REMOTE, fromDomain(MUC, "m0"))
    assert pool.multiplexer.candidate(MUC, REMOTE) is None   # pending on `stream`
    assert pool.multiplexer.candidate(UPLOAD, REMOTE) is stream


def test_a_peer_is_asked_again_once_forget_after_has_passed():
    gw, pool, connector, stream, out = connected(multiplex={"forget_after": 60})
    pool.send(MUC, REMOTE, fromDomain(MUC, "m0"))
    answer(stream, "invalid")
    assert pool.multiplexer.candidate(UPLOAD, REMOTE) is None
    gw.clock.advance(60)
    assert pool.multiplexer.candidate(UPLOAD, REMOTE) is stream


# the per-stream requests as a state machine


class ScriptedStream:
    """What L{ExtraPairs} uses of a stream: its peer, id, writes and end."""

    remote, streamId = REMOTE, "s-1"

    def __init__(self):
        self.sent = []
        self.peerError = None
        self.log = Logger()

    def send(self, element):
        self.sent.append(element)

    def describe(self):
        return "scripted"


DOMAINS = [f"d{i}.home.test" for i in range(4)]
ACTIONS = st.one_of(
    st.tuples(st.just("ask"), st.sampled_from(DOMAINS)),
    st.tuples(st.sampled_from(["valid", "invalid", "error"]), st.sampled_from(DOMAINS)),
    st.tuples(st.just("wait"), st.floats(0, 6)),
    st.tuples(st.just("gone"), st.booleans()))


@settings(deadline=None, max_examples=300)
@given(st.lists(ACTIONS, max_size=30))
def test_every_request_is_answered_exactly_once_and_only_valid_answers_add_a_pair(actions):
    clock, stream = task.Clock(), ScriptedStream()
    pairs = ExtraPairs(clock, makeGateway().keys)
    answers, accepted, gone = {}, set(), False
    for kind, arg in actions:
        if kind == "ask":
            if gone or pairs.pending(arg) or (arg, REMOTE) in pairs.pairs:
                continue
            d = pairs.request(stream, arg, 5)
            answers[len(answers)] = (arg, [])
            d.addCallback(answers[len(answers) - 1][1].append)
        elif kind == "wait":
            clock.advance(arg)
        elif kind == "gone":
            if not gone:
                stream.peerError = ("policy-violation", None) if arg else None
                pairs.streamGone(stream)
                gone = True
        else:
            waiting = pairs.pending(arg)
            e = domish.Element((NS_DB, "result"))
            e["from"], e["to"], e["type"] = REMOTE, arg, kind
            assert pairs.answered(stream, e) is True
            if waiting and kind == "valid":
                accepted.add((arg, REMOTE))
    clock.advance(10)
    if not gone:
        pairs.streamGone(stream)
    assert all(len(fired) == 1 for _, fired in answers.values())   # exactly once
    assert {(local, REMOTE) for local, fired in answers.values()
            if fired[0].accepted} == pairs.pairs == accepted
    assert clock.getDelayedCalls() == []                          # no timer left behind
    assert len(stream.sent) == len(answers)                       # one <db:result/> each


# the memory of refusing peers


@settings(deadline=None, max_examples=200)
@given(st.lists(st.integers(0, 12), max_size=60), st.integers(1, 5))
def test_peer_memory_holds_the_most_recent_refusals_up_to_its_bound(remotes, bound):
    memory = PeerMemory(task.Clock())
    for r in remotes:
        memory.remember(f"p{r}.test", f"why {r}", keep=100, bound=bound)
        assert len(memory) <= bound
    recent = list(dict.fromkeys(reversed(remotes)))[:bound]
    assert {d["remote"] for d in memory.describe()} == {f"p{r}.test" for r in recent}
    for r in recent:
        assert memory.refusal(f"p{r}.test") == f"why {r}"


def test_peer_memory_forgets_after_keep_seconds():
    clock = task.Clock()
    memory = PeerMemory(clock)
    memory.remember("p.test", "no", keep=10, bound=5)
    clock.advance(9.9)
    assert memory.refusal("p.test") == "no"
    clock.advance(0.1)
    assert memory.refusal("p.test") is None and len(memory) == 0


# two gateways in memory: our own inbound side is the peer


def site(network, domains, sm=None, multiplex=None, hostPolicy=()):
    config = parse_config({"local_domains": domains,
                           "component": {"jid": f"s2s.{domains[0]}", "secret": "x"},
                           "s2s": {"use_starttls": "false", "listen": [],
                                   "stream_management": sm or {},
                                   "multiplex": multiplex or {},
                                   "host_policy": list(hostPolicy)},
                           "admin": {"listen": ""}}, f"{domains[0]}.toml")
    reactor = MemoryReactorClock()
    gateway = GatewayService(config, reactor, connector=network.connector(),
                             componentLink=LocalDeliveries)
    for d in domains:
        network.gateways[d] = gateway
    return gateway, reactor


def federation(peerPolicy=(), **kw):
    network = MemoryNetwork()
    a, clock = site(network, ["a.test", "conf.a.test"], **kw)
    b, _ = site(network, ["b.test"], hostPolicy=peerPolicy)
    return network, a, b, clock


def send(a, domain, body):
    m = stanza(sender=f"user@{domain}/r", to="bob@b.test", body=body)
    m["type"] = "chat"
    a.link.fromLocal(RawStanza.fromElement(m))


def delivered(b):
    return [(m["from"].split("@")[1].split("/")[0], str(m.body)) for m in b.link.delivered]


def test_two_gateways_carry_both_local_domains_on_one_stream_and_both_sides_agree():
    network, a, b, clock = federation()
    send(a, "a.test", "one")
    network.flush(clock)
    before = len(network.pumps)     # our stream and b's verify leg back to us
    send(a, "conf.a.test", "two")
    network.flush(clock)
    assert delivered(b) == [("a.test", "one"), ("conf.a.test", "two")]
    # The only new connection is b's verify leg for conf.a.test's key.
    assert len(network.pumps) == before + 1
    [out] = [s for s in a.sessions() if s["direction"] == "out"]
    assert out["pairs"] == [["a.test", "b.test"], ["conf.a.test", "b.test"]]   # first one first
    [inbound] = [s for s in b.sessions() if s["direction"] == "in" and s["remote"] == "a.test"]
    assert inbound["pairs"] == [["a.test", "b.test"], ["conf.a.test", "b.test"]]
    assert inbound["stream_id"] == out["stream_id"]


def test_a_peer_whose_policy_refuses_the_second_domain_keeps_the_first_on_its_stream():
    network, a, b, clock = federation(peerPolicy=[{"host": "conf.a.test", "policy": "deny"}])
    send(a, "a.test", "one")
    network.flush(clock)
    first = a.sessionTable.outgoing("a.test", "b.test")
    send(a, "conf.a.test", "refused")
    network.flush(clock)
    # b answered the extra pair with a dialback error; a remembered it and tried a
    # stream of its own, which b refused too: the stanza is bounced to its sender.
    assert "not-allowed" in a.pool.multiplexer.memory.refusal("b.test")
    assert a.metrics.registry.get_sample_value("s2sgate_extra_pairs_total",
                                               {"outcome": "refused"}) == 1
    [bounce] = a.link.delivered
    assert (bounce["type"], bounce["to"], str(bounce.body)) == (
        "error", "user@conf.a.test/r", "refused")
    # The first pair never lost its stream.
    send(a, "a.test", "two")
    network.flush(clock)
    assert delivered(b) == [("a.test", "one"), ("a.test", "two")]
    assert a.sessionTable.outgoing("a.test", "b.test") is first and not first.closed


def metric(gateway, outcome):
    return gateway.metrics.registry.get_sample_value("s2sgate_extra_pairs_total",
                                                     {"outcome": outcome})


def test_the_metrics_count_each_answer_and_only_real_connection_attempts():
    network, a, b, clock = federation()
    send(a, "a.test", "one")
    network.flush(clock)
    send(a, "conf.a.test", "two")
    network.flush(clock)
    assert metric(a, "joined") == 1 and metric(a, "refused") is None
    assert a.metrics.registry.get_sample_value("s2sgate_connection_attempts_total") == 1


def test_two_gateways_with_multiplexing_off_use_a_stream_per_local_domain():
    network, a, b, clock = federation(multiplex={"enabled": False})
    send(a, "a.test", "one")
    network.flush(clock)
    send(a, "conf.a.test", "two")
    network.flush(clock)
    assert delivered(b) == [("a.test", "one"), ("conf.a.test", "two")]
    outs = [s["pairs"] for s in a.sessions() if s["direction"] == "out"]
    assert sorted(outs) == [[["a.test", "b.test"]], [["conf.a.test", "b.test"]]]


def test_a_lost_shared_stream_gives_each_pair_back_its_own_unacknowledged_stanzas():
    network, a, b, clock = federation()
    send(a, "a.test", "one")
    network.flush(clock)
    send(a, "conf.a.test", "two")
    network.flush(clock)
    out = a.sessionTable.outgoing("a.test", "b.test")
    assert a.sessionTable.outgoing("conf.a.test", "b.test") is out
    send(a, "conf.a.test", "lost-c")     # written, never read by the peer
    send(a, "a.test", "lost-a")
    lost = Failure(ConnectionLost("kill -9"))
    [inbound] = [s for s in b.sessionTable.streams("in") if s.peer == "a.test"]
    network.pumps.clear()
    inbound.connectionLost(lost)
    out.connectionLost(lost)
    network.flush(clock)
    # Each re-sent once, on a stream that carries its own pair: nothing bounced.
    assert sorted(delivered(b)[2:]) == [("a.test", "lost-a"), ("conf.a.test", "lost-c")]
    assert a.link.delivered == []
    assert a.sessionTable.outgoing("a.test", "b.test") not in (None, out)
    assert a.sessionTable.outgoing("conf.a.test", "b.test") not in (None, out)
