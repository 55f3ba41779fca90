import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure

from s2sgate.auth.dialback import NS_DB, NS_DB_FEATURE, DialbackKeys
from s2sgate.net.connector import Attempt, ConnectFailed
from s2sgate.ops.metrics import Metrics
from s2sgate.s2s.inbound import NS_LIMITS, InboundStream
from s2sgate.xmpp.namespaces import NS_SERVER
from s2sgate.xmpp.parser import NS_STREAMS
from tests.s2sfakes import (
    INVALID,
    LOCAL,
    MUC,
    REMOTE,
    SECRET,
    VALID,
    Output,
    connect,
    inbound,
    makeGateway,
    stanza,
)
from tests.test_inbound_tls import DirectTLSTransport

NS_DB_DECL = f"xmlns:db='{NS_DB}'"


def header(to=LOCAL, sender=REMOTE, ns="jabber:server", version="1.0"):
    attrs = "".join(f" {k}='{v}'" for k, v in (("from", sender), ("to", to), ("version", version)) if v)
    return (f"<stream:stream xmlns='{ns}' xmlns:stream='{NS_STREAMS}' {NS_DB_DECL}{attrs}>").encode()


def dbResult(sender=REMOTE, to=LOCAL, key="abc"):
    return f"<db:result from='{sender}' to='{to}'>{key}</db:result>".encode()


def dbVerify(sender, to, streamId, key):
    return f"<db:verify from='{sender}' to='{to}' id='{streamId}'>{key}</db:verify>".encode()


def opened(**s2s):
    """An InboundStream with a header from REMOTE to LOCAL already received."""
    gw = makeGateway(**s2s)
    stream = inbound(gw)
    out = Output(connect(stream))
    stream.dataReceived(header())
    return gw, stream, out


def authenticated(remote=REMOTE, local=LOCAL, gw=None):
    gw, stream, out = opened() if gw is None else gw
    stream.dataReceived(dbResult(remote, local))
    gw.verifier.requests[-1][-1].callback(VALID)
    return gw, stream, out


def dbResults(out):
    return [e for e in out.named("result", NS_DB)]


# header and features


def test_header_to_a_non_local_domain_is_host_unknown():
    gw = makeGateway()
    stream = inbound(gw)
    out = Output(connect(stream))
    stream.dataReceived(header(to="elsewhere.test"))
    assert out.streamError() == "host-unknown"
    assert out.ended


def verifyOnly(version="1.0", sender=REMOTE):
    """A stream an older server opens without 'to', to our authoritative side."""
    gw = makeGateway()
    stream = inbound(gw)
    out = Output(connect(stream))
    stream.dataReceived(header(to=None, sender=sender, version=version))
    return gw, stream, out


def test_header_without_to_is_answered_as_a_verify_only_stream():
    gw, stream, out = verifyOnly()
    out.update()
    assert out.streamError() is None
    assert out.header.getAttribute("from") is None and out.header["id"] == stream.streamId
    [features] = out.named("features", NS_STREAMS)
    assert [c.name for c in features.elements()] == ["dialback", "limits"]


@pytest.mark.parametrize("version", ["1.0", None])
def test_verify_only_stream_answers_db_verify_for_a_local_domain(version):
    gw, stream, out = verifyOnly(version=version)
    key = gw.keys.generate(REMOTE, LOCAL, "their-stream")
    stream.dataReceived(dbVerify(REMOTE, LOCAL, "their-stream", key))
    stream.dataReceived(dbVerify(REMOTE, MUC, "their-stream", "wrong"))
    answers = [(v["from"], v["to"], v["id"], v["type"]) for v in out.named("verify", NS_DB)]
    assert answers == [(LOCAL, REMOTE, "their-stream", "valid"),
                       (MUC, REMOTE, "their-stream", "invalid")]
    assert out.streamError() is None


def test_verify_only_stream_refuses_db_verify_for_a_domain_it_does_not_serve():
    gw, stream, out = verifyOnly(version=None)
    stream.dataReceived(dbVerify(REMOTE, "elsewhere.test", "id", "k"))
    [answer] = out.named("verify", NS_DB)
    assert answer["type"] == "error" and answer.error.firstChildElement().name == "item-not-found"


def test_refused_db_verify_names_the_stream_id_it_was_asked_about():
    # The originating server matches the answer to its request by id.
    gw, stream, out = verifyOnly(version=None)
    stream.dataReceived(dbVerify(REMOTE, "elsewhere.test", "their-stream", "k"))
    [answer] = out.named("verify", NS_DB)
    assert (answer["type"], answer["id"]) == ("error", "their-stream")


def test_dialback_error_is_written_with_the_db_prefix_and_an_unprefixed_error():
    # As in XEP-0220's examples; some servers read dialback only as "db:".
    gw, stream, out = verifyOnly(version=None)
    stream.dataReceived(dbVerify(REMOTE, "elsewhere.test", "their-stream", "k"))
    assert (b"<db:verify from='elsewhere.test' to='remote.test' id='their-stream' type='error'>"
            b"<error type='cancel'><item-not-found ") in out.transport.value()


def test_verify_only_stream_refuses_a_db_result_with_host_unknown():
    gw, stream, out = verifyOnly()
    stream.dataReceived(dbResult())
    assert out.streamError() == "host-unknown"
    assert gw.verifier.requests == [] and stream.pairs == set()


