"""
What the interop tests do as users: log in, send a chat message, expect it
or its bounce.  One copy for every test module that talks through real servers.
"""

import itertools

from twisted.internet import reactor

from .client import connect_client

# A fresh resource per login: no "conflict" with a session still closing.
_RESOURCES = (f"r{i}" for i in itertools.count())


async def login(jid, password, ip):
    """A logged-in, available session of bare JID C{jid} on the server at C{ip}."""
    client = await connect_client(reactor, f"{jid}/{next(_RESOURCES)}", password, ip)
    client.send_presence()
    # Wait for the server's echo of our own presence: only then does it
    # deliver messages sent to the bare JID to this session.
    await client.wait_for(lambda e: e.name == "presence" and e.getAttribute("type") is None
                          and (e.getAttribute("from") or "").startswith(jid + "/"))
    return client


def message(to, stanzaId, body="hi"):
    return (f"<message xmlns='jabber:client' to='{to}' type='chat' id='{stanzaId}'>"
            f"<body>{body}</body></message>")


def isMessage(stanzaId):
    return lambda e: e.name == "message" and e.getAttribute("id") == stanzaId


NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def conditionOf(stanza):
    """The one defined condition of an error stanza (RFC 6120 §8.3.2)."""
    conditions = [(c.uri, c.name) for c in stanza.error.elements() if c.name != "text"]
    assert len(conditions) == 1 and conditions[0][0] == NS_STANZAS, stanza.toXml()
    return conditions[0][1]


def textOf(stanza):
    return " ".join(str(c) for c in stanza.error.elements() if c.name == "text")


async def chatBothWays(homeIp, remoteJid, password, ip, tag):
    """
    alice@home.test (server at C{homeIp}) and C{remoteJid} exchange a chat
    message each way; each arrives from the sender's full JID, addressed as
    it was sent, with its type and body.
    """
    alice = await login("alice@home.test", "alicepw", homeIp)
    remote = await login(remoteJid, password, ip)
    try:
        alice.send(message(remoteJid, f"{tag}-out", "hello from home"))
        got = await remote.wait_for(isMessage(f"{tag}-out"), timeout=20)
        assertDelivered(got, alice.jid.full(), remoteJid, "hello from home")

        remote.send(message("alice@home.test", f"{tag}-in", "hello from afar"))
        got = await alice.wait_for(isMessage(f"{tag}-in"), timeout=20)
        assertDelivered(got, remote.jid.full(), "alice@home.test", "hello from afar")
    finally:
        await alice.disconnect()
        await remote.disconnect()


def assertDelivered(got, sender, recipient, body):
    assert (got.getAttribute("from"), got.getAttribute("to"), got.getAttribute("type"),
            str(got.body)) == (sender, recipient, "chat", body), got.toXml()


async def bounceFor(homeIp, to, tag):
    """
    alice sends a message to C{to}; returns what comes back with the same id,
    once it is known to be its error reply: from C{to} to alice's session,
    C{type='error'}, the body kept (docs/behaviour.md, "Bounces").
    """
    alice = await login("alice@home.test", "alicepw", homeIp)
    try:
        alice.send(message(to, tag))
        bounce = await alice.wait_for(isMessage(tag), timeout=20)
    finally:
        await alice.disconnect()
    assertBounce(bounce, to, alice.jid.full(), "hi")
    return bounce


def assertBounce(bounce, sender, recipient, body):
    """An error reply from C{sender} to C{recipient}; C{body} None: without the payload."""
    kept = str(bounce.body) if bounce.body is not None else None
    assert (bounce.getAttribute("from"), bounce.getAttribute("to"), bounce.getAttribute("type"),
            kept) == (sender, recipient, "error", body), bounce.toXml()


async def marker(sender, recipient, tag):
    """
    C{sender} sends C{recipient} a message after whatever is being checked
    for; once it arrived, anything sent before it on the same path would
    have arrived too.
    """
    sender.send(message(recipient.jid.userhost(), tag, "marker"))
    got = await recipient.wait_for(isMessage(tag), timeout=20)
    assertDelivered(got, sender.jid.full(), recipient.jid.userhost(), "marker")
