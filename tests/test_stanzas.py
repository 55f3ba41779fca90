"""
Bounce rules and error replies (RFC 6120 §8.3, RFC 6121), one test per rule
of docs/behaviour.md's bounce table, and the namespace change between the
component link and s2s streams.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.words.xish import domish

from s2sgate.xmpp.stanzas import errorReply, setNamespace, shouldBounce

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
XML_LANG = ("http://www.w3.org/XML/1998/namespace", "lang")


def stanza(name, kind=None, sender="bob@remote.test/phone", to="alice@home.test"):
    e = domish.Element(("jabber:server", name))
    if sender is not None:
        e["from"] = sender
    if to is not None:
        e["to"] = to
    if kind is not None:
        e["type"] = kind
    return e


# never an error in reply to an error (RFC 6120 §8.3.1) ...

@pytest.mark.parametrize("name", ["message", "presence", "iq"])
def test_an_error_stanza_is_never_bounced(name):
    assert shouldBounce(stanza(name, "error")) is False


# ... nor to an iq result

def test_an_iq_result_is_never_bounced():
    assert shouldBounce(stanza("iq", "result")) is False


# iq get/set: always

@pytest.mark.parametrize("kind", ["get", "set"])
def test_an_iq_request_is_always_bounced(kind):
    assert shouldBounce(stanza("iq", kind)) is True


# message: always, except headline (RFC 6121 §5.2.2)

@pytest.mark.parametrize("kind", [None, "normal", "chat", "groupchat"])
def test_a_message_is_bounced(kind):
    assert shouldBounce(stanza("message", kind)) is True


def test_a_headline_message_is_not_bounced():
    assert shouldBounce(stanza("message", "headline")) is False


# presence: available presence and subscribe only

def test_available_presence_is_bounced():
    assert shouldBounce(stanza("presence")) is True


def test_a_subscription_request_is_bounced():
    assert shouldBounce(stanza("presence", "subscribe")) is True


@pytest.mark.parametrize("kind", ["unavailable", "probe", "subscribed", "unsubscribe",
                                  "unsubscribed"])
def test_presence_that_expects_no_answer_is_not_bounced(kind):
    assert shouldBounce(stanza("presence", kind)) is False


def test_what_is_not_a_stanza_is_not_bounced():
    assert shouldBounce(domish.Element(("jabber:server:dialback", "result"))) is False


# error replies

def test_an_error_reply_swaps_the_addresses():
    reply = errorReply(stanza("message", "chat"), "remote-server-not-found")
    assert (reply["from"], reply["to"]) == ("alice@home.test", "bob@remote.test/phone")


def test_an_error_reply_has_type_error():
    reply = errorReply(stanza("iq", "get"), "remote-server-not-found")
    assert reply["type"] == "error"


def test_an_error_reply_keeps_the_payload_before_the_error():
    m = stanza("message", "chat")
    m["id"] = "m1"
    m.addElement("body", content="hello")
    m.addElement(("urn:xmpp:receipts", "request"))
    reply = errorReply(m, "remote-server-timeout")
    assert reply["id"] == "m1"
    assert [(c.uri, c.name) for c in reply.elements()] == [
        ("jabber:server", "body"), ("urn:xmpp:receipts", "request"), ("jabber:server", "error")]
    assert str(reply.body) == "hello"


def test_an_error_reply_carries_the_condition_in_the_stanzas_namespace():
    reply = errorReply(stanza("message"), "remote-server-not-found")
    conditions = [(c.uri, c.name) for c in reply.error.elements()]
    assert conditions == [(NS_STANZAS, "remote-server-not-found")]


def test_an_error_reply_says_what_failed_in_english():
    reply = errorReply(stanza("message"), "remote-server-not-found",
                       "DNS: no such domain nowhere.test")
    text = [c for c in reply.error.elements() if c.name == "text"]
    assert len(text) == 1
    assert text[0].uri == NS_STANZAS
    assert str(text[0]) == "DNS: no such domain nowhere.test"
    assert text[0][XML_LANG] == "en"


def test_an_error_reply_without_a_reason_has_no_text():
    reply = errorReply(stanza("message"), "not-allowed")
    assert [c.name for c in reply.error.elements()] == ["not-allowed"]


def test_an_error_reply_names_the_entity_that_produced_it():
    reply = errorReply(stanza("iq", "set"), "service-unavailable", by="s2s.home.test")
    assert reply.error["by"] == "s2s.home.test"


def test_an_error_reply_to_a_stanza_without_sender_has_no_recipient():
    reply = errorReply(stanza("message", sender=None), "not-allowed")
    assert reply.getAttribute("to") is None
    assert reply["from"] == "alice@home.test"


def test_an_error_reply_to_a_stanza_without_recipient_has_no_sender():
    # A stanza without 'to' is for its sender's own server: the reply must
    # not come "from" the original sender to itself.
    reply = errorReply(stanza("iq", "get", to=None), "service-unavailable")
    assert reply.getAttribute("from") is None
    assert reply["to"] == "bob@remote.test/phone"


def test_an_error_reply_for_a_condition_outside_the_table_has_type_cancel():
    # RFC 6120 §8.3.3.3: feature-not-implemented is of type cancel, the
    # type of every condition the table does not name.
    reply = errorReply(stanza("iq", "set"), "feature-not-implemented")
    assert reply.error["type"] == "cancel"


# RFC 6120 §8.3.3: the error type that goes with each condition the gateway uses.
RFC6120_TYPES = {
    "bad-request": "modify",
    "forbidden": "auth",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-allowed": "cancel",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "undefined-condition": "cancel",
}


@pytest.mark.parametrize(("condition", "kind"), sorted(RFC6120_TYPES.items()))
def test_an_error_reply_has_the_error_type_of_its_condition(condition, kind):
    assert errorReply(stanza("message"), condition).error["type"] == kind


_names = st.sampled_from(["message", "presence", "iq"])
_types = st.sampled_from([None, "normal", "chat", "groupchat", "headline", "get", "set",
                          "result", "unavailable", "probe", "subscribe", "subscribed",
                          "unsubscribe", "unsubscribed", "error"])
_jids = st.sampled_from([None, "a.test", "bob@remote.test", "bob@remote.test/x y"])


@settings(max_examples=300, deadline=None)
@given(_names, _types, _jids, _jids, st.sampled_from(sorted(RFC6120_TYPES)))
def test_an_error_reply_is_never_bounced_again(name, kind, sender, to, condition):
    assert shouldBounce(errorReply(stanza(name, kind, sender, to), condition)) is False


# namespaces

def test_set_namespace_moves_the_stanza_and_its_stream_namespace_children():
    m = stanza("message")
    m.addElement("body", content="hi")
    setNamespace(m, "jabber:server", "jabber:component:accept")
    assert (m.uri, m.body.uri) == ("jabber:component:accept", "jabber:component:accept")


def test_set_namespace_leaves_payload_namespaces_alone():
    m = stanza("message")
    receipt = m.addElement(("urn:xmpp:receipts", "request"))
    setNamespace(m, "jabber:server", "jabber:component:accept")
    assert receipt.uri == "urn:xmpp:receipts"


def test_set_namespace_puts_children_added_afterwards_in_the_new_namespace():
    # An error reply appends <error/> to the moved stanza: it must land in
    # the stanza's new namespace, not in none.
    m = stanza("message")
    setNamespace(m, "jabber:server", "jabber:component:accept")
    assert m.addElement("error").uri == "jabber:component:accept"


def test_set_namespace_makes_the_stanza_serialise_plainly_in_the_new_stream():
    m = stanza("message")
    m.addElement("body", content="hi")
    setNamespace(m, "jabber:server", "jabber:component:accept")
    assert m.toXml(defaultUri="jabber:component:accept") == (
        "<message from='bob@remote.test/phone' to='alice@home.test'><body>hi</body></message>")
