# -*- test-case-name: tests.test_service -*-
"""
The gateway as one Twisted service, wired from one L{Config}:

  c2s server --component--> Router --> OutboundPool --s2s--> remote servers
  c2s server <--component-- Router <-- InboundStream <-s2s-- remote servers

L{GatewayService.reload} re-reads the file: policies, certificates and
limits apply to new streams at once; established streams keep what they
negotiated; changes that need a restart are reported as such.
"""

import signal
from dataclasses import dataclass

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, serverFromString
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from s2sgate.config import ConfigError, load_config
from s2sgate.gateway.component import ComponentLink
from s2sgate.gateway.router import Router
from s2sgate.gateway.runtime import Current, Runtime
from s2sgate.interfaces import IResolver
from s2sgate.net.connector import Connector
from s2sgate.net.dnssec import AuthenticatedLookup
from s2sgate.net.resolver import S2SResolver
from s2sgate.net.tls import StartTLSFactory, WriteThroughTLSFactory
from s2sgate.ops.metrics import Metrics
from s2sgate.s2s.failures import FailureLog
from s2sgate.s2s.guard import LogLimiter
from s2sgate.s2s.inbound import InboundFactory
from s2sgate.s2s.outbound import OutboundPool
from s2sgate.s2s.sessions import SessionTable
from s2sgate.s2s.verify import Verifier
from s2sgate.xmpp.domain import normalize
from s2sgate.xmpp.stream import WriteBatch

# Settings read once at start: changing them needs a restart.
RESTART_KEYS = (
    ("local_domains", lambda c: c.local_domains),
    ("component", lambda c: c.component),
    ("s2s.outgoing.port", lambda c: c.s2s.outgoing.port),
    ("s2s.outgoing.ip_versions", lambda c: c.s2s.outgoing.ip_versions),
    ("s2s.outgoing.connection_timeout", lambda c: c.s2s.outgoing.connection_timeout),
    ("s2s.outgoing.connection_attempt_delay",
     lambda c: c.s2s.outgoing.connection_attempt_delay),
    ("log.format", lambda c: c.log.format),
    ("s2s.listen", lambda c: c.s2s.listen),
    ("s2s.direct_tls_listen", lambda c: c.s2s.direct_tls_listen),
    ("s2s.dns", lambda c: c.s2s.dns),
    ("s2s.address", lambda c: c.s2s.address),
    ("s2s.shared", lambda c: c.s2s.shared),
    ("admin.listen", lambda c: c.admin.listen),
)


def buildTLS(config):
    """The TLS contexts for C{config}, or None when TLS is off; raises ConfigError."""
    s = config.s2s
    if s.use_starttls == "false" and not s.direct_tls_listen:
        return None
    from s2sgate.auth.tls import TLSContexts, TLSSetupError
    try:
        return TLSContexts(s, config.local_domains)
    except TLSSetupError as e:
        raise ConfigError(config.path, e.key, e.message,
                          "a readable PEM file with the certificate, its chain and the key") from None


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
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


@dataclass(frozen=True)
class Connected:
    """What L{GatewayService.connect} did: the session, whether it existed, its steps."""

    session: dict
    reused: bool
    trace: list


