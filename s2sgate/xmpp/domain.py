# -*- test-case-name: tests.test_domain -*-
"""
Domain names as s2sgate compares and routes them.

Every domain that enters the gateway (config, stream headers, stanza
addresses) is turned into one canonical form here: lower-case ASCII with
IDNA 2008 A-labels after UTS-46 mapping, no trailing dot.  Twisted's JID
class applies IDNA 2003 (``faß.de`` would become ``fass.de``, another
domain) and its cache never evicts, so the gateway routes on the domain
part only, through a bounded cache.
"""

from functools import lru_cache

import idna


class InvalidDomain(ValueError):
    """The text is not a valid domain name."""


@lru_cache(maxsize=16384)
def normalize(domain: str) -> str:
    """Return the canonical A-label form of C{domain} or raise L{InvalidDomain}."""
    if not isinstance(domain, str) or not domain:
        raise InvalidDomain("empty domain")
    if domain.endswith("."):
        raise InvalidDomain(f"{domain!r} ends with a dot")
    if domain.startswith("[") and domain.endswith("]"):
        raise InvalidDomain(f"{domain!r} is an IP literal")
    try:
        ascii = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as e:
        raise InvalidDomain(f"{domain!r} is not a valid IDNA domain ({e})") from None
    if len(ascii) > 253:
        raise InvalidDomain(f"{domain!r} is longer than 253 octets")
    return ascii.lower()


# Addresses up to this long have their domain cached: a peer sending long,
# never repeated addresses cannot make the cache hold more than a few MiB.
_CACHED_LENGTH = 320


def domainOf(jid: str) -> str:
    """
    Return the canonical domain part of a JID string, or raise L{InvalidDomain}.

    Only the domain is parsed: the local part and resource are left alone,
    which keeps routing cheap and free of Twisted's unbounded JID cache.
    Every stanza asks twice, mostly for the same few addresses, so the
    answers for addresses of ordinary length are kept in a bounded cache
    of their own (errors are not).
    """
    if jid and len(jid) <= _CACHED_LENGTH:
        return _cachedDomainOf(jid)
    return _domainOf(jid)


def _domainOf(jid: str) -> str:
    if not jid:
        raise InvalidDomain("empty address")
    slash = jid.find("/")
    bare = jid if slash < 0 else jid[:slash]
    at = bare.find("@")
    if at >= 0:
        if at == 0:
            raise InvalidDomain(f"{jid!r} has an empty localpart")
        bare = bare[at + 1:]
    if slash >= 0 and slash == len(jid) - 1:
        raise InvalidDomain(f"{jid!r} has an empty resource")
    return normalize(bare)


_cachedDomainOf = lru_cache(maxsize=8192)(_domainOf)


@lru_cache(maxsize=4096)
def isUnambiguous(domain: str) -> bool:
    """
    Whether C{domain} names the same domain under IDNA 2008 (ours) and
    IDNA 2003 (nameprep, which Prosody and others still apply): C{faß.de}
    is C{xn--fa-hia.de} for us but C{fass.de} for them, so a peer
    authenticated for one must not smuggle stanzas from the other.
    """
    if domain.isascii():
        return True
    try:
        legacy = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return False
    try:
        return legacy == normalize(domain)
    except InvalidDomain:
        return False


def rawDomainOf(jid: str) -> str:
    """The domain part of a JID exactly as written."""
    slash = jid.find("/")
    bare = jid if slash < 0 else jid[:slash]
    return bare[bare.find("@") + 1:]
