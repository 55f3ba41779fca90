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


def conditionOf(stanza):
    return [c.name for c in stanza.error.elements() if c.name != "text"][0]


def textOf(stanza):
    return " ".join(str(c) for c in stanza.error.elements() if c.name == "text")


async def chatBothWays(homeIp, remoteJid, password, ip, tag):
    """alice@home.test (server at C{homeIp}) and C{remoteJid} exchange a chat message each way."""
    alice = await login("alice@home.test", "alicepw", homeIp)
    remote = await login(remoteJid, password, ip)
    try:
        alice.send(message(remoteJid, f"{tag}-out", "hello from home"))
        got = await remote.wait_for(isMessage(f"{tag}-out"), timeout=20)
        assert got.getAttribute("type") == "chat", got.toXml()
        assert str(got.body) == "hello from home"
        assert got["from"].startswith("alice@home.test")

        remote.send(message("alice@home.test", f"{tag}-in", "hello from afar"))
        got = await alice.wait_for(isMessage(f"{tag}-in"), timeout=20)
        assert got.getAttribute("type") == "chat", got.toXml()
        assert str(got.body) == "hello from afar"
    finally:
        await alice.disconnect()
        await remote.disconnect()


async def bounceFor(homeIp, to, tag):
    """alice sends a message to C{to}; returns what comes back with the same id."""
    alice = await login("alice@home.test", "alicepw", homeIp)
    try:
        alice.send(message(to, tag))
        return await alice.wait_for(isMessage(tag), timeout=20)
    finally:
        await alice.disconnect()