def test_verify_only_stream_refuses_stanzas_with_host_unknown():
    gw, stream, out = verifyOnly()
    stream.dataReceived(stanza().toXml().encode())
    assert out.streamError() == "host-unknown"
    assert gw.router.delivered == []


def test_pre_1_0_originating_stream_authenticates_with_dialback_at_once():
    gw = makeGateway()
    stream = inbound(gw)
    out = Output(connect(stream))
    stream.dataReceived(header(version=None))
    assert out.named("features", NS_STREAMS) == []
    stream.dataReceived(dbResult())
    gw.verifier.requests[-1][-1].callback(VALID)
    [result] = out.named("result", NS_DB)
    assert (result["from"], result["to"], result["type"]) == (LOCAL, REMOTE, "valid")
    stream.dataReceived(stanza().toXml().encode())
    [delivered] = gw.router.delivered
    assert (delivered["from"], delivered["to"]) == (f"juliet@{REMOTE}/balcony", f"romeo@{LOCAL}")


def test_header_with_wrong_default_namespace_is_invalid_namespace():
    gw = makeGateway()
    stream = inbound(gw)
    out = Output(connect(stream))
    stream.dataReceived(header(ns="jabber:client"))
    assert out.streamError() == "invalid-namespace"
    assert out.ended


def test_header_answer_carries_our_stream_id_and_domains():
    gw, stream, out = opened()
    out.update()
    assert out.header["id"] == stream.streamId
    assert (out.header["from"], out.header["to"], out.header["version"]) == (LOCAL, REMOTE, "1.0")


def test_features_advertise_dialback_with_errors():
    gw, stream, out = opened()
    [features] = out.named("features", NS_STREAMS)
    [db] = [e for e in features.elements() if (e.uri, e.name) == (NS_DB_FEATURE, "dialback")]
    assert [c.name for c in db.elements()] == ["errors"]


def test_features_advertise_xep_0478_limits_with_the_stanza_size_limit():
    gw, stream, out = opened(stanza_size_limit=20000)
    [features] = out.named("features", NS_STREAMS)
    [limits] = [e for e in features.elements() if (e.uri, e.name) == (NS_LIMITS, "limits")]
    values = {c.name: str(c) for c in limits.elements()}
    assert values["max-bytes"] == "20000"
    assert values["idle-seconds"] == "600"


def test_pre_1_0_header_gets_no_features():
    gw = makeGateway()
    stream = inbound(gw)
    out = Output(connect(stream))
    stream.dataReceived(header(version=None))
    assert out.named("features", NS_STREAMS) == []
    assert "version" not in out.update().header.attributes


def test_stream_ids_are_unique_and_long():
    gw = makeGateway()
    ids = set()
    for _ in range(200):
        stream = inbound(gw)
        connect(stream)
        stream.dataReceived(header())
        ids.add(stream.streamId)
    assert len(ids) == 200
    assert all(len(i) >= 22 for i in ids)   # >= 128 bits in base64url


def test_stream_registers_with_the_gateway_and_leaves_on_close():
    gw, stream, out = opened()
    assert stream in gw.sessions.streams()
    stream.connectionLost(Failure(Exception("gone")))
    assert stream not in gw.sessions.streams()


# receiving role


def test_db_result_asks_the_pool_to_verify_with_stream_id_and_key():
    gw, stream, out = opened()
    stream.dataReceived(dbResult(key="  thekey "))
    [(local, remote, streamId, key, _)] = gw.verifier.requests
    assert (local, remote, streamId, key) == (LOCAL, REMOTE, stream.streamId, "thekey")


def test_repeated_db_result_while_pending_is_not_verified_twice():
    gw, stream, out = opened()
    stream.dataReceived(dbResult())
    stream.dataReceived(dbResult())
    assert len(gw.verifier.requests) == 1


def test_valid_verify_answer_sends_db_result_valid():
    gw, stream, out = authenticated()
    [result] = dbResults(out)
    assert (result["from"], result["to"], result["type"]) == (LOCAL, REMOTE, "valid")


def test_stanza_after_valid_dialback_is_passed_to_the_router():
    gw, stream, out = authenticated()
    stream.dataReceived(stanza().toXml().encode())
    [delivered] = gw.router.delivered
    assert delivered["from"] == f"juliet@{REMOTE}/balcony"
    assert str(delivered.body) == "hi"
    assert out.streamError() is None


def test_invalid_verify_answer_sends_db_result_invalid():
    gw, stream, out = opened()
    stream.dataReceived(dbResult())
    gw.verifier.requests[0][-1].callback(INVALID)
    [result] = dbResults(out)
    assert result["type"] == "invalid"


def test_stanza_after_invalid_dialback_is_refused():
    gw, stream, out = opened()
    stream.dataReceived(dbResult())
    gw.verifier.requests[0][-1].callback(INVALID)
    stream.dataReceived(stanza().toXml().encode())
    assert gw.router.delivered == []
    assert out.streamError() == "invalid-from"


def dbErrorOf(result):
    """(condition, text) of a dialback error."""
    [error] = [e for e in result.elements() if e.name == "error"]
    names = {c.name: str(c) for c in error.elements()}
    text = names.pop("text", None)
    [condition] = names
    return condition, text


