"""The dialback verify leg: its own stream, its own steps, a typed verdict."""

from twisted.internet import defer

from s2sgate.auth.dialback import NS_DB
from s2sgate.features.dialback import Verdict
from s2sgate.net.connector import ConnectFailed, Connection
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
