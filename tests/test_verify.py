"""The dialback verify leg: its own stream, its own steps, a typed verdict."""

from twisted.internet import defer

from s2sgate.auth.dialback import NS_DB
from s2sgate.features.dialback import DialbackVerify, Verdict
from s2sgate.net.connector import ConnectFailed, Connection
from s2sgate.s2s.negotiation import InitiatingStream
from s2sgate.s2s.verify import Verifier
from tests.s2sfakes import LOCAL, REMOTE, Output, connect, makeGateway
from tests.test_outbound import FEATURES, FakeConnector, dbAnswer, peerHeader


def test_verifier_returns_the_verdict_of_its_leg():
    gw = makeGateway()
    connector = FakeConnector()
    verifier = Verifier(gw.clock, connector, gw.current)
    answers = []
    defer.ensureDeferred(verifier.verify(LOCAL, REMOTE, "their-id", "k")).addBoth(answers.append)
    [call] = connector.calls
    assert call.domain == REMOTE
    stream = call.factory.buildProtocol(None)
    out = Output(connect(stream))
    call.d.callback(Connection(stream, None, None))
    stream.dataReceived(peerHeader() + FEATURES + dbAnswer("valid", name="verify"))
    [verify] = out.named("verify", NS_DB)
    assert (verify["id"], str(verify)) == ("their-id", "k")
    assert answers == [Verdict(True, "valid")]


def test_a_verify_leg_that_cannot_connect_fails_with_the_connect_failure():
    gw = makeGateway()
    connector = FakeConnector()
    answers = []
    defer.ensureDeferred(Verifier(gw.clock, connector, gw.current).verify(
        LOCAL, REMOTE, "id", "k")).addBoth(answers.append)
    connector.calls[0].d.errback(ConnectFailed("remote-server-timeout", "slow", []))
    assert answers[0].check(ConnectFailed) and answers[0].value.condition == "remote-server-timeout"


def test_a_verify_leg_never_sends_a_dialback_key_of_its_own_or_sasl():
    gw = makeGateway()
    connector = FakeConnector()
    defer.ensureDeferred(Verifier(gw.clock, connector, gw.current).verify(LOCAL, REMOTE, "id", "k"))
    stream = connector.calls[0].factory.buildProtocol(None)
    out = Output(connect(stream))
    connector.calls[0].d.callback(Connection(stream, None, None))
    stream.dataReceived(peerHeader() + FEATURES)
    assert out.named("result", NS_DB) == [] and len(out.named("verify", NS_DB)) == 1


def verifyStep(*received):
    """A DialbackVerify step run on its own stream, after the peer sent C{received}."""
    gw = makeGateway()
    step = DialbackVerify("their-id", "k")
    stream = InitiatingStream(gw.clock, LOCAL, REMOTE, [step],
                              requirements=gw.runtime.requirements)
    connect(stream)
    for data in received:
        stream.dataReceived(data)
    return step


def test_a_verify_step_the_peer_never_answered_has_no_verdict():
    # What `s2sgate check` reads as "no dialback answer".
    step = verifyStep(peerHeader(), FEATURES, b"</stream:stream>")
    assert step.verdict is None


def test_a_db_verify_answer_without_a_type_is_not_valid_and_says_so():
    # The answer `s2sgate check` shows for another server.
    step = verifyStep(peerHeader(), FEATURES,
                      f"<db:verify from='{REMOTE}' to='{LOCAL}' id='their-id'/>".encode())
    assert step.verdict == Verdict(False, "no type")


# bounds, cancellation, what the failure leaves behind (issue 10, items 2 and 6)


def limitedVerifier(**limits):
    gw = makeGateway(limits=limits)
    connector = FakeConnector()
    return gw, connector, Verifier(gw.clock, connector, gw.current)


def start(verifier, peer, remote=REMOTE):
    results = []
    d = defer.ensureDeferred(verifier.verify(LOCAL, remote, "id", "k", peer=peer))
    d.addBoth(results.append)
    return d, results


def test_verifies_in_flight_are_bounded_per_peer_address():
    from s2sgate.s2s.guard import VerifyRefused

    gw, connector, verifier = limitedVerifier(verifies_per_stream=2, verifies_per_address=2)
    start(verifier, "127.0.3.20")
    start(verifier, "127.0.3.20")
    _, refused = start(verifier, "127.0.3.20")
    _, other = start(verifier, "127.0.3.21")
    assert refused[0].check(VerifyRefused) and refused[0].value.limit == "verifies_per_address"
    assert other == [] and len(connector.calls) == 3


def test_verifies_in_flight_are_bounded_in_total():

    gw, connector, verifier = limitedVerifier(verifies_per_stream=1, verifies_per_address=1,
                                              verifies_total=2)
    start(verifier, "127.0.3.20")
    start(verifier, "127.0.3.21")
    _, refused = start(verifier, "127.0.3.22")
    assert refused[0].value.limit == "verifies_total" and len(connector.calls) == 2


def test_a_finished_verify_frees_its_place():
    gw, connector, verifier = limitedVerifier(verifies_per_stream=1, verifies_per_address=1)
    start(verifier, "127.0.3.20")
    connector.calls[0].d.errback(ConnectFailed("remote-server-not-found", "no", []))
    _, again = start(verifier, "127.0.3.20")
    assert again == [] and len(connector.calls) == 2
    assert (verifier.inFlight, dict(verifier.byAddress)) == (1, {"127.0.3.20": 1})


def test_cancelling_a_connected_verify_aborts_its_connection_at_once():
    gw, connector, verifier = limitedVerifier()
    d, results = start(verifier, "127.0.3.20")
    stream = connector.calls[0].factory.buildProtocol(None)
    transport = connect(stream)
    connector.calls[0].d.callback(Connection(stream, None, None))
    d.cancel()
    assert transport.disconnecting   # StringTransport: abortConnection = loseConnection
    assert results[0].check(defer.CancelledError)
    assert verifier.inFlight == 0


def test_cancelling_a_verify_while_it_connects_cancels_the_connect():
    gw, connector, verifier = limitedVerifier()
    d, results = start(verifier, "127.0.3.20")
    d.cancel()
    assert connector.calls[0].d.called and results[0].check(defer.CancelledError)
    assert verifier.inFlight == 0


def test_a_failed_verify_goes_to_the_failure_log_with_its_steps():
    from s2sgate.net.connector import Attempt

    gw, connector, verifier = limitedVerifier()
    start(verifier, "127.0.3.20")
    connector.calls[0].d.errback(ConnectFailed(
        "remote-server-not-found", "connecting to 127.0.3.99:22 (x.test): connection refused",
        [Attempt("connect", "127.0.3.99:22 (x.test)", "connection refused")]))
    [entry] = list(verifier.failures)
    assert (entry["kind"], entry["local"], entry["remote"]) == ("dialback verify", LOCAL, REMOTE)
    assert "127.0.3.99:22" in entry["text"]
    assert entry["steps"][0]["detail"] == "connection refused"