def test_a_failed_verify_tells_the_peer_nothing_of_our_connection_attempts():
    for condition in ("remote-server-timeout", "remote-server-not-found"):
        gw, stream, out = opened()
        stream.dataReceived(dbResult())
        gw.verifier.requests[0][-1].errback(ConnectFailed(
            condition, "connecting to 10.1.2.3:22 (internal.test): connection refused",
            [Attempt("connect", "10.1.2.3:22 (internal.test)", "connection refused")]))
        [result] = dbResults(out)
        assert result["type"] == "error"
        assert dbErrorOf(result) == ("remote-server-not-found", "could not verify the key")
        sent = out.transport.value()
        assert b"10.1.2.3" not in sent and b"refused" not in sent


def test_unexpected_verify_failure_sends_remote_server_not_found():
    gw, stream, out = opened()
    stream.dataReceived(dbResult())
    gw.verifier.requests[0][-1].errback(RuntimeError("boom"))
    [result] = dbResults(out)
    [error] = [e for e in result.elements() if e.name == "error"]
    assert "remote-server-not-found" in [c.name for c in error.elements()]


def test_db_result_for_a_non_local_domain_is_item_not_found_without_verify():
    gw, stream, out = opened()
    stream.dataReceived(dbResult(to="elsewhere.test"))
    assert gw.verifier.requests == []
    [result] = dbResults(out)
    assert result["type"] == "error"
    assert out.streamError() is None


def test_db_result_without_from_is_improper_addressing():
    gw, stream, out = opened()
    stream.dataReceived(b"<db:result to='home.test'>k</db:result>")
    assert out.streamError() == "improper-addressing"


def test_host_policy_deny_is_a_policy_violation_stream_error():
    gw, stream, out = opened(host_policy=[{"host": REMOTE, "policy": "deny"}])
    stream.dataReceived(dbResult())
    assert gw.verifier.requests == []
    assert out.streamError() == "policy-violation"


def test_disabled_local_domain_is_a_policy_violation_stream_error():
    gw, stream, out = opened(disabled_domains=[LOCAL])
    stream.dataReceived(dbResult())
    assert out.streamError() == "policy-violation"


def test_a_further_pair_refused_by_policy_gets_a_dialback_error_and_the_stream_stays():
    # A peer multiplexing (XEP-0220) a pair we refuse: the pairs it has keep their stream.
    gw, stream, out = authenticated(gw=opened(disabled_domains=[MUC]))
    stream.dataReceived(dbResult(to=MUC))
    [refusal] = [r for r in dbResults(out) if r["to"] == REMOTE and r["from"] == MUC]
    assert refusal["type"] == "error"
    assert out.streamError() is None
    assert len(gw.verifier.requests) == 1           # only the first pair's
    stream.dataReceived(stanza().toXml().encode())
    assert len(gw.router.delivered) == 1
    assert stream.pairs == {(REMOTE, LOCAL)}


def test_a_further_pair_refused_by_policy_is_answered_with_the_condition_not_allowed():
    # The condition is the element the peer reads; a text holding "not-allowed" is not it.
    gw, stream, out = authenticated(gw=opened(disabled_domains=[MUC]))
    stream.dataReceived(dbResult(to=MUC))
    [refusal] = [r for r in dbResults(out) if r["to"] == REMOTE and r["from"] == MUC]
    assert dbErrorOf(refusal)[0] == "not-allowed"


def test_further_pairs_refused_by_policy_end_the_stream_after_refused_claims():
    gw, stream, out = authenticated(gw=opened(disabled_domains=[MUC]))
    for _ in range(gw.config.s2s.limits.refused_claims):
        stream.dataReceived(dbResult(to=MUC))
    assert out.streamError() == "policy-violation"


def test_verify_answer_after_close_sends_nothing():
    gw, stream, out = opened()
    stream.dataReceived(dbResult())
    d = gw.verifier.requests[0][-1]
    stream.connectionLost(Failure(Exception("gone")))
    # closing cancels the pending verify
    assert d.called
    assert dbResults(out) == []


# stanza checks


def test_stanza_before_authentication_is_invalid_from():
    gw, stream, out = opened()
    stream.dataReceived(stanza().toXml().encode())
    assert out.streamError() == "invalid-from"
    assert gw.router.delivered == []


def test_stanza_without_from_is_improper_addressing():
    gw, stream, out = authenticated()
    stream.dataReceived(stanza(sender=None).toXml().encode())
    assert out.streamError() == "improper-addressing"


def test_stanza_without_to_is_improper_addressing():
    gw, stream, out = authenticated()
    stream.dataReceived(stanza(to=None).toXml().encode())
    assert out.streamError() == "improper-addressing"


def test_stanza_to_a_non_local_domain_is_host_unknown():
    gw, stream, out = authenticated()
    stream.dataReceived(stanza(to="bob@elsewhere.test").toXml().encode())
    assert out.streamError() == "host-unknown"
    assert gw.router.delivered == []


def test_stanza_from_another_remote_domain_is_invalid_from():
    gw, stream, out = authenticated()
    stream.dataReceived(stanza(sender="mallory@evil.test").toXml().encode())
    assert out.streamError() == "invalid-from"


def test_non_stanza_element_is_unsupported_stanza_type():
    gw, stream, out = authenticated()
    stream.dataReceived(b"<foo/>")
    assert out.streamError() == "unsupported-stanza-type"


