# -*- test-case-name: tests.test_serialize -*-
"""
Serialise a domish element whose prefixes a peer chose.

Twisted's domish serializer keeps one map from namespace to prefix for the
whole document.  That holds while each prefix means one namespace and each
namespace has one prefix; a peer's XML may rebind a prefix in a subtree
(``<p:a xmlns:p='urn:p'>…<q:a xmlns:q='urn:p'/>…<x xmlns:q='urn:q' p:k='v'/>``),
and then domish wrote ``q:k`` for ``p:k``: the attribute changed namespace
on its way through the gateway (found by tests/test_rawstanza.py).

L{toXml} first gives each namespace declared in the tree one prefix of its
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


def _renames(element, prefixes):
    """
    {id(element): its declarations with one prefix per namespace}, for the
    elements whose declarations need another prefix; empty when none does.
    """
    byUri = dict(prefixes or {})
    byUri.update(domish.G_PREFIXES)
    byPrefix = {p: u for u, p in byUri.items()}
    renames = {}
    fresh = 0
    stack = [element]
    while stack:
        e = stack.pop()
        if not isinstance(e, domish.Element):
            continue
        stack.extend(reversed(e.children))
        if not e.localPrefixes:
            continue
        declared = {}
        for p, u in e.localPrefixes.items():
            q = byUri.get(u)
            if q is None:
                q = p
                # domish names the namespaces nobody declared xn0, xn1, ...
                while (q in byPrefix and byPrefix[q] != u) or _GENERATED.fullmatch(q):
                    q = f"ns{fresh}"
                    fresh += 1
                byUri[u], byPrefix[q] = q, u
            declared[q] = u
        if declared != e.localPrefixes:
            renames[id(e)] = declared
    return renames


class _OnePrefixEach(domish.SerializerClass):
    def __init__(self, renames, prefixes=None, prefixesInScope=None):
        super().__init__(prefixes=prefixes, prefixesInScope=prefixesInScope)
        self.renames = renames

    def serialize(self, elem, closeElement=1, defaultUri=""):
        declared = self.renames.get(id(elem)) if isinstance(elem, domish.Element) else None
        if declared is None:
            return super().serialize(elem, closeElement, defaultUri)
        theirs, elem.localPrefixes = elem.localPrefixes, declared
        try:
            return super().serialize(elem, closeElement, defaultUri)
        finally:
            elem.localPrefixes = theirs


def toXml(element, prefixes=None, defaultUri="", prefixesInScope=None) -> str:
    """C{element.toXml(...)}, with one prefix per namespace (see the module)."""
    s = _OnePrefixEach(_renames(element, prefixes),
                       prefixes=prefixes, prefixesInScope=prefixesInScope)
    s.serialize(element, defaultUri=defaultUri)
    return s.getValue()
