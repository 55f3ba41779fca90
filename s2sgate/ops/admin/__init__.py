# -*- test-case-name: tests.test_admin -*-
"""
The admin listener: JSON API, status page, Prometheus C{/metrics}.

L{AdminService} listens on C{[admin] listen} and serves L{s2sgate.ops.admin.api}.
It is a child of L{s2sgate.gateway.service.GatewayService}; like the s2s listeners,
failing to bind stops start-up loudly.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from s2sgate.ops.admin.api import AdminSite, sessionTotals

__all__ = ["AdminService", "AdminSite", "sessionTotals"]


class AdminService(service.Service):
    """Serve the admin API of C{gateway} on its C{config.admin.listen}."""

    log = Logger()

    def __init__(self, gateway):
        self.gateway = gateway
        self.reactor = gateway.reactor
        self.description = gateway.config.admin.listen
        self.site = AdminSite(gateway)
        self.port = None
        self._waiters = []

    def whenListening(self):
        """A Deferred firing with the listening port (its C{getHost()} has the real port)."""
        if self.port is not None:
            return defer.succeed(self.port)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def startService(self):
        service.Service.startService(self)
        endpoint = serverFromString(self.reactor, self.description)
        d = endpoint.listen(self.site)

        def listening(port):
            self.port = port
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(port)
            self.log.info("admin API, status page and /metrics on {endpoint}{auth}",
                          endpoint=self.description, event="admin.listen",
                          auth=" (bearer token required)" if self.gateway.config.admin.token
                          else "")

        def failed(f):
            self.log.critical("cannot listen on {endpoint} for the admin API: {error}",
                              endpoint=self.description, error=f.getErrorMessage(),
                              event="admin.listen_failed")
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.errback(f)
            if getattr(self.reactor, "running", False):
                self.reactor.stop()

        d.addCallbacks(listening, failed)
        self._listening = d

    def stopService(self):
        service.Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
