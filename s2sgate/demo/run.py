# -*- test-case-name: tests.test_demo -*-
"""
C{s2sgate demo}: two federated sites in one process, on loopback.

  alice@alpha.test                                             bob@beta.test
  room@conference.alpha.test
     c2s stand-in ──XEP-0114── s2sgate ══s2s══ s2sgate ──XEP-0114── c2s stand-in
      (alpha.test,                 STARTTLS + SASL EXTERNAL           (beta.test)
       conference.alpha.test)      (conference pair: dialback, same stream)

Each site is a c2s stand-in (L{s2sgate.demo.c2s}) with a full
L{GatewayService} in front of it.  A CA made at start (L{s2sgate.demo.pki})
issues one certificate per site; alpha's names alpha.test only, so the
pair (conference.alpha.test, beta.test) cannot use SASL EXTERNAL: it joins
alpha.test's stream to beta.test with dialback (XEP-0220 multiplexing), and
beta verifies the key by calling alpha back.  Each gateway reaches the other
through C{s2s.address} overrides: no DNS.

The run: component links up, messages both ways (each first message opens
and authenticates its stream, told step by step), the table of sessions, a
burst of messages from alice to bob, timed from the first send to the last
receipt.  Every message must arrive exactly once: a bounce, a duplicate, a
stray message or the overall timeout ends the demo with one line saying
why, and a non-zero exit status.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field

from twisted.internet import defer, task
from twisted.internet.protocol import Factory
from twisted.logger import globalLogPublisher

from s2sgate.config import load_config
from s2sgate.demo.c2s import C2SStandIn
from s2sgate.demo.narrate import Narrator, sessionTable
from s2sgate.demo.pki import DemoCA
from s2sgate.timers import cancel

__all__ = ["DemoOptions", "DemoFailed", "Demo", "EXIT_OK", "EXIT_FAILED"]

EXIT_OK = 0
EXIT_FAILED = 1
LOOPBACK = "127.0.0.1"


@dataclass
class DemoOptions:
    burst: int = 1000
    timeout: float = 60.0
    keepRunning: bool = False
    verbose: bool = False
    bodySize: int = 250
    command: str = "s2sgate"          # how the person runs s2sgate (in the printed commands)
    chatInterval: float = 2.0         # --keep-running: one message each way this often
    reportInterval: float = 5.0       # --keep-running: a line with the counts this often
    chatTimeout: float = 10.0         # a chat message not delivered by then fails the run


class DemoFailed(Exception):
    """The demo did not deliver everything; C{str()} is the one-line reason."""


@dataclass
class Site:
    name: str
    domains: list
    certDomain: str
    standIn: C2SStandIn = None
    gateway: object = None
    listener: object = None       # our s2s listening port
    inbound: object = None        # the _LateFactory behind it
    config: object = None
    configPath: str = ""
    adminPort: int = 0
    entities: dict = field(default_factory=dict)

    @property
    def adminURL(self):
        return f"http://{LOOPBACK}:{self.adminPort}/"

    @property
    def s2sPort(self):
        return self.listener.getHost().port

    @property
    def componentPort(self):
        return self.standIn.port.getHost().port


class _LateFactory(Factory):
    """
    The s2s listener opens before its gateway exists: each gateway's
    C{s2s.address} needs the other's port.  Connections go to the gateway's
    own L{InboundFactory} once it is set.
    """

    target = None
    noisy = False

    def buildProtocol(self, addr):
        return self.target.buildProtocol(addr) if self.target is not None else None


class _Series:
    """C{n} messages with ids C{prefix}0000000 ... for one recipient: a bit each."""

    def __init__(self, prefix, n, recipient):
        self.prefix = prefix
        self.recipient = recipient
        self.seen = bytearray(n)
        self.missing = n
        self.done = defer.Deferred()
        if n == 0:
            self.done.callback(None)

    def index(self, stanzaId):
        if not stanzaId.startswith(self.prefix):
            return None
        try:
            i = int(stanzaId[len(self.prefix):])
        except ValueError:
            return None
        return i if 0 <= i < len(self.seen) else None


class _Deliveries:
    """
    The messages the demo expects; checks that each arrives exactly once,
    at the right entity, and that nothing else (a bounce above all) arrives.
    """

    def __init__(self, fail):
        self.fail = fail
        self.single = {}       # id -> [recipient, arrived?, Deferred]
        self.series = []
        self.count = 0         # expected messages that arrived

    def expect(self, stanzaId, recipient):
        """A Deferred that fires when C{recipient} got message C{stanzaId}."""
        d = defer.Deferred()
        self.single[stanzaId] = [recipient, False, d]
        return d

    def expectSeries(self, prefix, n, recipient):
        """A L{_Series}: its C{done} fires when all C{n} messages arrived."""
        series = _Series(prefix, n, recipient)
        self.series.append(series)
        return series

    def observe(self, entity, stanza):
        stanzaId = stanza.getAttribute("id") or ""
        sender = stanza.getAttribute("from")
        if stanza.getAttribute("type") == "error":
            self.fail(f"bounce: {entity.jid} received an error for message {stanzaId!r} "
                      f"from {sender}: {_describeError(stanza)}")
            return
        if stanza.name != "message":
            return      # presence or iq: not part of the count
        for series in self.series:
            i = series.index(stanzaId)
            if i is not None:
                if self._arrived(entity, stanzaId, sender, series.recipient, series.seen[i]):
                    series.seen[i] = 1
                    series.missing -= 1
                    if series.missing == 0:
                        series.done.callback(None)
                return
        entry = self.single.get(stanzaId)
        if entry is None:
            self.fail(f"unexpected message {stanzaId!r} from {sender} at {entity.jid}")
            return
        if self._arrived(entity, stanzaId, sender, entry[0], entry[1]):
            entry[1] = True
            entry[2].callback(None)

    def _arrived(self, entity, stanzaId, sender, recipient, already):
        """Count an expected message; False (and the run fails) if it is misplaced."""
        if recipient != entity.jid:
            self.fail(f"message {stanzaId!r} for {recipient} was delivered to {entity.jid}")
            return False
        if already:
            self.fail(f"duplicate: message {stanzaId!r} from {sender} arrived twice "
                      f"at {entity.jid}")
            return False
        self.count += 1
        return True


def _describeError(stanza):
    error = stanza.error
    if error is None:
        return "no <error/> element"
    condition = next((c.name for c in error.elements() if c.name != "text"), "?")
    text = next((str(c) for c in error.elements() if c.name == "text"), "")
    return condition + (f" ({text})" if text else "")


def _tomlValue(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)        # a JSON string is a TOML basic string
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_tomlValue(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_tomlValue(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml(data, prefix=""):
    """The small subset of TOML the demo's configs need: tables, scalars, lists."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_tomlValue(value)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{prefix}{key}"
        text += f"\n[{name}]\n" + toml(value, prefix=name + ".")
    return text


