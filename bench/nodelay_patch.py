"""Experiment only (``bench/run.py --nodelay``): run the gateway with TCP_NODELAY on every
stream it owns, to show what Nagle's algorithm costs in latency.  Patches the class at
start-up in the gateway's process; s2sgate's own code is unchanged."""
from s2sgate.xmpp.stream import XmlStream

_connectionMade = XmlStream.connectionMade


def connectionMade(self):
    setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
    if setNoDelay is not None:
        try:
            setNoDelay(True)
        except Exception:  # noqa: BLE001
            pass
    _connectionMade(self)


XmlStream.connectionMade = connectionMade
