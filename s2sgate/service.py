# -*- test-case-name: tests.test_service -*-
"""
The gateway as one Twisted service, wired from one L{Config}:

  c2s server --component--> Router --> OutboundPool --s2s--> remote servers
  c2s server <--component-- Router <-- InboundStream <-s2s-- remote servers
"""

from twisted.application import service
from twisted.internet.endpoints import HostnameEndpoint, serverFromString
from twisted.logger import Logger

from s2sgate.component import ComponentLink
from s2sgate.dialback import DialbackKeys
from s2sgate.inbound import InboundFactory
from s2sgate.outbound import OutboundPool
from s2sgate.policy import Policy
from s2sgate.resolver import S2SResolver
from s2sgate.router import Router


class ListenerService(service.Service):
    """Listen on one endpoint string; failing to bind stops start-up loudly."""

    log = Logger()

    def __init__(self, reactor, description, factory):
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.port = None

    def startService(self):
        service.Service.startService(self)
        endpoint = serverFromString(self.reactor, self.description)
        d = endpoint.listen(self.factory)

        def listening(port):
            self.port = port
            self.log.info("s2s listening on {endpoint}", endpoint=self.description,
                          event="listen")

        def failed(f):
            self.log.critical("cannot listen on {endpoint}: {error}", endpoint=self.description,
                              error=f.getErrorMessage())
            if self.reactor.running:
                self.reactor.stop()

        d.addCallbacks(listening, failed)
        self._listening = d

    def stopService(self):
        service.Service.stopService(self)
        if self.port is not None:
            return self.port.stopListening()


class GatewayService(service.MultiService):
    """Everything one s2sgate process runs."""

    log = Logger()

    def __init__(self, config, reactor=None, resolver=None, applyLogLevel=False):
        service.MultiService.__init__(self)
        self.applyLogLevel = applyLogLevel
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = self.clock = reactor
        s = config.s2s
        self.keys = DialbackKeys(s.shared)
        self.policy = Policy(config)
        self.router = Router(config, policy=self.policy)
        if resolver is None:
            overrides = {a.host: (a.ip_address, a.port) for a in s.address}
            resolver = S2SResolver(reactor, timeout=s.dns.timeout, retries=s.dns.retries,
                                   nameservers=s.dns.nameservers, port=s.outgoing.port,
                                   ip_versions=s.outgoing.ip_versions, overrides=overrides)
        self.resolver = resolver
        self.pool = OutboundPool(config, reactor, resolver, self.router, self.keys)
        self.router.outbound = self.pool
        self.inboundStreams = set()
        c = config.component
        endpoint = HostnameEndpoint(reactor, c.host, c.port, timeout=10)
        self.link = ComponentLink(c, reactor, endpoint.connect, onStanza=self.router.fromLocal,
                                  onBounce=self.router.bounceFromLocalSide,
                                  maxStanzaBytes=s.stanza_size_limit)
        self.router.toLocal = self.link.send
        self.link.setServiceParent(self)
        self.listeners = []
        for description in s.listen:
            listener = ListenerService(reactor, description, InboundFactory(self))
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def startService(self):
        if self.applyLogLevel:
            from s2sgate.logsetup import applyLevel
            applyLevel(self.config.log.level)
        self.log.info("s2sgate starting for {domains} (config {path})",
                      domains=", ".join(self.config.local_domains), path=self.config.path)
        service.MultiService.startService(self)

    def stopService(self):
        self.pool.closeAll()
        for stream in list(self.inboundStreams):
            stream.closeStream(wait=1)
        return service.MultiService.stopService(self)