def test_two_pairs_on_one_stream_are_authenticated_separately():
    state = authenticated()
    gw, stream, out = state
    stream.dataReceived(stanza(to=f"room@{MUC}").toXml().encode())
    assert out.streamError() == "invalid-from"
    assert gw.router.delivered == []


def test_second_pair_on_one_stream_after_its_own_dialback_is_accepted():
    gw, stream, out = authenticated()
    stream.dataReceived(dbResult(to=MUC))
    (local, remote, streamId, key, d) = gw.verifier.requests[-1]
    assert (local, remote, streamId) == (MUC, REMOTE, stream.streamId)
    d.callback(VALID)
    stream.dataReceived(stanza(to=f"room@{MUC}").toXml().encode())
    stream.dataReceived(stanza().toXml().encode())
    assert len(gw.router.delivered) == 2
    assert stream.pairs == {(REMOTE, LOCAL), (REMOTE, MUC)}
    assert out.streamError() is None


# authoritative role


def test_db_verify_with_a_correct_key_is_valid():
    gw, stream, out = opened()
    key = DialbackKeys(SECRET).generate(REMOTE, LOCAL, "theirstream")
    stream.dataReceived(dbVerify(REMOTE, LOCAL, "theirstream", key))
    [verify] = out.named("verify", NS_DB)
    assert (verify["from"], verify["to"], verify["id"], verify["type"]) == (
        LOCAL, REMOTE, "theirstream", "valid")


def test_db_verify_with_a_wrong_key_is_invalid():
    gw, stream, out = opened()
    key = DialbackKeys("another secret").generate(REMOTE, LOCAL, "theirstream")
    stream.dataReceived(dbVerify(REMOTE, LOCAL, "theirstream", key))
    [verify] = out.named("verify", NS_DB)
    assert verify["type"] == "invalid"


def test_db_verify_with_a_key_for_another_stream_id_is_invalid():
    gw, stream, out = opened()
    key = DialbackKeys(SECRET).generate(REMOTE, LOCAL, "other")
    stream.dataReceived(dbVerify(REMOTE, LOCAL, "theirstream", key))
    [verify] = out.named("verify", NS_DB)
    assert verify["type"] == "invalid"


def test_db_verify_does_not_authenticate_the_stream():
    gw, stream, out = opened()
    key = DialbackKeys(SECRET).generate(REMOTE, LOCAL, "theirstream")
    stream.dataReceived(dbVerify(REMOTE, LOCAL, "theirstream", key))
    stream.dataReceived(stanza().toXml().encode())
    assert gw.router.delivered == []
    assert out.streamError() == "invalid-from"


# limits and timers


def test_negotiation_timeout_is_connection_timeout():
    gw, stream, out = opened()
    gw.clock.advance(gw.config.s2s.negotiation_timeout)
    assert out.streamError() == "connection-timeout"


def test_negotiation_timer_is_cancelled_once_authenticated():
    gw, stream, out = authenticated()
    gw.clock.advance(gw.config.s2s.negotiation_timeout)
    assert out.streamError() is None


def test_negotiation_timeout_does_not_wait_for_a_pending_verify():
    gw, stream, out = opened()
    stream.dataReceived(dbResult())
    gw.clock.advance(gw.config.s2s.negotiation_timeout)
    assert out.streamError() == "connection-timeout"


def test_a_stream_whose_verify_failed_does_not_stay_open():
    gw, stream, out = opened()
    stream.dataReceived(dbResult())
    gw.verifier.requests[0][-1].callback(INVALID)
    gw.clock.advance(gw.config.s2s.negotiation_timeout)
    assert out.streamError() == "connection-timeout"


def test_more_than_ten_pending_dialback_requests_get_a_dialback_error_each():
    gw, stream, out = opened()
    for i in range(12):
        stream.dataReceived(dbResult(sender=f"r{i}.test"))
    assert len(gw.verifier.requests) == 10
    refused = dbResults(out)
    assert [r["from"] for r in refused] == [LOCAL, LOCAL]
    assert [r["to"] for r in refused] == ["r10.test", "r11.test"]
    assert {dbErrorOf(r)[0] for r in refused} == {"resource-constraint"}
    assert out.streamError() is None


def test_the_per_stream_verify_bound_is_a_config_key():
    gw, stream, out = opened(limits={"verifies_per_stream": 2})
    for i in range(3):
        stream.dataReceived(dbResult(sender=f"r{i}.test"))
    assert len(gw.verifier.requests) == 2
    [refused] = dbResults(out)
    assert dbErrorOf(refused)[0] == "resource-constraint"


def test_a_verify_asks_with_the_peer_address_of_the_stream():
    gw = makeGateway()
    stream = inbound(gw, peerHost="127.0.3.9")
    connect(stream)
    stream.dataReceived(header() + dbResult())
    assert gw.verifier.peers == ["127.0.3.9"]


def test_a_verify_refused_over_a_shared_bound_is_a_dialback_error_not_silence():
    from s2sgate.s2s.guard import VerifyRefused

    gw, stream, out = opened()
    gw.verifier.verify = lambda *a, **k: _failed(VerifyRefused("verifies_total", "300 in flight"))
    stream.dataReceived(dbResult())
    [result] = dbResults(out)
    condition, text = dbErrorOf(result)
    assert condition == "resource-constraint" and "300" not in text
    stream.dataReceived(dbResult())   # not left pending: asked again, answered again
    assert len(dbResults(out)) == 2


