# -*- test-case-name: tests.test_demo -*-
"""
What the demo prints: the gateway's structured log events as short lines,
and the table of s2s sessions.

The gateway logs with C{twisted.logger} and names its events
(C{event="outbound.connecting"}, ...); L{Narrator} is a log observer that
turns the ones that tell the story of a link -- resolving, connecting,
TLS, authentication -- into one line each, prefixed with the time since
the demo started and the site they happened at.
"""

from __future__ import annotations

import re
import time

from twisted.logger import LogLevel, formatEvent

from s2sgate.s2s.sessions import domainsOf

__all__ = ["Narrator", "sessionTable", "sessionRows"]

# Events printed with the gateway's own message.
_PLAIN = {
    "outbound.sasl_failed", "outbound.certificate_refused", "outbound.failed",
    "inbound.established", "inbound.sasl_failed", "inbound.dialback_refused",
    "inbound.dialback_failed", "component.auth_failure", "component.network_failure",
    "component.down", "policy.refused", "c2s.component_refused", "c2s.component_down",
    "outbound.pair_asked", "outbound.pair_added", "outbound.pair_refused",
}
# Twisted's start/stop chatter about factories and ports, left out even with --verbose.
_FACTORY_NOISE = re.compile(
    r"^(Starting|Stopping) factory |starting on \d+$|^\(\w+ Port \d+ Closed\)$")
_WARNINGS = {"outbound.sasl_failed", "outbound.certificate_refused", "outbound.failed",
             "inbound.sasl_failed", "inbound.dialback_refused", "inbound.dialback_failed",
             "component.auth_failure", "policy.refused", "c2s.component_refused"}


