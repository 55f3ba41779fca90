# -*- test-case-name: tests.test_features -*-
"""
What a peer's C{<stream:features/>} offers, parsed once.

The negotiation steps ask it whether their feature is offered; C{s2sgate
check} reports it.  Unknown features are kept by name, not dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from s2sgate.xmpp.namespaces import NS_DB_FEATURE, NS_SASL, NS_TLS


@dataclass(frozen=True)
class StreamFeatures:
    """
    @ivar legacy: the peer speaks pre-1.0 XMPP and sent no features at all.
    @ivar element: the C{<features/>} element, for steps that read their own child.
    """

    starttls: bool = False
    starttlsRequired: bool = False
    dialback: bool = False
    mechanisms: tuple[str, ...] = ()
    other: tuple[str, ...] = ()
    legacy: bool = False
    element: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, element) -> "StreamFeatures":
        starttls = required = dialback = False
        mechanisms: list[str] = []
        other: list[str] = []
        for child in element.elements():
            key = (child.uri, child.name)
            if key == (NS_TLS, "starttls"):
                starttls = True
                required = any(c.name == "required" for c in child.elements())
            elif key == (NS_SASL, "mechanisms"):
                mechanisms = [str(m).strip() for m in child.elements() if m.name == "mechanism"]
            elif key == (NS_DB_FEATURE, "dialback"):
                dialback = True
            else:
                other.append(f"{{{child.uri}}}{child.name}" if child.uri else child.name)
        return cls(starttls, required, dialback, tuple(mechanisms), tuple(other),
                   element=element)

    @classmethod
    def none(cls) -> "StreamFeatures":
        """What a pre-1.0 peer offers: nothing (dialback is implied)."""
        return cls(legacy=True)

    def child(self, uri: str, name: str):
        """The offered child element C{(uri, name)}, or None."""
        if self.element is None:
            return None
        return next((c for c in self.element.elements() if (c.uri, c.name) == (uri, name)),
                    None)

    def offersMechanism(self, name: str) -> bool:
        return name in self.mechanisms

    def toJSON(self) -> dict[str, Any]:
        return {"starttls": self.starttls, "starttls_required": self.starttlsRequired,
                "dialback": self.dialback, "sasl_mechanisms": list(self.mechanisms),
                "other": list(self.other)}

    def describe(self) -> str:
        parts = []
        if self.starttls:
            parts.append("STARTTLS (required)" if self.starttlsRequired else "STARTTLS")
        if self.mechanisms:
            parts.append("SASL " + " ".join(self.mechanisms))
        if self.dialback:
            parts.append("dialback")
        if self.other:
            parts.append(f"{len(self.other)} other")
        return ", ".join(parts) or "none"