def _failed(exception):
    from twisted.internet import defer
    return defer.fail(exception)


def test_closing_the_stream_cancels_its_pending_verifies():
    gw, stream, out = opened()
    for i in range(3):
        stream.dataReceived(dbResult(sender=f"r{i}.test"))
    stream.connectionLost(None)
    assert [d.called for *_, d in gw.verifier.requests] == [True, True, True]


def test_a_finished_verification_no_longer_counts_against_the_per_stream_bound():
    gw, stream, out = opened(limits={"verifies_per_stream": 1})
    stream.dataReceived(dbResult(sender="r0.test"))
    gw.verifier.requests[0][-1].callback(INVALID)
    stream.dataReceived(dbResult(sender="r1.test"))
    assert len(gw.verifier.requests) == 2
    assert [r["type"] for r in dbResults(out)] == ["invalid"]


def test_a_dialback_request_over_the_per_stream_bound_is_counted_under_its_key():
    gw = makeGateway(limits={"verifies_per_stream": 1})
    metrics = Metrics()
    stream = InboundStream(gw.clock, gw.runtime, gw.router, gw.verifier, gw.sessions,
                           metrics=metrics)
    connect(stream)
    stream.dataReceived(header() + dbResult(sender="r0.test") + dbResult(sender="r1.test"))
    assert metrics.registry.get_sample_value(
        "s2sgate_peer_limit_hits_total", {"limit": "verifies_per_stream"}) == 1


def test_a_db_result_with_a_type_is_not_a_request_and_starts_no_verification():
    # A typed <db:result/> answers a request of ours: never on a stream the peer opened.
    gw, stream, out = opened()
    stream.dataReceived(b"<db:result from='remote.test' to='home.test' type='valid'>abc</db:result>")
    assert gw.verifier.requests == []
    assert stream.pairs == set()
    assert dbResults(out) == [] and out.streamError() is None


def test_a_db_verify_with_a_type_is_an_answer_and_gets_none():
    gw, stream, out = verifyOnly()
    key = gw.keys.generate(REMOTE, LOCAL, "their-stream")
    stream.dataReceived(f"<db:verify from='{REMOTE}' to='{LOCAL}' id='their-stream' "
                        f"type='valid'>{key}</db:verify>".encode())
    assert out.named("verify", NS_DB) == []
    assert out.streamError() is None


def test_a_dialback_shortcut_is_asked_about_the_pair_the_db_result_names():
    asked = []

    def shortcut(stream, remote, local):
        asked.append((remote, local))
        return None

    gw = makeGateway()
    runtime = dataclasses.replace(gw.runtime, dialbackShortcuts=(shortcut,))
    stream = InboundStream(gw.clock, runtime, gw.router, gw.verifier, gw.sessions)
    connect(stream)
    stream.dataReceived(header(to=MUC) + dbResult(to=MUC))
    assert asked == [(REMOTE, MUC)]


def test_nothing_after_a_stream_error_is_handled():
    gw, stream, out = opened()
    stream.dataReceived(dbResult())
    gw.verifier.requests[0][-1].callback(VALID)
    stream.dataReceived(stanza(sender="x@elsewhere.test").toXml().encode()
                        + stanza().toXml().encode())
    assert out.streamError() == "invalid-from"
    assert gw.router.delivered == []


def test_an_oversized_stream_header_is_refused():
    gw = makeGateway(stanza_size_limit=10000)
    stream = inbound(gw)
    out = Output(connect(stream))
    stream.dataReceived(b"<stream:stream xmlns='jabber:server' "
                        b"xmlns:stream='http://etherx.jabber.org/streams' to='" + b"a" * 50000)
    assert out.streamError() == "policy-violation"


def test_a_from_domain_read_differently_by_idna_2003_is_refused():
    gw, stream, out = opened()
    stream.dataReceived(dbResult(sender="xn--fa-hia.de"))
    gw.verifier.requests[0][-1].callback(VALID)
    stream.dataReceived(stanza(sender="admin@faß.de").toXml().encode())
    assert out.streamError() == "invalid-from"
    assert gw.router.delivered == []


def test_oversized_stanza_is_policy_violation():
    gw, stream, out = opened(stanza_size_limit=10000)
    stream.dataReceived(stanza(body="x" * 20000).toXml().encode())
    assert out.streamError() == "policy-violation"
    assert gw.router.delivered == []


def test_doctype_is_restricted_xml():
    gw = makeGateway()
    stream = inbound(gw)
    transport = connect(stream)
    stream.dataReceived(b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]>" + header())
    data = transport.value()
    assert b"restricted-xml" in data
    assert data.endswith(b"</stream:stream>")


def test_processing_instruction_after_header_is_restricted_xml():
    gw, stream, out = opened()
    stream.dataReceived(b"<?foo bar?>")
    assert out.streamError() == "restricted-xml"