class GatewayService(service.MultiService):
    """
    Everything one s2sgate process runs, built in the order the data flows.

    @param resolver: an L{IResolver} (tests); the configured one otherwise.
    @param connector: an L{IConnector} (tests); the resolver's otherwise.
    @param tls: TLS contexts already built from this config (twistd checks
        them before start-up); built here otherwise.
    @param componentLink: C{(onStanza, onBounce) -> IComponentLink}, a
        service (tests); the XEP-0114 L{ComponentLink} otherwise.
    @param features: C{steps}, C{offers}, ... to register instead of
        L{s2sgate.features}' defaults (see L{Runtime.build}).
    """

    log = Logger()

    def __init__(self, config, reactor=None, resolver=None, applyLogLevel=False,
                 handleSignals=False, tls=None, connector=None, componentLink=None,
                 features=None):
        service.MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.applyLogLevel = applyLogLevel
        self.handleSignals = handleSignals
        self.startConfig = config
        self.reactor = reactor
        s = config.s2s
        self.metrics = Metrics()
        self.current = Current(Runtime.build(
            config, tls=tls if tls is not None else buildTLS(config), **(features or {})))
        # One write batch for all streams: a chunk read from one stream
        # becomes one write per stream it touches.
        self.batch = WriteBatch()
        self.sessionTable = SessionTable()
        # Outbound attempts and dialback verify legs that failed: what
        # operators read, in one place.
        self.failures = FailureLog(reactor)
        # The lines a remote peer can make us repeat, rate-limited together.
        self.peerLog = LogLimiter(reactor)
        if connector is None:
            if resolver is None:
                overrides = {a.host: (a.ip_address, a.port) for a in s.address}
                resolver = S2SResolver(reactor, timeout=s.dns.timeout, retries=s.dns.retries,
                                       nameservers=s.dns.nameservers, port=s.outgoing.port,
                                       ip_versions=s.outgoing.ip_versions, overrides=overrides,
                                       dnssec=dnssecLookup(reactor, s))
            connector = Connector(reactor, TimedResolver(resolver, reactor, self.metrics),
                                  timeout=s.outgoing.connection_timeout,
                                  attemptDelay=s.outgoing.connection_attempt_delay)
        self.connector = connector
        if componentLink is None:
            c = config.component
            endpoint = HostnameEndpoint(reactor, c.host, c.port, timeout=10)

            def componentLink(onStanza, onBounce):
                return ComponentLink(c, reactor, endpoint.connect, onStanza=onStanza,
                                     onBounce=onBounce, maxStanzaBytes=s.stanza_size_limit,
                                     metrics=self.metrics, batch=self.batch,
                                     inbound=self.sessionTable,
                                     probeTo=config.local_domains[0],
                                     closeWait=max(s.shutdown_timeout / 3, 0.1))
        self.router = Router(
            self.current, metrics=self.metrics,
            outbound=lambda bounce, deliver: OutboundPool(
                reactor, self.current, connector, self.sessionTable, bounce, deliver,
                batch=self.batch, metrics=self.metrics, failures=self.failures),
            local=componentLink)
        self.pool = self.router.outbound
        self.link = self.router.local
        self.link.setServiceParent(self)
        self.verifier = Verifier(reactor, connector, self.current, batch=self.batch,
                                 metrics=self.metrics, failures=self.failures)
        self.listeners = []
        for description in s.listen:
            self._listen(description, StartTLSFactory(self.inboundFactory(), isClient=False))
        for description in s.direct_tls_listen:
            # XEP-0368: TLS from the first byte, certificate chosen by SNI.
            factory = WriteThroughTLSFactory(_DirectTLSCreator(self.current), False,
                                             self.inboundFactory(directTLS=True))
            self._listen(description, factory)

        self.metrics.watch(self)
        self.admin = None
        if config.admin.listen:
            from s2sgate.ops.admin import AdminService
            self.admin = AdminService(self)
            self.admin.setServiceParent(self)

    @property
    def config(self):
        """The configuration in use (the last one loaded)."""
        return self.current.runtime.config

    @property
    def clock(self):
        return self.reactor

    @property
    def tls(self):
        return self.current.runtime.tls

    def inboundFactory(self, directTLS=False):
        """The factory of this gateway's inbound streams (its listeners use it)."""
        return InboundFactory(self.reactor, self.current, self.router, self.verifier,
                              self.sessionTable, directTLS=directTLS, peerLog=self.peerLog,
                              batch=self.batch, metrics=self.metrics)

    def _listen(self, description, factory):
        listener = ListenerService(self.reactor, description, factory)
        listener.setServiceParent(self)
        self.listeners.append(listener)

    def startService(self):
        if self.applyLogLevel:
            from s2sgate.ops import logsetup
            logsetup.apply(self.config.log)
        if self.handleSignals:
            signal.signal(signal.SIGHUP,
                          lambda *a: self.reactor.callFromThread(self._reloadFromSignal))
        self.log.info("s2sgate starting for {domains} (config {path})",
                      domains=", ".join(self.config.local_domains), path=self.config.path)
        service.MultiService.startService(self)

    def stopService(self):
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        """
        Stop so that nothing the c2s server handed us is lost and another
        gateway process can take over soon:

          1. listeners (peers connect to the other SRV targets), then inbound
             streams (what their peers sent before our closing tag is
             delivered), a third of C{s2s.shutdown_timeout} at most;
          2. outbound queues and acks get until two thirds; what still waits
             for a connection or an ack then is bounced, "the gateway is
             shutting down", while the component link can carry the bounce;
          3. the component link closes the XEP-0114 way: the c2s server sees
             it go and routes to another component (or bounces itself); what
             it wrote before it saw our closing tag is still sent on, on
             outbound streams that are still open;
          4. outbound streams get what is left of the timeout for their acks,
             then close; a peer that answers our closing tag has handled
             everything.  Only what is left then is lost, and counted.
        """
        clock = self.reactor
        timeout = self.config.s2s.shutdown_timeout
        start = clock.seconds()
        deadline = start + timeout
        self.log.info("s2sgate stopping: draining for up to {timeout} s", timeout=timeout,
                      event="shutdown.start")
        await defer.gatherResults([defer.maybeDeferred(listener.stopService)
                                   for listener in self.listeners], consumeErrors=True)
        inboundUntil = start + timeout / 3
        for stream in self.sessionTable.streams("in"):
            stream.closeStream(wait=max(inboundUntil - clock.seconds(), 0))
        await self._until(lambda: not self.sessionTable.streams("in"), inboundUntil)
        ackedBefore, writtenBefore = self.pool.deliveryCounts()
        await self._until(lambda: not self.pool.busy(), start + 2 * timeout / 3)
        bounced = self.pool.bounceLeft("the gateway is shutting down")
        await defer.maybeDeferred(self.link.stopService)
        await self._until(lambda: not self.pool.busy(), deadline)
        acked, written = self.pool.deliveryCounts()
        lost = self.pool.closeAll(wait=max(deadline - clock.seconds(), 0.1), stopping=True)
        await self._until(lambda: not self.sessionTable.streams("out"), deadline + 0.2)
        lost += self.link.undeliverable
        self.log.info("s2sgate stopped after {seconds:.2f} s: {acked} stanza(s) acknowledged by "
                      "peers meanwhile, {written} written to peers without acks, {bounced} "
                      "bounced (the gateway is shutting down), {lost} lost",
                      seconds=clock.seconds() - start, acked=acked - ackedBefore,
                      written=written - writtenBefore, bounced=bounced, lost=lost,
                      event="shutdown.done")
        await defer.maybeDeferred(service.MultiService.stopService, self)

    async def _until(self, done, deadline, step=0.02):
        while not done() and self.reactor.seconds() < deadline:
            await task.deferLater(self.reactor, min(step, max(deadline - self.reactor.seconds(), 0)))

    # what operators see (admin API, status page, CLI, metrics)

    def sessions(self):
        """One dict per s2s stream, inbound and outbound, for operators."""
        return self.sessionTable.describe(queued=self.pool.queued)

    def ourCertificates(self):
        """C{(local domain, LocalCertificate or None)} for each local domain, as presented now."""
        tls = self.tls
        return [(d, tls.certificateFor(d) if tls is not None else None)
                for d in self.config.local_domains]

    def failureLog(self):
        """The recent failed outbound attempts and verify legs, newest first, with their steps."""
        return list(reversed(self.failures))

    def linkState(self):
        c = self.config.component
        return {"jid": c.jid, "host": c.host, "port": c.port, "state": self.link.state,
                "buffered": len(self.link.buffer),
                "buffered_bytes": self.link.bufferBytes,
                "backlog_bytes": self.link.stream.backlog if self.link.stream else 0,
                "inbound_paused": self.link.throttled,
                "inbound_paused_times": self.link.throttledCount,
                "problem": self.link.lastProblem[1] if self.link.lastProblem else None,
                # The other gateway processes (their own links: s2sgate sessions --all).
                "peers": list(self.config.admin.peers)}

    async def connect(self, local, remote):
        """
        Open and authenticate the outbound stream (local, remote) now.
        Raises ValueError (not a local / remote domain), PermissionError
        (policy) or L{ConnectFailed}.
        """
        local, remote = normalize(local), normalize(remote)
        runtime = self.current.runtime
        if not runtime.isLocal(local):
            raise ValueError(f"{local} is not one of local_domains "
                             f"({', '.join(runtime.config.local_domains)})")
        if runtime.isLocal(remote) or remote == runtime.config.component.jid:
            raise ValueError(f"{remote} is served here; connect to a remote domain")
        ok, _, text = runtime.policy.check(local, remote)
        if not ok:
            raise PermissionError(text)
        reused = self.sessionTable.outgoing(local, remote) is not None
        stream = await self.pool.connectNow(local, remote)
        session = next(s for s in self.sessions()
                       if s["direction"] == "out" and s["stream_id"] == stream.streamId)
        return Connected(session, reused, list(stream.trace))

    def close(self, remote):
        """Close every stream with C{remote}; returns how many."""
        streams = self.sessionTable.withPeer(normalize(remote))
        for stream in streams:
            stream.closeStream()
        return len(streams)

    def _reloadFromSignal(self):
        """SIGHUP: reload; a refused file is already logged in one line."""
        try:
            self.reload()
        except ConfigError:
            pass
        except Exception as e:
            self.log.error("reload failed, still running on the previous config: {error}",
                           error=f"{e.__class__.__name__}: {e}", event="reload.failed")

    def reload(self):
        """
        Re-read the config file.  Returns C{(applied, needsRestart)} lists of
        keys, or raises L{ConfigError} (and keeps running on the old config).
        """
        try:
            new = load_config(self.config.path)
            tls = buildTLS(new)
        except ConfigError as e:
            self.log.error("reload refused, still running on the previous config: {error}",
                           error=str(e), event="reload.failed")
            raise
        # Compare with what the process started with: that is what runs.
        needsRestart = [key for key, get in RESTART_KEYS if get(self.startConfig) != get(new)]
        old = self.current.runtime
        if tls is None and old.tls is not None:
            # TLS switched off, but listeners and streams started with it
            # keep their contexts; the requirements stop new STARTTLS at once.
            tls = old.tls
        self.current.swap(old.reloaded(new, tls))
        if self.applyLogLevel:
            from s2sgate.ops.logsetup import applyLevel
            applyLevel(new.log.level)
        self.log.info("configuration reloaded from {path}; new streams use it", path=new.path,
                      event="reload.done")
        if needsRestart:
            self.log.warn("these settings changed but only take effect after a restart: {keys}",
                          keys=", ".join(needsRestart), event="reload.needs_restart")
        return needsRestart


