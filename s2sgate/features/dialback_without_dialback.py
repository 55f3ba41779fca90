# -*- test-case-name: tests.test_inbound_tls -*-
"""
XEP-0344 "dialback without dialback": when the TLS certificate already
proves the domain a C{<db:result/>} claims, answer valid at once, without a
connection back to the peer's authoritative server.
"""


def certificateProves(stream, remote, local):
    """A shortcut for L{DialbackOffer}: the method name, or None to dial back."""
    certificate = stream.certificateFor(remote)
    if certificate is not None and certificate.status == "valid":
        return "dialback-without-dialback"
    return None