def test_stream_error_closes_the_connection_after_the_grace_period():
    gw, stream, out = opened()
    stream.dataReceived(b"<a></b>")
    assert out.streamError() == "not-well-formed"
    assert not out.transport.disconnecting
    gw.clock.advance(5)
    assert out.transport.disconnecting


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_after_a_header_never_raise(chunks):
    gw, stream, out = opened()
    for chunk in chunks:
        stream.dataReceived(chunk)
    data = out.transport.value()
    if b"<stream:error>" in data:
        assert data.endswith(b"</stream:stream>")
    assert gw.router.delivered == []


# unauthenticated streams, per address and in total


def connectedFrom(gw, host):
    stream = inbound(gw, peerHost=host)
    return stream, Output(connect(stream))


def test_unauthenticated_streams_from_one_address_are_bounded():
    gw = makeGateway(limits={"unauthenticated_per_address": 2})
    streams = [connectedFrom(gw, "127.0.3.20") for _ in range(3)]
    [(_, out3)] = streams[2:]
    assert [out.streamError() for _, out in streams] == [None, None, "policy-violation"]
    assert out3.transport.disconnecting            # at once, not after a grace period
    other, out = connectedFrom(gw, "127.0.3.21")   # another address is not affected
    assert out.streamError() is None


def test_unauthenticated_streams_are_bounded_in_total():
    gw = makeGateway(limits={"unauthenticated_per_address": 2, "unauthenticated_total": 3})
    streams = [connectedFrom(gw, f"127.0.3.{20 + i}") for i in range(4)]
    assert [out.streamError() for _, out in streams] == [None, None, None, "resource-constraint"]


def test_an_authenticated_stream_frees_its_unauthenticated_slot():
    gw = makeGateway(limits={"unauthenticated_per_address": 1})
    first, _ = connectedFrom(gw, "127.0.3.20")
    first.dataReceived(header() + dbResult())
    gw.verifier.requests[-1][-1].callback(VALID)
    second, out = connectedFrom(gw, "127.0.3.20")
    assert out.streamError() is None


def test_a_closed_stream_frees_its_unauthenticated_slot():
    gw = makeGateway(limits={"unauthenticated_per_address": 1})
    first, _ = connectedFrom(gw, "127.0.3.20")
    first.connectionLost(None)
    second, out = connectedFrom(gw, "127.0.3.20")
    assert out.streamError() is None


def test_after_our_closing_tag_stanzas_the_peer_already_sent_are_still_delivered():
    gw, stream, out = authenticated()
    stream.closeStream()
    stream.dataReceived(stanza().toXml().encode())
    [delivered] = gw.router.delivered
    assert delivered["from"] == f"juliet@{REMOTE}/balcony"


def test_after_our_closing_tag_negotiation_is_over():
    gw, stream, out = opened()
    stream.closeStream()
    stream.dataReceived(dbResult())
    assert gw.verifier.requests == []


def test_after_our_closing_tag_a_stanza_of_an_unauthenticated_pair_is_still_refused():
    gw, stream, out = authenticated()
    stream.closeStream()
    stream.dataReceived(stanza(sender="mallory@evil.test").toXml().encode())
    assert gw.router.delivered == []


def test_after_our_stream_error_nothing_more_is_delivered():
    gw, stream, out = authenticated()
    stream.streamError("policy-violation")
    stream.dataReceived(stanza().toXml().encode())
    assert gw.router.delivered == []


# what the mutation run (scripts/mutate, docs/testing.md) found untested


def test_stanza_from_an_address_that_is_not_valid_is_invalid_from():
    gw, stream, out = authenticated()
    stream.dataReceived(stanza(sender="juliet@a..b").toXml().encode())
    assert out.streamError() == "invalid-from"
    assert gw.router.delivered == []


def test_stanza_to_an_address_that_is_not_valid_is_improper_addressing():
    gw, stream, out = authenticated()
    stream.dataReceived(stanza(to="romeo@a..b").toXml().encode())
    assert out.streamError() == "improper-addressing"
    assert gw.router.delivered == []


def test_a_to_domain_read_differently_by_idna_2003_is_improper_addressing():
    from s2sgate.config import parse_config
    config = parse_config({"local_domains": [LOCAL, "xn--fa-hia.de"],
                           "component": {"jid": "s2s.home.test", "secret": "x"},
                           "s2s": {"use_starttls": "false", "shared": SECRET}}, "t.toml")
    gw, stream, out = authenticated(local="xn--fa-hia.de", gw=opened_on(makeGateway(config)))
    stream.dataReceived(stanza(to="admin@faß.de").toXml().encode())
    assert out.streamError() == "improper-addressing"
    assert gw.router.delivered == []


def opened_on(gw):
    stream = inbound(gw)
    out = Output(connect(stream))
    stream.dataReceived(header())
    return gw, stream, out


def test_each_delivered_stanza_is_counted_once_in_the_session_table():
    gw, stream, out = authenticated()
    for _ in range(3):
        stream.dataReceived(stanza().toXml().encode())
    [session] = gw.sessions.describe()
    assert session["stanzas_in"] == 3


def test_refused_stanza_is_not_counted():
    gw, stream, out = opened()
    stream.dataReceived(stanza().toXml().encode())
    assert stream.stanzasIn == 0


def test_stream_error_before_our_header_opens_a_1_0_header_with_a_stream_id():
    gw, stream, out = opened_on_header(header(to="elsewhere.test"))
    assert out.streamError() == "host-unknown"
    assert out.header["version"] == "1.0"
    assert len(out.header["id"]) >= 16
    assert out.header.getAttribute("from") is None