class Narrator:
    """
    A log observer printing the demo's story.

    @param sites: objects with C{name}, C{domains} and C{gateway} (a
        L{GatewayService}, maybe still None); events are told under the
        site they came from.
    @param write: called with each line.
    @param verbose: also print every other event, formatted.
    """

    def __init__(self, sites, write=print, verbose=False, start=None):
        self.sites = sites
        self.write = write
        self.verbose = verbose
        self.start = time.perf_counter() if start is None else start
        self._connecting = set()   # (site name, remote) announced by outbound.connecting

    def say(self, text, site=None):
        elapsed = time.perf_counter() - self.start
        where = f"{site.name:<6}" if site is not None else " " * 6
        self.write(f"[{elapsed:7.3f}] {where} {text}")

    def __call__(self, event):
        try:
            self._observe(event)
        except Exception as e:  # an observer must never raise
            self.write(f"(demo narrator: cannot show an event: {e!r})")

    # which site?

    def _siteOfSource(self, source):
        for site in self.sites:
            gw = getattr(site, "gateway", None)
            if gw is None:
                continue
            if source is gw or source is gw.link or source is gw.pool \
                    or source is gw.pool.multiplexer:
                return site
            if getattr(source, "pool", None) is gw.pool:
                return site
            if getattr(source, "gateway", None) is gw:
                return site
            if getattr(source, "link", None) is gw.link:
                return site
        return None

    def _siteConnectingTo(self, domain):
        """The connector logs without a source: the site connecting is the other one."""
        others = [s for s in self.sites if domain not in s.domains]
        return others[0] if len(others) == 1 else None

    def _siteNamed(self, name):
        return next((s for s in self.sites if s.name == name), None)

    # the story

    def _observe(self, event):
        kind = event.get("event")
        source = event.get("log_source")
        namespace = event.get("log_namespace", "")
        if kind == "outbound.connecting":
            site = self._siteOfSource(source)
            self._connecting.add((getattr(site, "name", None), event["remote"]))
            self.say(f"outbound {event['local']} -> {event['remote']}: connecting", site)
            override = site.gateway.config.address_for(event["remote"]) if site else None
            if override is not None:
                self.say(f"  resolve {event['remote']}: s2s.address override -> "
                         f"{override.ip_address}:{override.port} (no DNS)", site)
            return
        if namespace == "s2sgate.net.connector" and event.get("step") == "connect" \
                and event.get("error") is None:
            site = self._siteConnectingTo(event.get("domain"))
            key = (getattr(site, "name", None), event.get("domain"))
            if key in self._connecting:
                self._connecting.discard(key)
                self.say(f"  TCP connect to {event['target']}", site)
            else:
                # Not for a stream of ours: the receiving side of dialback calls
                # back the sender's authoritative server to check the key.
                self.say(f"dialback: TCP connect to {event['target']} to verify the key "
                         f"{event.get('domain')} sent", site)
            return
        if kind == "outbound.established":
            site = self._siteOfSource(source)
            for step in getattr(source, "trace", ()):
                if step.step in ("tls", "auth"):
                    label = {"tls": "STARTTLS", "auth": "auth"}[step.step]
                    self.say(f"  {label}: {step.error}", site)
            self.say(formatEvent(event), site)
            return
        if kind in ("c2s.component_up",):
            self.say(f"c2s stand-in: component {event['jid']} authenticated "
                     "(XEP-0114 handshake digest ok)", self._siteNamed(event.get("site")))
            return
        if kind == "component.up":
            self.say(f"component link up: {event['jid']} -> c2s stand-in "
                     f"{event['host']}:{event['port']}", self._siteOfSource(source))
            return
        if kind in _PLAIN:
            site = self._siteOfSource(source) or self._siteNamed(event.get("site"))
            text = formatEvent(event)
            if kind.startswith("c2s."):
                text = text.split(": ", 1)[-1]
            self.say(("! " if kind in _WARNINGS else "") + text, site)
            return
        if namespace == "s2sgate.net.connector" and event.get("log_level") in (LogLevel.info,
                                                                           LogLevel.warn):
            # A failed step of an outbound connection attempt.
            self.say("! " + formatEvent(event), self._siteConnectingTo(event.get("domain")))
            return
        level = event.get("log_level")
        if "log_failure" in event or level in (LogLevel.error, LogLevel.critical):
            text = formatEvent(event) or "error"
            failure = event.get("log_failure")
            if failure is not None:
                text += f": {failure.getErrorMessage()}"
            self.say("! " + text.splitlines()[0] if text else "! error",
                     self._siteOfSource(source))
            if self.verbose and failure is not None:
                self.write(failure.getTraceback())
            return
        if self.verbose:
            text = formatEvent(event)
            if text and not _FACTORY_NOISE.search(text):
                self.say(f"({event.get('log_namespace')}) {text}", self._siteOfSource(source))


# --- the session table -------------------------------------------------------

_COLUMNS = ("gateway", "dir", "local", "remote", "TLS", "certificate", "auth")


def sessionRows(sites):
    """One tuple per s2s session of every site's gateway, outbound first."""
    rows = []
    for site in sites:
        sessions = sorted(site.gateway.sessions(), key=lambda s: (
            s["direction"] != "out", s["local"] or "", s["remote"] or ""))
        for s in sessions:
            tls = s["tls"]["version"] if s["tls"] else "none"
            if s.get("direct_tls"):
                tls += " (direct)"
            cert = s["certificate"]["status"] if s["certificate"] else "-"
            rows.append((site.name, "out" if s["direction"] == "out" else "in",
                         domainsOf(s, ours=True, none="?"), domainsOf(s, ours=False, none="?"),
                         tls, cert, s["auth"] or "-"))
    return rows


def sessionTable(sites):
    """The rows of L{sessionRows} as aligned text lines, with a header."""
    rows = sessionRows(sites)
    widths = [max(len(str(r[i])) for r in rows + [_COLUMNS]) for i in range(len(_COLUMNS))]
    lines = []
    for row in [_COLUMNS] + rows:
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
        if row is _COLUMNS:
            lines.append("  ".join("-" * w for w in widths))
    return lines
