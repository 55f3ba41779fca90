"""A scripted remote s2s server, blocking (run it in a thread): STARTTLS with a client
certificate, SASL EXTERNAL, then raw stanzas. What an attacker's server can do."""
from __future__ import annotations

import base64
import re
import socket
import ssl

NS_STREAMS = "http://etherx.jabber.org/streams"
HEADER = ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
          "xmlns:db='jabber:server:dialback' from='{sender}' to='{to}' version='1.0'>")


class PeerClosed(ConnectionError):
    pass


class S2SPeer:
    """``S2SPeer(ip, port, sender, to)``: one connection; methods block, ``timeout`` each."""

    def __init__(self, ip, port, sender, to, timeout=10):
        self.sender, self.to = sender, to
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((ip, port), timeout)
        self.buffer = b""
        self.log: list[bytes] = []

    # reading

    def read_until(self, pattern: bytes) -> bytes:
        """Everything up to and including the first match of ``pattern`` (a regex)."""
        rx = re.compile(pattern, re.S)
        while True:
            m = rx.search(self.buffer)
            if m:
                got, self.buffer = self.buffer[:m.end()], self.buffer[m.end():]
                return got
            data = self.sock.recv(65536)
            if not data:
                raise PeerClosed(f"closed while waiting for {pattern!r}; got {self.buffer!r}")
            self.log.append(data)
            self.buffer += data

    def features(self) -> bytes:
        self.read_until(rb"<stream:stream[^>]*>")
        return self.read_until(rb"</stream:features>|<stream:features[^>]*/>")

    # writing

    def send(self, data):
        self.sock.sendall(data.encode("utf-8") if isinstance(data, str) else data)

    def header(self) -> bytes:
        """Send our stream header; return the features that answer it."""
        self.send(HEADER.format(sender=self.sender, to=self.to))
        return self.features()

    # negotiation

    def starttls(self, certfile, cafile=None) -> bytes:
        """Header, STARTTLS with ``certfile`` (leaf, chain and key in one PEM), new header;
        return the features offered over TLS."""
        features = self.header()
        if b"urn:ietf:params:xml:ns:xmpp-tls" not in features:
            raise AssertionError(f"no STARTTLS offered: {features!r}")
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.read_until(rb"<proceed[^>]*/>")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        if cafile:
            ctx.load_verify_locations(cafile)
        else:
            ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(certfile)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.to)
        self.buffer = b""
        return self.header()

    def sasl_external(self, authzid=None) -> bytes:
        """Send ``<auth mechanism='EXTERNAL'>``; return ``<success/>`` or the failure."""
        value = base64.b64encode(authzid.encode()).decode() if authzid else "="
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>"
                  f"{value}</auth>")
        return self.read_until(rb"<success[^>]*/>|<success.*?</success>|</failure>|"
                               rb"</stream:error>")

    def close(self):
        try:
            self.send("</stream:stream>")
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def offers_external(features: bytes) -> bool:
    return re.search(rb"<mechanism>\s*EXTERNAL\s*</mechanism>", features) is not None