def opened_on_header(data):
    gw = makeGateway()
    stream = inbound(gw)
    out = Output(connect(stream))
    stream.dataReceived(data)
    return gw, stream, out


def test_stream_closed_after_the_negotiation_timeout_untracks_it_cleanly():
    gw, stream, out = opened()
    gw.clock.advance(gw.config.s2s.negotiation_timeout)
    stream.connectionLost(Failure(Exception("gone")))
    assert stream not in gw.sessions.streams()
    assert stream._negotiationCall is None


def test_stream_error_after_the_peers_header_carries_the_streams_own_id():
    gw, stream, out = opened_on_header(header(to="elsewhere.test"))
    assert out.streamError() == "host-unknown"
    assert out.header["id"] == stream.streamId


def test_a_refused_connection_is_counted_under_the_limit_it_hit():
    from s2sgate.ops.metrics import Metrics
    gw = makeGateway(limits={"unauthenticated_per_address": 1})
    metrics = Metrics()
    for _ in range(2):
        connect(InboundStream(gw.clock, gw.runtime, gw.router, gw.verifier, gw.sessions,
                              peerHost="127.0.3.20", metrics=metrics))
    hits = metrics.registry.get_sample_value("s2sgate_peer_limit_hits_total",
                                             {"limit": "unauthenticated_per_address"})
    assert hits == 1


# the listener's factory: what each stream it builds gets


def listener(gw, **kw):
    from s2sgate.s2s.inbound import InboundFactory
    return InboundFactory(gw.clock, gw.current, gw.router, gw.verifier, gw.sessions, **kw)


def fromListener(factory, host="127.0.3.9", port=40001):
    from twisted.internet.address import IPv4Address
    stream = factory.buildProtocol(IPv4Address("TCP", host, port))
    return stream, Output(connect(stream))


def test_a_listener_stream_shows_the_peers_address_and_port():
    gw = makeGateway()
    fromListener(listener(gw), port=40001)
    [info] = gw.sessions.describe()
    assert info["peer"] == "127.0.3.9:40001"


def test_a_listener_stream_from_an_address_without_a_host_shows_no_peer():
    from twisted.internet.address import UNIXAddress
    gw = makeGateway()
    stream = listener(gw).buildProtocol(UNIXAddress(None))
    connect(stream)
    [info] = gw.sessions.describe()
    assert info["peer"] == ""


def test_a_listener_bounds_unauthenticated_streams_by_the_peers_address_not_its_port():
    gw = makeGateway(limits={"unauthenticated_per_address": 1})
    factory = listener(gw)
    _, first = fromListener(factory, port=40001)
    _, second = fromListener(factory, port=40002)
    assert (first.streamError(), second.streamError()) == (None, "policy-violation")


def test_a_stream_from_a_direct_tls_listener_is_secure_from_its_first_byte():
    gw = makeGateway()
    stream, _ = fromListener(listener(gw, directTLS=True))
    [info] = gw.sessions.describe()
    assert info["direct_tls"] is True
    assert stream.securitySummary() == "direct TLS"


def test_a_listener_stream_holds_its_writes_in_the_gateways_batch():
    from s2sgate.xmpp.stream import WriteBatch
    gw = makeGateway()
    batch = WriteBatch()
    stream, out = fromListener(listener(gw, batch=batch))
    batch.enter()
    stream.dataReceived(header())
    assert out.transport.value() == b""
    batch.exit()
    assert out.update().header["to"] == REMOTE


def test_a_listener_stream_counts_its_bytes_in_the_gateways_metrics():
    from s2sgate.ops.metrics import Metrics
    gw = makeGateway()
    metrics = Metrics()
    stream, _ = fromListener(listener(gw, metrics=metrics))
    stream.dataReceived(header())
    assert metrics.registry.get_sample_value("s2sgate_bytes_total", {"direction": "in"}) == \
        len(header())


def test_the_listeners_streams_log_through_the_one_limiter_they_were_given():
    # One limiter for every listener: a peer cannot get more lines by
    # connecting to another port.
    from twisted.logger import Logger

    from s2sgate.s2s.guard import LogLimiter
    gw = makeGateway(limits={"unauthenticated_per_address": 1})
    lines = []
    peerLog = LogLimiter(gw.clock, log=Logger(observer=lines.append), burst=1)
    plain, direct = listener(gw, peerLog=peerLog), listener(gw, peerLog=peerLog, directTLS=True)
    for factory, port in ((plain, 40001), (plain, 40002), (direct, 40003)):
        fromListener(factory, port=port)
    assert [e["event"] for e in lines] == ["inbound.refused"]


# offers that take stanzas (plug-ins, docs/architecture.md): a stanza whose
# name an offer registered goes to it, as a DOM, and not to the router


class StanzaTap:
    """An offer that takes the stanzas it registered (C{name}; None: all) into C{taken}."""

    def __init__(self, runtime):
        pass

    def advertise(self, stream, features):
        pass

    def handlers(self):
        return {(NS_SERVER, self.name): self.take}

    def take(self, stream, element):
        self.taken.append((stream, element))

    def streamClosed(self, stream):
        pass


