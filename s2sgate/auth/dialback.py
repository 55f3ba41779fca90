# -*- test-case-name: tests.test_dialback -*-
"""
Server Dialback keys (XEP-0185) and elements (XEP-0220).

Keys are an HMAC of the stream's parties and id under a secret shared by
every gateway instance, so any instance can answer a verify request
(authoritative role) without remembering the keys it sent.
"""

import hashlib
import hmac
import secrets

from twisted.words.xish import domish

NS_DB = "jabber:server:dialback"
NS_DB_FEATURE = "urn:xmpp:features:dialback"
NS_STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"


class DialbackKeys:
    """Generate and check dialback keys from one secret."""

    def __init__(self, secret=None):
        if not secret:
            # Unset: random per start.  Keys then only verify on this
            # process, which is fine for a single instance.
            secret = secrets.token_hex(32)
        self._hashedSecret = hashlib.sha256(secret.encode("utf-8")).hexdigest().encode("ascii")

    def generate(self, receiving, originating, streamId):
        """XEP-0185 §3: HMAC-SHA256(SHA256(secret), receiving ' ' originating ' ' id), hex."""
        message = f"{receiving} {originating} {streamId}".encode("utf-8")
        return hmac.new(self._hashedSecret, message, hashlib.sha256).hexdigest()

    def check(self, receiving, originating, streamId, key):
        """Compare in constant time."""
        expected = self.generate(receiving, originating, streamId)
        return hmac.compare_digest(expected.encode("ascii"), (key or "").strip().encode("utf-8"))


def dbElement(name, sender, recipient, *, key=None, streamId=None, kind=None):
    e = domish.Element((NS_DB, name), "jabber:server")
    e["from"], e["to"] = sender, recipient
    if streamId is not None:
        e["id"] = streamId
    if kind is not None:
        e["type"] = kind
    if key is not None:
        e.addContent(key)
    return e


# Conditions after which the same request may work later (RFC 6120 8.3.3).
_TRY_AGAIN = ("remote-server-timeout", "resource-constraint")


def dbError(name, sender, recipient, condition, text=None, streamId=None):
    """A dialback error (XEP-0220 §2.4): C{type='error'} with a stanza error inside."""
    e = dbElement(name, sender, recipient, kind="error", streamId=streamId)
    # Unprefixed in XEP-0220's examples: the stream's jabber:server.
    error = e.addElement(("jabber:server", "error"))
    error["type"] = "wait" if condition in _TRY_AGAIN else "cancel"
    error.addElement((NS_STANZA_ERRORS, condition))
    if text:
        error.addElement((NS_STANZA_ERRORS, "text"), content=text)
    return e


def dbErrorReason(element):
    """A short reason out of a received C{type='error'} dialback element."""
    condition, text = "undefined-condition", None
    for error in element.elements():
        if error.name != "error":
            continue
        for child in error.elements():
            if child.name == "text":
                text = str(child)
            else:
                condition = child.name
    return condition + (f" ({text})" if text else "")