def dnssecLookup(reactor, s2s):
    """The AD-bit lookups of DANE, or None when DANE is off (only the configured resolvers)."""
    if s2s.dane == "off" and not s2s.dane_domains:
        return None
    return AuthenticatedLookup(reactor, s2s.dns.nameservers,
                               (s2s.dns.timeout,) * (s2s.dns.retries + 1))


@implementer(IResolver)
class TimedResolver:
    """Time every DNS step for the metrics; otherwise the wrapped resolver."""

    def __init__(self, resolver, clock, metrics):
        self._resolver = resolver
        self._clock = clock
        self._metrics = metrics

    async def targets(self, domain, directTLS=False):
        start = self._clock.seconds()
        try:
            return await self._resolver.targets(domain, directTLS=directTLS)
        finally:
            self._metrics.dnsTime(self._clock.seconds() - start)

    async def addresses(self, host, port):
        start = self._clock.seconds()
        try:
            return await self._resolver.addresses(host, port)
        finally:
            self._metrics.dnsTime(self._clock.seconds() - start)

    async def tlsa(self, target):
        return await self._resolver.tlsa(target)


@implementer(IOpenSSLServerConnectionCreator)
class _DirectTLSCreator:
    """Ask the current runtime's TLS contexts at each connection, so reloads apply."""

    def __init__(self, current):
        self.current = current

    def serverConnectionForTLS(self, tlsProtocol):
        creator = self.current.runtime.tls.directTLSServerCreator()
        return creator.serverConnectionForTLS(tlsProtocol)