def tapped(name):
    from s2sgate.features import OFFERS
    from s2sgate.gateway.runtime import Runtime
    tap = type("Tap", (StanzaTap,), {"name": name, "taken": []})
    gw = makeGateway()
    gw.current.swap(Runtime.build(gw.config, offers=OFFERS + (tap,)))
    return tap, authenticated(gw=opened_on(gw))


def test_a_stanza_an_offer_registered_by_name_goes_to_that_offer():
    tap, (gw, stream, out) = tapped("iq")
    stream.dataReceived(f"<iq type='get' id='p1' from='{REMOTE}' to='{LOCAL}'>"
                        "<ping xmlns='urn:xmpp:ping'/></iq>".encode())
    [(on, iq)] = tap.taken
    assert on is stream and (iq.name, iq["id"]) == ("iq", "p1")
    assert gw.router.delivered == []


def test_stanzas_an_offer_registered_by_namespace_go_to_that_offer():
    tap, (gw, stream, out) = tapped(None)
    stream.dataReceived(stanza().toXml().encode())
    [(on, message)] = tap.taken
    assert on is stream and str(message.body) == "hi"
    assert gw.router.delivered == []


def test_a_stanza_in_the_client_namespace_is_unsupported_stanza_type():
    gw, stream, out = authenticated()
    stream.dataReceived(f"<message xmlns='jabber:client' from='juliet@{REMOTE}/balcony' "
                        f"to='romeo@{LOCAL}'><body>hi</body></message>".encode())
    assert out.streamError() == "unsupported-stanza-type"
    assert gw.router.delivered == []


def authenticatedFromListener(metrics):
    gw = makeGateway()
    stream, out = fromListener(listener(gw, metrics=metrics))
    stream.dataReceived(header() + dbResult())
    gw.verifier.requests[-1][-1].callback(VALID)
    assert stream.pairs == {(REMOTE, LOCAL)}
    return gw, stream, out


def streamsLost(metrics):
    return metrics.registry.get_sample_value("s2sgate_streams_lost_total", {"direction": "in"})


def test_an_authenticated_inbound_stream_dropped_without_a_closing_tag_is_counted_lost():
    from twisted.internet.error import ConnectionLost

    from s2sgate.ops.metrics import Metrics
    metrics = Metrics()
    gw, stream, out = authenticatedFromListener(metrics)
    stream.connectionLost(Failure(ConnectionLost("gone")))
    assert streamsLost(metrics) == 1


def test_an_inbound_stream_the_peer_closes_cleanly_is_not_counted_lost():
    from twisted.internet.error import ConnectionDone

    from s2sgate.ops.metrics import Metrics
    metrics = Metrics()
    gw, stream, out = authenticatedFromListener(metrics)
    stream.dataReceived(b"</stream:stream>")
    stream.connectionLost(Failure(ConnectionDone()))
    assert stream.endClean
    assert not streamsLost(metrics)


def test_the_certificate_cache_holds_the_header_domain_and_every_claim_allowed():
    from tests.test_inbound_tls import secured, valid
    domains = [REMOTE] + [f"d{i}.test" for i in range(3)]
    gw, stream, out = secured(mode="required", verdicts={d: valid(d) for d in domains},
                              limits={"claims_per_stream": 3})
    for _ in range(2):
        for d in domains:
            stream.certificateFor(d)
    assert sorted(d for _, d in gw.tls.verdictCalls) == sorted(domains)


def test_a_header_from_an_invalid_domain_is_invalid_from():
    gw, stream, out = opened_on_header(header(sender="a..b"))
    assert out.streamError() == "invalid-from"


def test_a_refused_connection_is_not_tracked():
    gw = makeGateway(limits={"unauthenticated_per_address": 1, "unauthenticated_total": 2})
    first, _ = connectedFrom(gw, "127.0.3.20")
    samePeer, _ = connectedFrom(gw, "127.0.3.20")
    second, _ = connectedFrom(gw, "127.0.3.21")
    overTotal, _ = connectedFrom(gw, "127.0.3.22")
    assert set(gw.sessions.streams()) == {first, second}


def test_a_connection_refused_over_the_total_is_counted_under_unauthenticated_total():
    from s2sgate.ops.metrics import Metrics
    gw = makeGateway(limits={"unauthenticated_per_address": 1, "unauthenticated_total": 1})
    metrics = Metrics()
    for host in ("127.0.3.20", "127.0.3.21"):
        connect(InboundStream(gw.clock, gw.runtime, gw.router, gw.verifier, gw.sessions,
                              peerHost=host, metrics=metrics))
    hits = metrics.registry.get_sample_value("s2sgate_peer_limit_hits_total",
                                             {"limit": "unauthenticated_total"})
    assert hits == 1


def test_a_connection_that_is_tls_from_its_first_byte_is_secure():
    gw = makeGateway()
    stream = inbound(gw)
    stream.makeConnection(DirectTLSTransport())
    assert stream.secure


def test_a_stream_turns_nagle_off_on_a_tls_connection_from_its_first_byte():
    gw = makeGateway()
    stream = inbound(gw)
    transport = DirectTLSTransport()
    stream.makeConnection(transport)
    assert transport.noDelay


def test_an_authenticated_inbound_stream_idle_for_the_idle_timeout_is_closed():
    gw, stream, out = authenticated(gw=opened(idle_timeout=30))
    gw.clock.advance(29)
    assert not out.update().ended
    gw.clock.advance(1)
    assert out.update().ended
