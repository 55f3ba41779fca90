# -*- test-case-name: tests.test_dane -*-
"""
A tiny authoritative-looking DNS server for DANE tests: answers SRV, A,
AAAA and TLSA from a table and sets the AD bit ("validated") on the answers
for names not listed in C{unsigned} — what a validating resolver says of
signed and unsigned zones. dnsmasq cannot set AD, hence this. UDP only; runs
in the test's reactor on one of the test's addresses.
"""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol
from twisted.names import dns

from s2sgate.net.dnssec import TLSA


def tlsaRecord(name: str, usage: int, selector: int, mtype: int, data: bytes) -> dns.RRHeader:
    payload = dns.UnknownRecord(bytes([usage, selector, mtype]) + data, ttl=60)
    return dns.RRHeader(name, type=TLSA, payload=payload, ttl=60)


class ADServer(DatagramProtocol):
    """
    C{records[(name, type)]}: a list of RRHeaders; a missing name is
    NXDOMAIN, a known name without that type NODATA. C{unsigned}: names
    whose answers carry no AD bit. C{queries} records (name, type, AD asked).
    """

    def __init__(self, records, unsigned=()):
        self.records = dict(records)
        self.unsigned = set(unsigned)
        self.queries: list[tuple[str, int, bool]] = []

    def datagramReceived(self, data, addr):
        query = dns.Message()
        query.fromStr(data)
        q = query.queries[0]
        name = q.name.name.decode("ascii").rstrip(".").lower()
        self.queries.append((name, q.type, bool(query.authenticData)))
        answer = dns.Message(id=query.id, answer=1, opCode=query.opCode, recDes=query.recDes,
                             recAv=1, auth=0)
        answer.queries = [q]
        known = {n for n, _ in self.records}
        if name not in known:
            answer.rCode = dns.ENAME
        else:
            answer.answers = list(self.records.get((name, q.type), []))
        # RFC 6840 section 5.7: AD only for a query that asked for it.
        answer.authenticData = int(bool(query.authenticData) and name not in self.unsigned)
        self.transport.write(answer.toStr(), addr)