def _freePort():
    """
    A loopback TCP port free right now, for an C{[admin] listen} written into
    a config file (C{s2sgate sessions --config} reads it back, so port 0 will
    not do).  Another process could take it before the gateway binds it; the
    gateway then stops with one line saying so, and a second run picks another.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _body(size, n):
    head = f"message {n}: "
    filler = "The quick brown fox jumps over the lazy dog. "
    text = head + filler * (size // len(filler) + 1)
    return text[:size]


class _Chat:
    """
    The steady chat of C{--keep-running}: alice and bob each send one
    message every C{chatInterval} (so the status pages and counters move),
    and a line every C{reportInterval} says how many arrived.  Each message
    is expected exactly once, like the rest of the demo; one that has not
    arrived after C{chatTimeout} fails the run.
    """

    def __init__(self, demo):
        self.demo = demo
        self.options = demo.options
        self.sent = 0
        self.arrived = {"alice@alpha.test": 0, "bob@beta.test": 0}
        self._calls = []
        self._pending = set()
        self.stopped = False

    def start(self):
        for interval, what in ((self.options.chatInterval, self.send),
                               (self.options.reportInterval, self.report)):
            call = task.LoopingCall(what)
            call.clock = self.demo.reactor
            call.start(interval, now=False)
            self._calls.append(call)

    def stop(self):
        self.stopped = True
        for call in self._calls:
            if call.running:
                call.stop()
        self._calls = []
        for d in list(self._pending):
            d.cancel()

    def send(self):
        demo = self.demo
        alice = demo.alpha.entities["alice@alpha.test"]
        bob = demo.beta.entities["bob@beta.test"]
        n = self.sent // 2
        for sender, to in ((alice, "bob@beta.test"), (bob, "alice@alpha.test")):
            stanzaId = f"chat-{sender.jid.split('@')[0]}-{n}"
            d = demo.deliveries.expect(stanzaId, to)
            self._pending.add(d)
            d.addTimeout(self.options.chatTimeout, demo.reactor)
            d.addBoth(lambda r, d=d: (self._pending.discard(d), r)[1])
            d.addCallbacks(lambda _, to=to: self._arrived(to),
                           lambda f, i=stanzaId, to=to: self._late(i, to, f))
            sender.message(to, f"chat line {n} from {sender.jid}", stanzaId)
            self.sent += 1

    def _arrived(self, to):
        self.arrived[to] += 1

    def _late(self, stanzaId, to, failure):
        if not self.stopped and failure.check(defer.TimeoutError, defer.CancelledError):
            self.demo.fail(f"chat message {stanzaId!r} did not reach {to} within "
                           f"{self.options.chatTimeout:g} s")
        return None

    def report(self):
        demo = self.demo
        links = ", ".join(f"{site.name} {len(site.gateway.sessions())} s2s links"
                          for site in demo.sites)
        total = sum(self.arrived.values())
        onTheWay = len(self._pending)
        demo.say(f"chat: {total} messages delivered "
                 f"({self.arrived['bob@beta.test']} alice -> bob, "
                 f"{self.arrived['alice@alpha.test']} bob -> alice)"
                 + (f", {onTheWay} on the way" if onTheWay else "") + f"; {links}")


class Demo:
    """One run of the demo; L{run} returns the exit status."""

    def __init__(self, reactor, options, write=print, writeError=None):
        self.reactor = reactor
        self.options = options
        self.write = write
        self.writeError = writeError or write
        self.sites = [Site("alpha", ["alpha.test", "conference.alpha.test"], "alpha.test"),
                      Site("beta", ["beta.test"], "beta.test")]
        self.alpha, self.beta = self.sites
        self.narrator = Narrator(self.sites, write=write, verbose=options.verbose)
        self.reason = None
        self.phase = "starting"
        self._waiting = set()
        self._timeoutCall = None
        self._cleanup = None
        self.tempdir = None
        self.deliveries = _Deliveries(self.fail)
        self.burstRate = None
        self._series = None
        self._keepRunningDeferred = None

    # failure and waiting

    def fail(self, reason):
        """Stop the run with C{reason}: every wait in progress raises L{DemoFailed}."""
        if self.reason is not None:
            return
        self.reason = reason
        for d in list(self._waiting):
            d.errback(DemoFailed(reason))

    async def wait(self, d, phase):
        """Wait for C{d}, unless the run fails first."""
        self.phase = phase
        if self.reason is not None:
            raise DemoFailed(self.reason)
        waiter = defer.Deferred()
        self._waiting.add(waiter)

        def done(result):
            if waiter.called:
                pass
            elif isinstance(result, defer.Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
            return None

        d.addBoth(done)
        try:
            return await waiter
        finally:
            self._waiting.discard(waiter)

    def sleep(self, seconds, phase):
        return self.wait(task.deferLater(self.reactor, seconds, lambda: None), phase)

    def _timedOut(self):
        self._timeoutCall = None
        if self._series is not None:
            got = len(self._series.seen) - self._series.missing
            phase = self.phase.replace("{got}", str(got))
        else:
            phase = self.phase
        self.fail(f"timeout: {self.options.timeout:g} s passed while {phase}")

    def say(self, text, site=None):
        self.narrator.say(text, site)

    # the run

    async def run(self):
        globalLogPublisher.addObserver(self.narrator)
        shutdownTrigger = self.reactor.addSystemEventTrigger("before", "shutdown",
                                                              self._onShutdown)
        self._timeoutCall = self.reactor.callLater(self.options.timeout, self._timedOut)
        try:
            await self._setUp()
            self.phase = "exchanging the first messages"
            await self._exchange()
            self.phase = "listing the sessions"
            await self._table()
            self.phase = "running the burst"
            await self._burst()
            cancel(self._timeoutCall)
            self._timeoutCall = None
            self.write("")
            self.write("ok: every message was delivered exactly once")
            if self.options.keepRunning:
                await self._keepRunning()
            return EXIT_OK
        except DemoFailed as e:
            self.writeError(f"s2sgate demo: failed: {e}")
            return EXIT_FAILED
        except Exception as e:
            # A bug, or the machine refusing something (a port, a file): one line
            # still, the traceback with --verbose.
            if self.options.verbose:
                import traceback
                self.writeError(traceback.format_exc().rstrip())
            first = (str(e).strip().splitlines() or [""])[0]
            self.writeError(f"s2sgate demo: failed: {type(e).__name__} while {self.phase}"
                            + (f": {first}" if first else "")
                            + ("" if self.options.verbose else " (--verbose shows the traceback)"))
            return EXIT_FAILED
        finally:
            cancel(self._timeoutCall)
            if not self.options.verbose:
                # Links going down during the clean-up are no news.
                globalLogPublisher.removeObserver(self.narrator)
            await self.cleanUp()
            if self.options.keepRunning:
                self.write("stopped; temporary files removed")
            try:
                self.reactor.removeSystemEventTrigger(shutdownTrigger)
            except (ValueError, KeyError):
                pass
            globalLogPublisher.removeObserver(self.narrator)

    def _onShutdown(self):
        """Ctrl-C (or any reactor stop): end the run, then wait for the clean-up."""
        if self.phase == "keep-running":
            self._keepRunningDone()
        else:
            self.fail(f"interrupted while {self.phase}")
        return self.cleanUp()

    async def _setUp(self):
        self.phase = "setting up"
        self.write(f"s2sgate demo: two sites on {LOOPBACK}, each a c2s stand-in with s2sgate "
                   "in front; nothing leaves this machine")
        self.tempdir = tempfile.mkdtemp(prefix="s2sgate-demo-")
        ca = DemoCA(os.path.join(self.tempdir, "pki"))
        certs = {}
        for site in self.sites:
            certs[site.name] = ca.issue(site.certDomain)
        self.say(f"pki: CA made in {self.tempdir}; certificates for alpha.test and beta.test "
                 "(DNS-ID + SRV-ID; none names conference.alpha.test)")
        for site in self.sites:
            secret = secrets.token_urlsafe(16)
            site.componentSecret = secret
            site.standIn = C2SStandIn(site.name, site.domains, f"s2s.{site.certDomain}", secret)
            site.standIn.listen(self.reactor, 0, LOOPBACK)
            site.inbound = _LateFactory()
            site.listener = self.reactor.listenTCP(0, site.inbound, interface=LOOPBACK)
            self.say(f"c2s stand-in for {', '.join(site.domains)}: component port "
                     f"{LOOPBACK}:{site.componentPort}", site)
        users = {"alice@alpha.test": self.alpha, "bob@beta.test": self.beta}
        for jid, site in users.items():
            entity = site.standIn.addUser(jid)
            site.entities[jid] = entity
        room = self.alpha.standIn.addService("conference.alpha.test")
        self.alpha.entities["conference.alpha.test"] = room
        for site in self.sites:
            for entity in site.entities.values():
                entity.onStanza = (lambda e: lambda s: self.deliveries.observe(e, s))(entity)

        from s2sgate.gateway.service import GatewayService
        for site in self.sites:
            site.adminPort = _freePort()
            site.config = self._config(site, ca, certs[site.name].certfile)
            site.gateway = GatewayService(site.config, self.reactor)
            site.inbound.target = site.gateway.inboundFactory()
            self.say(f"s2sgate for {', '.join(site.domains)}: s2s on {LOOPBACK}:{site.s2sPort} "
                     "(use_starttls = required; certificate names "
                     f"{site.certDomain} only; config {site.config.path})", site)
        for site in self.sites:
            site.gateway.startService()
        await self.wait(defer.gatherResults([s.gateway.link.whenUp() for s in self.sites]),
                        "waiting for the component links")
        await self.wait(defer.gatherResults([s.gateway.admin.whenListening()
                                             for s in self.sites]),
                        "waiting for the admin listeners")

    def _config(self, site, ca, certfile):
        peers = [s for s in self.sites if s is not site]
        address = [{"host": d, "ip_address": LOOPBACK, "port": p.s2sPort}
                   for p in peers for d in p.domains]
        data = {
            "local_domains": list(site.domains),
            "component": {
                "jid": f"s2s.{site.certDomain}", "host": LOOPBACK, "port": site.componentPort,
                "secret": site.componentSecret, "max_retry_delay": 2, "auth_retry_delay": 5,
                "buffer_timeout": 30,
            },
            "s2s": {
                # The demo listens itself (see _LateFactory).
                "listen": [],
                "use_starttls": "required",
                "certfile": str(certfile),
                "cafile": str(ca.cafile),
                "shared": f"demo-dialback-secret-{site.name}",
                "address": address,
                "max_retry_delay": 2,
                "queue_limit": max(1000, self.options.burst),
                "negotiation_timeout": 15,
                "outgoing": {"connection_timeout": 5},
                # Every peer domain has an override: DNS is never asked.  Should
                # a domain slip past them, the query stays on this machine.
                "dns": {"nameservers": [f"{LOOPBACK}:53"], "timeout": 1, "retries": 0},
            },
            # The gateway's own admin API and status page, on loopback
            # (config refuses anything else without a token).
            "admin": {"listen": f"tcp:{site.adminPort}:interface={LOOPBACK}"},
            "log": {"level": "info"},
        }
        # Written out so that a person can read it (and `s2sgate config check` it)
        # while --keep-running; the gateway loads it as it would any config.
        path = site.configPath = os.path.join(self.tempdir, f"{site.name}.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"# s2sgate demo: the gateway of site {site.name}.  Its s2s listener,\n"
                    f"# {LOOPBACK}:{site.s2sPort}, was opened by the demo before the gateway\n"
                    "# existed (the peer's s2s.address needs the port): hence listen = [].\n"
                    + toml(data))
        return load_config(path)

    async def _send(self, sender, to, text, stanzaId, kind="chat", sender_jid=None):
        recipientSite = next(s for s in self.sites if to.split("@")[-1] in s.domains)
        recipient = recipientSite.entities[to]
        who = sender_jid or sender.jid
        start = time.perf_counter()
        self.say(f"{who} -> {to}: {text!r}")
        waiting = self.deliveries.expect(stanzaId, recipient.jid)
        sender.message(to, text, stanzaId, kind=kind, sender=sender_jid)
        await self.wait(waiting, f"waiting for {to} to receive {stanzaId!r} from {who}")
        self.say(f"{to} received {stanzaId!r} from {who} "
                 f"({(time.perf_counter() - start) * 1000:.0f} ms, stream set-up included)")

    async def _exchange(self):
        self.write("")
        self.write("== messages both ways (each first message opens its s2s stream)")
        alice = self.alpha.entities["alice@alpha.test"]
        bob = self.beta.entities["bob@beta.test"]
        room = self.alpha.entities["conference.alpha.test"]
        await self._send(alice, "bob@beta.test", "Hello Bob, this is Alice", "hello-1")
        await self._send(bob, "alice@alpha.test", "Hi Alice, Bob here", "hello-2")
        await self._send(room, "bob@beta.test", "Welcome to the room", "hello-3",
                         kind="groupchat", sender_jid="room@conference.alpha.test/alice")

    async def _table(self):
        # The dialback verify stream (beta asking alpha's authoritative side) is
        # closing by now; give it a moment to go so the table shows the sessions.
        for _ in range(50):
            if all(s["auth"] for site in self.sites for s in site.gateway.sessions()):
                break
            await self.sleep(0.01, "waiting for the dialback verify stream to close")
        self.write("")
        self.write("== s2s sessions")
        for line in sessionTable(self.sites):
            self.write("  " + line)

    async def _burst(self):
        n = self.options.burst
        if n <= 0:
            return
        self.write("")
        self.write(f"== burst: {n} messages alice@alpha.test -> bob@beta.test "
                   f"({self.options.bodySize}-byte bodies)")
        alice = self.alpha.entities["alice@alpha.test"]
        prefix = "burst-"
        series = self._series = self.deliveries.expectSeries(prefix, n, "bob@beta.test")
        size = self.options.bodySize
        start = time.perf_counter()
        batch = 200

        def sendBatch(first):
            if self.reason is not None:
                return
            for i in range(first, min(first + batch, n)):
                alice.message("bob@beta.test", _body(size, i), f"{prefix}{i:07d}")
            if first + batch < n:
                self.reactor.callLater(0, sendBatch, first + batch)

        sendBatch(0)
        allThere = series.done
        await self.wait(allThere, f"waiting for bob@beta.test to receive the {n} burst "
                                  "messages ({got} so far)")
        elapsed = time.perf_counter() - start
        self.burstRate = n / elapsed if elapsed > 0 else float("inf")
        self.write(f"burst: {n} messages in {elapsed:.3f} s = {self.burstRate:.0f} stanzas/s")
        # Anything arriving late -- a duplicate, a bounce -- still fails the run.
        await self.sleep(0.2, "checking that nothing arrives twice")

    async def _keepRunning(self):
        self.write("")
        self.write("== both sites keep running until Ctrl-C: look into them")
        for site in self.sites:
            self.write(f"  {site.name:<6} status page {site.adminURL}  "
                       f"({', '.join(site.domains)}; s2s {LOOPBACK}:{site.s2sPort})")
        self.write("")
        self.write("  try, in another terminal:")
        alpha, beta = self.alpha, self.beta
        cmd = self.options.command
        for line in (
                f"{cmd} sessions --config {shlex.quote(alpha.configPath)}",
                f"{cmd} failures --config {shlex.quote(alpha.configPath)}",
                f"{cmd} check beta.test --config {shlex.quote(alpha.configPath)}",
                f"{cmd} connect beta.test alpha.test --config {shlex.quote(beta.configPath)}",
                f"{cmd} sessions --config {shlex.quote(beta.configPath)} --json",
                f"curl -s {alpha.adminURL}api/sessions",
                f"curl -s {alpha.adminURL}metrics"):
            self.write(f"    $ {line}")
        self.write("")
        self.write(f"  files in {self.tempdir} (the configs, the CA); a chat between "
                   f"alice@alpha.test and bob@beta.test sends one message each way every "
                   f"{self.options.chatInterval:g} s, counted every "
                   f"{self.options.reportInterval:g} s")
        self.phase = "keep-running"
        self._keepRunningDeferred = defer.Deferred()
        chat = _Chat(self)
        chat.start()
        try:
            await self.wait(self._keepRunningDeferred, "keep-running")
        finally:
            chat.stop()

    def _keepRunningDone(self):
        d = self._keepRunningDeferred
        if d is not None and not d.called:
            d.callback(None)

    # clean-up

    def cleanUp(self):
        """Stop the gateways, listeners and stand-ins; remove the temp dir.  Idempotent."""
        if self._cleanup is None:
            self._cleanup = defer.ensureDeferred(self._cleanUp())
        d = defer.Deferred()
        self._cleanup.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    async def _cleanUp(self):
        stops = []
        for site in self.sites:
            if site.gateway is not None and site.gateway.running:
                stops.append(defer.maybeDeferred(site.gateway.stopService))
            if site.listener is not None:
                stops.append(defer.maybeDeferred(site.listener.stopListening))
        try:
            await defer.DeferredList(stops, consumeErrors=True)
            # Let the streams' closing tags go out and the connections drop.
            await task.deferLater(self.reactor, 0.1, lambda: None)
            for site in self.sites:
                if site.standIn is not None:
                    await defer.maybeDeferred(site.standIn.stop)
        finally:
            if self.tempdir is not None:
                shutil.rmtree(self.tempdir, ignore_errors=True)
