# -*- test-case-name: tests.test_service -*-
"""
The gateway as one Twisted service: the component link, the router and
(once built) the s2s sides, wired together from one L{Config}.
"""

from twisted.application import service
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger

from s2sgate.component import ComponentLink
from s2sgate.router import Router


class GatewayService(service.MultiService):
    """Everything one s2sgate process runs."""

    log = Logger()

    def __init__(self, config, reactor=None):
        service.MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.router = Router(config)
        c = config.component
        endpoint = HostnameEndpoint(reactor, c.host, c.port, timeout=10)
        self.link = ComponentLink(c, reactor, endpoint.connect, onStanza=self.router.fromLocal,
                                  onBounce=self.router.bounceFromLocalSide,
                                  maxStanzaBytes=config.s2s.stanza_size_limit)
        self.router.toLocal = self.link.send
        self.link.setServiceParent(self)

    def startService(self):
        self.log.info("s2sgate starting for {domains} (config {path})",
                      domains=", ".join(self.config.local_domains), path=self.config.path)
        service.MultiService.startService(self)
