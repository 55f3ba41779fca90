# -*- test-case-name: tests.test_rawstanza -*-
"""
A stanza as the bytes it arrived in.

Forwarding is the gateway's main work, and most stanzas only pass through:
parsing each into a DOM and serialising it again cost more than everything
else on the path.  The parser (L{s2sgate.xmpp.parser.StreamParser}) hands
stanzas over as L{RawStanza}: the outer element's name, namespace and
attributes (what routing, the inbound checks and the bounce rules read) and
the element's exact bytes.  A stream writes those bytes as they are; only an
explicit outer C{xmlns} is rewritten between C{jabber:component:accept} and
C{jabber:server}.  What needs a tree (bounces, error replies, stanzas for the
gateway itself) asks for one with L{RawStanza.element}.

Bytes that cannot be moved as they are (the outer element is prefixed, or
the stanza uses a prefix its source stream's header declared) are marked
not C{portable}: a stream then writes them rebuilt in its own scope.
"""

import re

from s2sgate.xmpp.serialize import toXml
from s2sgate.xmpp.stanzas import errorReply

_NAME = re.compile(rb"<[^\s/>]*")
# One attribute of a start tag: its name and its quoted value.
_ATTRIBUTE = re.compile(rb"""\s+([^\s=/>]+)\s*=\s*(?:'([^']*)'|"([^"]*)")""")


class RawStanza:
    """
    One top-level stanza: read-only routing facts and its bytes.

    @ivar name: the outer element's local name (C{message}, C{presence}, C{iq}).
    @ivar uri: its namespace (the source stream's default namespace).
    @ivar attributes: its unqualified attributes.
    @ivar data: the element's bytes, from its C{<} to its last C{>}.
    @ivar portable: whether C{data} is well-formed on its own in any stream
        whose default namespace is C{uri} (no outer prefix, no prefix taken
        from the source stream's header).
    @ivar declaresDefault: whether the outer start tag declares C{xmlns}.
    @ivar context: the prefixes (C{prefix -> uri}) of the source stream's
        header, needed to read a stanza that is not portable.
    """

    __slots__ = ("name", "uri", "attributes", "data", "portable", "declaresDefault", "context")

    def __init__(self, name, uri, attributes, data, *, portable=True, declaresDefault=False,
                 context=None):
        self.name = name
        self.uri = uri
        self.attributes = attributes
        self.data = bytes(data)
        self.portable = portable
        self.declaresDefault = declaresDefault
        self.context = context or {}

    @classmethod
    def fromElement(cls, element):
        """A stanza built here (a bounce, a reply): serialised once, self-contained."""
        data = toXml(element, defaultUri=element.uri).encode("utf-8")
        attributes = {k: v for k, v in element.attributes.items() if isinstance(k, str)}
        return cls(element.name, element.uri, attributes, data)

    def __repr__(self):
        return f"<RawStanza {self.name} {len(self.data)} bytes>"

    def getAttribute(self, name, default=None):
        return self.attributes.get(name, default)

    @property
    def sender(self):
        return self.attributes.get("from")

    @property
    def recipient(self):
        return self.attributes.get("to")

    @property
    def kind(self):
        return self.attributes.get("type")

    def __len__(self):
        return len(self.data)

    def element(self):
        """A fresh DOM of this stanza (in C{uri}), the caller's to change."""
        from s2sgate.xmpp.parser import parseElement
        return parseElement(self.data, self.uri, self.context)

    def bytesIn(self, namespace):
        """
        These bytes as written on a stream whose default namespace is
        C{namespace}, or None when they must be rebuilt there (not portable).
        """
        if not self.portable:
            return None
        if not self.declaresDefault or namespace == self.uri:
            return self.data
        data = self.data
        m = _defaultDeclaration(data)
        if m is None or (m.group(2) if m.group(2) is not None else m.group(3)) != \
                self.uri.encode("utf-8"):
            return None   # written with character references: rebuild it
        value = namespace.encode("utf-8")
        return data[:m.start()] + b" xmlns='" + value + b"'" + data[m.end():]

    def errorReply(self, condition, text=None, by=None):
        """The error reply to this stanza (RFC 6120 §8.3), for its sender."""
        return RawStanza.fromElement(errorReply(self.element(), condition, text, by))


def _defaultDeclaration(data):
    """The match of the outer start tag's C{xmlns} attribute, or None."""
    i = _NAME.match(data).end()
    while True:
        m = _ATTRIBUTE.match(data, i)
        if m is None:
            return None
        if m.group(1) == b"xmlns":
            return m
        i = m.end()


__all__ = ["RawStanza"]
