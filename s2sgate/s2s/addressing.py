# -*- test-case-name: tests.test_inbound,tests.test_bidi -*-
"""
The check every stanza a remote server sends us passes, on whichever
stream it arrives: its C{from}/C{to} domains must be a pair authenticated
on that stream for stanzas towards us.  Inbound streams and bidirectional
outbound streams (XEP-0288) apply the same rules, so they live here once.
"""

from s2sgate.xmpp.domain import InvalidDomain, domainOf, isUnambiguous, rawDomainOf


def checkedPair(stream, element, pairs, isLocal):
    """
    The C{(remote, local)} domains of C{element}, or None after the stream
    error that refuses it.

    @param pairs: the C{(remote, local)} pairs authenticated on C{stream}
        for stanzas towards us.
    @param isLocal: whether a domain is one of ours.
    """
    sender, to = element.getAttribute("from"), element.getAttribute("to")
    if not sender or not to:
        stream.streamError("improper-addressing", "stanzas on s2s streams need from and to")
        return None
    try:
        remote = domainOf(sender)
    except InvalidDomain:
        stream.streamError("invalid-from", f"{sender!r} is not a valid address")
        return None
    try:
        local = domainOf(to)
    except InvalidDomain:
        stream.streamError("improper-addressing", f"{to!r} is not a valid address")
        return None
    if not isLocal(local):
        stream.streamError("host-unknown", f"this server does not serve {local}")
        return None
    for address in (sender, to):
        if not isUnambiguous(rawDomainOf(address)):
            stream.streamError("invalid-from" if address is sender else "improper-addressing",
                               f"{rawDomainOf(address)!r} names different domains under "
                               "IDNA 2003 and IDNA 2008")
            return None
    if (remote, local) not in pairs:
        stream.streamError("invalid-from",
                           f"{remote} is not authenticated on this stream for {local}")
        return None
    return remote, local
