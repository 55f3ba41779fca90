# -*- test-case-name: tests.test_serialize -*-
"""
Serialise a domish element whose prefixes a peer chose.

Twisted's domish serializer keeps one map from namespace to prefix for the
whole document.  That holds while each prefix means one namespace and each
namespace has one prefix; a peer's XML may rebind a prefix in a subtree
(``<p:a xmlns:p='urn:p'>…<q:a xmlns:q='urn:p'/>…<x xmlns:q='urn:q' p:k='v'/>``),
and then domish wrote ``q:k`` for ``p:k``: the attribute changed namespace
on its way through the gateway (found by tests/test_rawstanza.py).

L{toXml}, as it writes the tree, gives each namespace declared in it one prefix of its
own (the peer's where it is unambiguous, a fresh one where not; the
prefixes the stream suggests, such as ``db``, stay theirs), and serialises
with those.  Prefixes carry no meaning in XMPP, namespaces do: the tree read
back is the same.  The element itself is not changed.
"""

from __future__ import annotations

import re

from twisted.words.xish import domish

__all__ = ["toXml"]

_GENERATED = re.compile(r"xn[0-9]+")


class _OnePrefixEach(domish.SerializerClass):
    """
    domish's serializer; an element that declares prefixes is written with
    one prefix per namespace (decided as the tree is written, top down, so a
    tree without declarations costs one check per node).
    """

    def __init__(self, prefixes=None, prefixesInScope=None):
        super().__init__(prefixes=prefixes, prefixesInScope=prefixesInScope)
        self.byUri = dict(prefixes or {})
        self.byUri.update(domish.G_PREFIXES)
        self.byPrefix = {p: u for u, p in self.byUri.items()}
        self.fresh = 0

    def _oneEach(self, theirs):
        declared = {}
        for p, u in theirs.items():
            q = self.byUri.get(u)
            if q is None:
                q = p
                # domish names the namespaces nobody declared xn0, xn1, ...
                while (q in self.byPrefix and self.byPrefix[q] != u) or _GENERATED.fullmatch(q):
                    q = f"ns{self.fresh}"
                    self.fresh += 1
                self.byUri[u], self.byPrefix[q] = q, u
            declared[q] = u
        return declared

    def serialize(self, elem, closeElement=1, defaultUri=""):
        if not (isinstance(elem, domish.Element) and elem.localPrefixes):
            return super().serialize(elem, closeElement, defaultUri)
        theirs = elem.localPrefixes
        declared = self._oneEach(theirs)
        if declared == theirs:
            return super().serialize(elem, closeElement, defaultUri)
        elem.localPrefixes = declared
        try:
            return super().serialize(elem, closeElement, defaultUri)
        finally:
            elem.localPrefixes = theirs


def toXml(element, prefixes=None, defaultUri="", prefixesInScope=None) -> str:
    """C{element.toXml(...)}, with one prefix per namespace (see the module)."""
    s = _OnePrefixEach(prefixes=prefixes, prefixesInScope=prefixesInScope)
    s.serialize(element, defaultUri=defaultUri)
    return s.getValue()
