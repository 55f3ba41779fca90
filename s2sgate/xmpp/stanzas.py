# -*- test-case-name: tests.test_stanzas -*-
"""
Stanza helpers: error bounces (RFC 6120 §8.3) and the namespace change
between the component link (C{jabber:component:accept}) and s2s streams
(C{jabber:server}).
"""

from twisted.words.xish import domish

NS_STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
STANZA_NAMES = frozenset(("message", "presence", "iq"))

# Error types per RFC 6120 §8.3.3 for the conditions the gateway produces.
ERROR_TYPES = {
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

# Presence that announces something nobody waits for an answer to.
_SILENT_PRESENCE = frozenset(("unavailable", "probe", "subscribed", "unsubscribe", "unsubscribed"))


def shouldBounce(stanza):
    """
    Whether an undeliverable stanza gets an error reply.

    Never an error for an error (RFC 6120 §8.3.1) nor for an iq result;
    headline messages expect no reply (RFC 6121 §5.2.2); presence is bounced
    only where its sender waits for something (available and subscribe), so
    a user logging in with many remote contacts is not flooded with errors.
    """
    kind = stanza.getAttribute("type")
    if kind == "error":
        return False
    if stanza.name == "iq":
        return kind in ("get", "set")
    if stanza.name == "message":
        return kind != "headline"
    if stanza.name == "presence":
        return kind not in _SILENT_PRESENCE
    return False


def errorReply(stanza, condition, text=None, by=None):
    """
    Turn C{stanza} into its error reply in place and return it: addresses
    swapped, C{type='error'}, an C{<error/>} child appended.
    """
    sender, recipient = stanza.getAttribute("from"), stanza.getAttribute("to")
    stanza.attributes.pop("from", None)
    stanza.attributes.pop("to", None)
    if recipient:
        stanza["from"] = recipient
    if sender:
        stanza["to"] = sender
    stanza["type"] = "error"
    error = stanza.addElement("error")
    error["type"] = ERROR_TYPES.get(condition, "cancel")
    if by:
        error["by"] = by
    error.addElement((NS_STANZA_ERRORS, condition))
    if text:
        t = error.addElement((NS_STANZA_ERRORS, "text"), content=text)
        t[("http://www.w3.org/XML/1998/namespace", "lang")] = "en"
    return stanza


def setNamespace(element, old, new):
    """
    Move C{element} and its children in the stream namespace C{old} to
    C{new}; payload namespaces are left alone.
    """
    stack = [element]
    while stack:
        e = stack.pop()
        if e.uri == old:
            e.uri = new
        if e.defaultUri == old:
            e.defaultUri = new
        stack.extend(c for c in e.children if isinstance(c, domish.Element))
    return element
