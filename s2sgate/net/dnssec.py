# -*- test-case-name: tests.test_dane -*-
"""
DNS queries whose answers say whether they were DNSSEC-validated.

DANE (RFC 7673) may only use SRV and TLSA answers that a validating resolver
authenticated: the AD bit of its answer. Twisted's client resolver neither
sets AD in its queries (RFC 6840 section 5.7: without AD or DO in the query
a validating resolver leaves AD out of the answer) nor hands the message's
flags to its caller, so this module asks the configured nameservers itself.
The AD bit is only as trustworthy as the path to the resolver: the gateway
asks only the nameservers of C{[s2s.dns]} (the trust model of Postfix's DANE
and Prosody's C{use_dane}: a validating resolver on a trusted path, e.g.
loopback).
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer
from twisted.names import dns
from twisted.names import error as dnserror

__all__ = ["DNSAnswer", "AuthenticatedLookup", "TLSA"]

TLSA = 52   # RFC 6698; twisted.names has no record class for it


@dataclass(frozen=True)
class DNSAnswer:
    """One answer: its rcode, answer records, and whether the resolver validated it."""

    rCode: int
    answers: tuple
    authenticated: bool


class _ADDatagramProtocol(dns.DNSDatagramProtocol):
    """Sets the AD bit in every query it writes (RFC 6840 section 5.7)."""

    def writeMessage(self, message, address):
        message.authenticData = 1
        super().writeMessage(message, address)


class _Controller:
    def messageReceived(self, message, protocol, address=None):
        pass     # an answer to no query of ours: dropped


class AuthenticatedLookup:
    """
    Ask C{servers} in turn, over UDP, each with the C{timeouts} in turn.

    @param servers: C{(ip, port)} pairs: the trusted validating resolvers.
    @param timeouts: seconds per try, e.g. C{(10, 10, 10)} for two retries.
    """

    def __init__(self, reactor, servers, timeouts=(10,)):
        self.reactor = reactor
        self.servers = [(str(ip), int(port)) for ip, port in servers]
        self.timeouts = tuple(timeouts)

    async def lookup(self, name: str, type: int) -> DNSAnswer:
        """The answer for C{name}/C{type}; raises a timeout or DNSServerError."""
        if isinstance(name, bytes):
            name = name.decode("ascii")
        last: BaseException = dnserror.DNSQueryTimeoutError(name)
        for timeout in self.timeouts:
            for server in self.servers:
                try:
                    message = await self._ask(server, name, type, timeout)
                except (defer.TimeoutError, TimeoutError) as e:
                    last = e
                    continue
                if message.trunc:
                    # Answers this large do not occur for SRV/TLSA in practice;
                    # refusing is safer than using part of a record set.
                    raise dnserror.DNSServerError(f"{name}: answer truncated")
                return DNSAnswer(message.rCode, tuple(message.answers),
                                 bool(message.authenticData))
        raise last

    async def _ask(self, server, name, type, timeout):
        protocol = _ADDatagramProtocol(_Controller(), reactor=self.reactor)
        interface = "::" if ":" in server[0] else ""
        port = self.reactor.listenUDP(0, protocol, interface=interface)
        try:
            return await protocol.query(server, [dns.Query(name, type, dns.IN)], timeout)
        finally:
            port.stopListening()
