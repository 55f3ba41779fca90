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

from twisted.application import service
from twisted.internet.endpoints import HostnameEndpoint, serverFromString
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from s2sgate.gateway.component import ComponentLink
from s2sgate.config import ConfigError, load_config
from s2sgate.auth.dialback import DialbackKeys
from s2sgate.xmpp.domain import normalize
from s2sgate.s2s.inbound import InboundFactory
from s2sgate.ops.metrics import Metrics
from s2sgate.s2s.outbound import OutboundPool
from s2sgate.gateway.policy import Policy
from s2sgate.net.resolver import S2SResolver
from s2sgate.gateway.router import Router
from s2sgate.auth.requirements import SecurityPolicy
from s2sgate.xmpp.stream import WriteBatch

# Settings read once at start: changing them needs a restart.
RESTART_KEYS = (
    ("local_domains", lambda c: c.local_domains),
    ("component", lambda c: c.component),
    ("s2s.outgoing.port", lambda c: c.s2s.outgoing.port),
    ("s2s.outgoing.ip_versions", lambda c: c.s2s.outgoing.ip_versions),
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
        if self.port is not None:
            return self.port.stopListening()


class GatewayService(service.MultiService):
    """Everything one s2sgate process runs."""

    log = Logger()

    def __init__(self, config, reactor=None, resolver=None, applyLogLevel=False,
                 handleSignals=False, tls=None):
        service.MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.applyLogLevel = applyLogLevel
        self.handleSignals = handleSignals
        self.config = self.startConfig = config
        self.reactor = self.clock = reactor
        s = config.s2s
        self.metrics = Metrics()
        self.keys = DialbackKeys(s.shared)
        self.policy = Policy(config)
        self.security = SecurityPolicy(s)
        # tls: contexts already built from this config (twistd checks them
        # before start-up); built here otherwise.
        self.tls = tls if tls is not None else buildTLS(config)
        self.router = Router(config, policy=self.policy, metrics=self.metrics)
        if resolver is None:
            overrides = {a.host: (a.ip_address, a.port) for a in s.address}
            resolver = S2SResolver(reactor, timeout=s.dns.timeout, retries=s.dns.retries,
                                   nameservers=s.dns.nameservers, port=s.outgoing.port,
                                   ip_versions=s.outgoing.ip_versions, overrides=overrides)
        self.resolver = _TimedResolver(resolver, reactor, self.metrics)
        self.pool = OutboundPool(config, reactor, self.resolver, self.router, self.keys,
                                 security=self.security, tls=self.tls, metrics=self.metrics)
        self.router.outbound = self.pool
        self.inboundStreams = set()
        c = config.component
        endpoint = HostnameEndpoint(reactor, c.host, c.port, timeout=10)
        self.link = ComponentLink(c, reactor, endpoint.connect, onStanza=self.router.fromLocal,
                                  onBounce=self.router.bounceFromLocalSide,
                                  maxStanzaBytes=s.stanza_size_limit, metrics=self.metrics)
        self.router.toLocal = self.link.send
        self.link.setServiceParent(self)
        # One write batch for all streams: a chunk read from one stream
        # becomes one write per stream it touches.
        self.batch = self.pool.batch = self.link.batch = WriteBatch()
        self.listeners = []
        for description in s.listen:
            self._listen(description, InboundFactory(self))
        for description in s.direct_tls_listen:
            # XEP-0368: TLS from the first byte, certificate chosen by SNI.
            factory = TLSMemoryBIOFactory(_DirectTLSCreator(self), False,
                                          InboundFactory(self, directTLS=True))
            self._listen(description, factory)

        self.metrics.watch(self)
        self.admin = None
        if config.admin.listen:
            from s2sgate.ops.admin import AdminService
            self.admin = AdminService(self)
            self.admin.setServiceParent(self)

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
        self.pool.closeAll()
        for stream in list(self.inboundStreams):
            stream.closeStream(wait=1)
        return service.MultiService.stopService(self)

    # what operators see (admin API, status page, CLI, metrics)

    def sessions(self):
        """One dict per s2s stream, inbound and outbound, for operators."""
        result = []
        for link in self.pool.links.values():
            stream = link.stream
            if stream is None or stream.closed or stream.closing:
                continue
            result.append(_session("out", stream, stream.local, stream.remote,
                                   [[stream.local, stream.remote]], stream.certificate,
                                   stanzasIn=0, stanzasOut=stream.stanzasOut,
                                   queue=len(link.queue)))
        for stream in self.inboundStreams:
            if stream.closing or stream.closed:
                continue
            remote = stream.remoteHeader or next((r for r, _ in stream.pairs), None)
            result.append(_session("in", stream, stream.local, remote,
                                   sorted([r, l] for r, l in stream.pairs),
                                   stream.certificates.get(remote),
                                   stanzasIn=stream.stanzasIn, stanzasOut=0, queue=0))
        return result

    def failureLog(self):
        """The recent failed outbound attempts, newest first, with their steps."""
        return list(reversed(self.pool.failures))

    def linkState(self):
        c = self.config.component
        return {"jid": c.jid, "host": c.host, "port": c.port, "state": self.link.state,
                "buffered": len(self.link.buffer),
                "problem": self.link.lastProblem[1] if self.link.lastProblem else None}

    async def connect(self, local, remote):
        """Open and authenticate the outbound stream (local, remote) now."""
        local, remote = normalize(local), normalize(remote)
        if not self.router.isLocal(local):
            raise ValueError(f"{local} is not one of local_domains")
        if self.router.isLocal(remote):
            raise ValueError(f"{remote} is a local domain")
        ok, _, text = self.policy.check(local, remote)
        if not ok:
            raise PermissionError(text)
        stream = await self.pool.connectNow(local, remote)
        return next(s for s in self.sessions()
                    if s["direction"] == "out" and s["stream_id"] == stream.streamId)

    def close(self, remote):
        """Close every stream with C{remote}; returns how many."""
        remote = normalize(remote)
        closed = 0
        for (local, other), link in list(self.pool.links.items()):
            if other == remote and link.stream is not None:
                link.stream.closeStream()
                closed += 1
        for stream in list(self.inboundStreams):
            if stream.remoteHeader == remote or any(r == remote for r, _ in stream.pairs):
                stream.closeStream()
                closed += 1
        return closed

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
        self.config = new
        self.policy = self.router.policy = Policy(new)
        self.security = self.pool.security = SecurityPolicy(new.s2s)
        if tls is not None or self.tls is None:
            self.tls = self.pool.tls = tls
        # else: TLS switched off, but listeners and streams started with it
        # keep their contexts; the policy stops new STARTTLS at once.
        self.pool.config = new
        if self.applyLogLevel:
            from s2sgate.ops.logsetup import applyLevel
            applyLevel(new.log.level)
        self.log.info("configuration reloaded from {path}; new streams use it", path=new.path,
                      event="reload.done")
        if needsRestart:
            self.log.warn("these settings changed but only take effect after a restart: {keys}",
                          keys=", ".join(needsRestart), event="reload.needs_restart")
        return needsRestart


def _session(direction, stream, local, remote, pairs, certificate, *, stanzasIn, stanzasOut,
             queue):
    return {
        "direction": direction, "local": local, "remote": remote, "pairs": pairs,
        "stream_id": stream.streamId, "peer": str(getattr(stream, "peerAddress", "") or ""),
        "tls": dict(stream.tlsInfo) if stream.secure else None,
        "direct_tls": bool(getattr(stream, "directTLS", False)),
        "certificate": None if certificate is None else {
            "status": certificate.status, "reason": certificate.reason,
            "names": certificate.identities.describe() if certificate.identities else ""},
        "auth": stream.authMethod, "since": stream.since,
        "stanzas_in": stanzasIn, "stanzas_out": stanzasOut,
        "bytes_in": stream.bytesIn, "bytes_out": stream.bytesOut, "queue": queue,
    }


class _TimedResolver:
    """Time every DNS step for the metrics; otherwise the wrapped resolver."""

    def __init__(self, resolver, clock, metrics):
        self._resolver = resolver
        self._clock = clock
        self._metrics = metrics

    def __getattr__(self, name):
        return getattr(self._resolver, name)

    async def targets(self, *args, **kwargs):
        start = self._clock.seconds()
        try:
            return await self._resolver.targets(*args, **kwargs)
        finally:
            self._metrics.dnsTime(self._clock.seconds() - start)

    async def addresses(self, *args, **kwargs):
        start = self._clock.seconds()
        try:
            return await self._resolver.addresses(*args, **kwargs)
        finally:
            self._metrics.dnsTime(self._clock.seconds() - start)


@implementer(IOpenSSLServerConnectionCreator)
class _DirectTLSCreator:
    """Ask the gateway's current TLS contexts at each connection, so reloads apply."""

    def __init__(self, gateway):
        self.gateway = gateway

    def serverConnectionForTLS(self, tlsProtocol):
        return self.gateway.tls.directTLSServerCreator().serverConnectionForTLS(tlsProtocol)

