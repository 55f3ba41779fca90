from twisted.words.xish import domish
from zope.interface import implementer

from s2sgate.gateway.runtime import Current, Runtime
from s2sgate.interfaces import IOutbound
from s2sgate.xmpp.rawstanza import RawStanza
from tests.s2sfakes import makeConfig, makeRouter


def raw(element):
    return RawStanza.fromElement(element)


def router(**kw):
    """A Router for home.test and conference.home.test; what it delivers is in .delivered."""
    r = makeRouter(Current(Runtime.build(makeConfig())), **kw)
    r.delivered = r.local
    return r


def stanza(name="message", sender="alice@home.test/pc", to="bob@remote.test", kind=None):
    e = domish.Element(("jabber:server", name))
    if sender:
        e["from"] = sender
    if to:
        e["to"] = to
    if kind:
        e["type"] = kind
    return e


def condition(e):
    return e.error.firstChildElement().name


def test_remote_bound_message_is_bounced_remote_server_not_found_without_federation():
    r = router()
    r.fromLocal(raw(stanza()))
    [bounce] = r.delivered
    assert (bounce["from"], bounce["to"], bounce["type"]) == ("bob@remote.test", "alice@home.test/pc", "error")
    assert condition(bounce) == "remote-server-not-found"
    assert bounce.error["type"] == "cancel"


def test_error_is_not_answered_with_an_error():
    r = router()
    r.fromLocal(raw(stanza(kind="error")))
    assert r.delivered == []


def test_iq_result_is_not_bounced_but_iq_get_is():
    r = router()
    r.fromLocal(raw(stanza("iq", kind="result")))
    r.fromLocal(raw(stanza("iq", kind="get")))
    assert len(r.delivered) == 1


def test_unavailable_presence_is_not_bounced_but_subscribe_is():
    r = router()
    r.fromLocal(raw(stanza("presence", kind="unavailable")))
    r.fromLocal(raw(stanza("presence", kind="subscribe")))
    assert [b["type"] for b in r.delivered] == ["error"]


def test_stanza_from_a_non_local_domain_is_refused():
    r = router()
    r.fromLocal(raw(stanza(sender="mallory@evil.test")))
    assert condition(r.delivered[0]) == "not-allowed"


def test_stanza_to_a_local_domain_is_refused():
    r = router()
    r.fromLocal(raw(stanza(to="room@conference.home.test")))
    assert condition(r.delivered[0]) == "service-unavailable"


def test_malformed_recipient_gets_jid_malformed():
    r = router()
    r.fromLocal(raw(stanza(to="bob@bad domain!")))
    assert condition(r.delivered[0]) == "jid-malformed"


def test_ping_to_the_gateway_is_answered():
    r = router()
    iq = stanza("iq", to="s2s.home.test", kind="get")
    iq["id"] = "p1"
    iq.addElement(("urn:xmpp:ping", "ping"))
    r.fromLocal(raw(iq))
    [reply] = r.delivered
    assert (reply["type"], reply["id"], reply["to"]) == ("result", "p1", "alice@home.test/pc")


@implementer(IOutbound)
class Recording:
    def __init__(self, bounce, deliver):
        self.sent = []

    def send(self, local, remote, element):
        self.sent.append((local, remote))


def test_remote_bound_stanza_goes_to_outbound_with_its_domain_pair():
    r = router(outbound=Recording)
    r.fromLocal(raw(stanza(to="Bob@Remote.TEST/x")))
    assert r.outbound.sent == [("home.test", "remote.test")]
    assert r.delivered == []
