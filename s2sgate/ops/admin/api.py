# -*- test-case-name: tests.test_admin -*-
"""
The admin HTTP API (twisted.web), for the status page, the C{s2sgate}
command and Prometheus.

  GET  /                 the status page (one static HTML file)
  GET  /api/sessions     {"sessions": [...], "totals": {...}, "now": t}
  GET  /api/failures     {"failures": [...], "now": t}  newest first, with their steps
  GET  /api/link         the component link state
  GET  /api/certificates {"ours": [...], "peers": [...], "now", "warn_days", "error_days"}:
                         our certificates (names, domains served, days left) and the
                         peers' certificates on live links, each with a level
  POST /api/connect?local=L&remote=R   open and authenticate (L, R) now; waits:
                         200 {"session", "steps", "reused"} or 502 {"error",
                         "condition", "text", "steps"}
  POST /api/close?remote=R             {"remote", "closed": count}
  POST /api/reload       200 {"needs_restart": [keys]} or 400 {"error": one line}
  GET  /metrics          Prometheus text format (OpenMetrics when asked for)

Every answer but the page and /metrics is JSON; errors are
C{{"error": "one line"}} with a 4xx/5xx status.

Access: with C{[admin] token} set, every request needs
C{Authorization: Bearer TOKEN} (HTTP Basic with the token as password is
accepted too, so that a browser can open the page); the comparison takes
constant time, and the token is read from the current config at each request,
so a reload applies a new one.  Without a token the listener is on loopback
(config refuses anything else), and two checks keep web pages in the
operator's browser out: the C{Host} header must be an IP address or
C{localhost} (DNS rebinding), and a POST carrying a foreign C{Origin} is
refused (cross-site requests).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
from importlib import resources

from prometheus_client.exposition import choose_encoder
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from s2sgate.config import ConfigError
from s2sgate.net.connector import ConnectFailed
from s2sgate.xmpp.domain import InvalidDomain, normalize

__all__ = ["AdminSite", "AdminResource", "sessionTotals", "certificateReport",
           "expiryLevel", "CERTIFICATE_AUTH", "WARN_DAYS", "ERROR_DAYS"]

# Authentication methods that rest on the peer's certificate.
CERTIFICATE_AUTH = ("sasl-external", "dialback-without-dialback")

# A certificate with fewer days left than these is a warning / an error on the page.
WARN_DAYS = 14
ERROR_DAYS = 3

_GET = (b"GET", b"HEAD")
_POST = (b"POST",)


def sessionTotals(sessions):
    """Counts for the totals line: links, TLS / plain, by certificate / by dialback."""
    return {
        "links": len(sessions),
        "tls": sum(1 for s in sessions if s.get("tls")),
        "plain": sum(1 for s in sessions if not s.get("tls")),
        "certificate": sum(1 for s in sessions if s.get("auth") in CERTIFICATE_AUTH),
        "dialback": sum(1 for s in sessions if s.get("auth") == "dialback"),
        "unauthenticated": sum(1 for s in sessions if not s.get("auth")),
    }


def expiryLevel(daysLeft, status="valid"):
    """C{"ok"}, C{"warn"} (under L{WARN_DAYS}) or C{"error"} (under L{ERROR_DAYS}, or not valid)."""
    if status != "valid" or daysLeft is None or daysLeft < ERROR_DAYS:
        return "error"
    return "warn" if daysLeft < WARN_DAYS else "ok"


def _daysLeft(notAfter, now):
    return None if notAfter is None else int((notAfter - now) // 86400)


def certificateReport(ourCertificates, sessions, now):
    """
    What C{/api/certificates} answers: each certificate we present (once,
    with every local domain it is presented for and whether it names each),
    and the certificate of each live link's peer.
    """
    from s2sgate.auth.certs import matchesDomain

    ours, byPath = [], {}
    for domain, cert in ourCertificates:
        if cert is None:
            ours.append({"certfile": None, "domains": [domain], "uncovered": [domain],
                         "names": "", "not_after": None, "days_left": None, "level": "error",
                         "problem": f"no certificate for {domain}"})
            continue
        entry = byPath.get(cert.path)
        if entry is None:
            notAfter = cert.leaf.not_valid_after_utc.timestamp()
            days = _daysLeft(notAfter, now)
            entry = byPath[cert.path] = {
                "certfile": cert.path, "domains": [], "uncovered": [],
                "names": cert.identities.describe(), "not_after": notAfter,
                "days_left": days, "level": expiryLevel(days), "problem": None}
            if days is not None and days < 0:
                entry["problem"] = "expired"
            ours.append(entry)
        entry["domains"].append(domain)
        if not matchesDomain(cert.identities, domain):
            entry["uncovered"].append(domain)
            entry["level"] = "error"
            entry["problem"] = "does not name " + ", ".join(entry["uncovered"])
    peers = []
    for s in sessions:
        c = s.get("certificate")
        if c is None:
            continue
        days = _daysLeft(c.get("not_after"), now)
        peers.append({"remote": s.get("remote"), "direction": s.get("direction"),
                      "local": s.get("local"), "status": c.get("status"),
                      "reason": c.get("reason"), "names": c.get("names"),
                      "dane": c.get("dane"), "not_after": c.get("not_after"), "days_left": days,
                      "level": expiryLevel(days, c.get("status"))})
    return {"ours": ours, "peers": peers, "now": now, "warn_days": WARN_DAYS,
            "error_days": ERROR_DAYS}


class _HTTPError(Exception):
    def __init__(self, code, message, headers=()):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers


def _statusPage():
    """The page's bytes and a CSP allowing exactly its inline scripts (None if missing)."""
    try:
        page = resources.files(__package__).joinpath("status.html").read_bytes()
    except OSError:
        # An install without its package data: the API still works.
        return None, None
    hashes = " ".join(
        "'sha256-%s'" % base64.b64encode(hashlib.sha256(body).digest()).decode()
        for body in re.findall(rb"<script>(.*?)</script>", page, re.S))
    csp = ("default-src 'none'; script-src " + hashes + "; style-src 'unsafe-inline'; "
           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return page, csp


class AdminResource(Resource):
    """Every path of the admin listener; routes by path and method."""

    isLeaf = True
    log = Logger()

    def __init__(self, gateway):
        Resource.__init__(self)
        self.gateway = gateway
        self.page, self.pageCSP = _statusPage()
        self.routes = {
            b"/": (_GET, self.renderPage),
            b"/metrics": (_GET, self.renderMetrics),
            b"/api/sessions": (_GET, self.apiSessions),
            b"/api/failures": (_GET, self.apiFailures),
            b"/api/link": (_GET, self.apiLink),
            b"/api/certificates": (_GET, self.apiCertificates),
            b"/api/connect": (_POST, self.apiConnect),
            b"/api/close": (_POST, self.apiClose),
            b"/api/reload": (_POST, self.apiReload),
        }

    # dispatch

    def render(self, request):
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        try:
            self.checkAccess(request)
            path = request.path.rstrip(b"/") or b"/"
            route = self.routes.get(path)
            if route is None:
                raise _HTTPError(404, f"no such resource: {_text(request.path)}; try /api/sessions, "
                                      "/api/failures, /api/link, /api/certificates, /metrics or /")
            methods, handler = route
            if request.method not in methods:
                raise _HTTPError(405, f"{_text(request.method)} is not allowed on {_text(path)}; "
                                      f"use {' or '.join(_text(m) for m in methods if m != b'HEAD')}",
                                 headers=((b"allow", b", ".join(methods)),))
            result = handler(request)
        except _HTTPError as e:
            for name, value in e.headers:
                request.setHeader(name, value)
            return self.json(request, {"error": e.message}, e.code)
        except Exception as e:
            self.log.failure("admin request {path} failed", path=_text(request.path))
            return self.json(request, {"error": f"internal error: {_oneLine(e)}"}, 500)
        if isinstance(result, defer.Deferred):
            self._finishLater(request, result)
            return server.NOT_DONE_YET
        return result

    def _finishLater(self, request, d):
        finished = []
        request.notifyFinish().addBoth(finished.append)

        def done(body):
            if not finished:
                request.write(body)
                request.finish()

        def failed(f):
            self.log.failure("admin request {path} failed", f, path=_text(request.path))
            if not finished:
                request.write(self.json(request, {"error": f"internal error: {_oneLine(f.value)}"},
                                        500))
                request.finish()

        d.addCallback(done).addErrback(failed)

    def checkAccess(self, request):
        host = _header(request, b"host") or ""
        origin = _header(request, b"origin")
        # A browser holding Basic credentials would send them on a foreign
        # page's form POST too: refuse cross-site POSTs whatever the auth.
        if (request.method in _POST and origin is not None
                and origin not in (f"http://{host}", f"https://{host}")):
            raise _HTTPError(403, f"cross-site request from {origin!r} refused")
        token = self.gateway.config.admin.token
        if token:
            if not _tokenMatches(_header(request, b"authorization"), token):
                raise _HTTPError(401, "missing or wrong admin token: send "
                                      "'Authorization: Bearer <admin.token>'",
                                 headers=((b"www-authenticate", b'Bearer realm="s2sgate"'),))
            return
        if isinstance(request.getHost(), (IPv4Address, IPv6Address)):
            # No Host at all (HTTP/1.0 from a script) is no browser's: a
            # rebinding page's request always names its host.
            if host and not _isAddressHost(host):
                raise _HTTPError(403, f"Host {host!r} refused: without admin.token the admin API "
                                      "answers only to an IP address or localhost")

    def json(self, request, data, code=200):
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return json.dumps(data, indent=1, default=str, ensure_ascii=False).encode("utf-8") + b"\n"

    # resources

    def renderPage(self, request):
        if self.page is None:
            raise _HTTPError(500, "s2sgate/ops/admin/status.html is missing from this installation; "
                                  "the JSON API (/api/sessions, ...) works")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", self.pageCSP.encode())
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return self.page

    def renderMetrics(self, request):
        encoder, contentType = choose_encoder(_header(request, b"accept") or "")
        request.setHeader(b"content-type", contentType.encode())
        return encoder(self.gateway.metrics.registry)

    def apiSessions(self, request):
        sessions = self.gateway.sessions()
        return self.json(request, {"sessions": sessions, "totals": sessionTotals(sessions),
                                   "now": self.gateway.clock.seconds()})

    def apiFailures(self, request):
        return self.json(request, {"failures": self.gateway.failureLog(),
                                   "now": self.gateway.clock.seconds()})

    def apiLink(self, request):
        return self.json(request, self.gateway.linkState())

    def apiCertificates(self, request):
        gateway = self.gateway
        return self.json(request, certificateReport(gateway.ourCertificates(), gateway.sessions(),
                                                    gateway.clock.seconds()))

    def apiConnect(self, request):
        local = self._domainArg(request, "local")
        remote = self._domainArg(request, "remote")
        return defer.ensureDeferred(self._connect(request, local, remote))

    async def _connect(self, request, local, remote):
        gateway = self.gateway
        started = gateway.clock.seconds()
        try:
            connected = await gateway.connect(local, remote)
        except ConnectFailed as e:
            steps = [_step(a) for a in e.attempts]
            if not steps:
                # The failure log has this attempt's steps.
                for failure in gateway.failureLog():
                    if (failure["local"], failure["remote"]) == (local, remote) \
                            and failure["time"] >= started:
                        steps = failure["steps"]
                        break
            return self.json(request, {"error": f"cannot connect {local} -> {remote}: {e.text}",
                                       "local": local, "remote": remote,
                                       "condition": e.condition, "text": e.text,
                                       "steps": steps}, 502)
        except PermissionError as e:
            return self.json(request, {"error": str(e)}, 403)
        except ValueError as e:
            return self.json(request, {"error": str(e)}, 400)
        return self.json(request, {"session": connected.session, "reused": connected.reused,
                                   "steps": [_step(a) for a in connected.trace]})

    def apiClose(self, request):
        remote = self._domainArg(request, "remote")
        return self.json(request, {"remote": remote, "closed": self.gateway.close(remote)})

    def apiReload(self, request):
        try:
            needsRestart = self.gateway.reload()
        except ConfigError as e:
            raise _HTTPError(400, str(e))
        return self.json(request, {"reloaded": self.gateway.config.path,
                                   "needs_restart": list(needsRestart)})

    def _domainArg(self, request, name):
        values = request.args.get(name.encode())
        if not values or not values[0].strip():
            raise _HTTPError(400, f"missing parameter {name}=DOMAIN")
        raw = values[0].decode("utf-8", "replace").strip()
        try:
            return normalize(raw)
        except InvalidDomain as e:
            raise _HTTPError(400, f"{name}: {raw!r} is not a domain ({e})")


class AdminSite(server.Site):
    """The admin listener's Site: no tracebacks shown, no access log above debug."""

    noisy = False
    displayTracebacks = False
    log_ = Logger()

    def __init__(self, gateway):
        server.Site.__init__(self, AdminResource(gateway))

    def log(self, request):
        # Never the headers (the token); a scrape every few seconds is not news.
        self.log_.debug("admin {method} {path} -> {code}", method=_text(request.method),
                        path=_text(request.path), code=request.code, event="admin.request")


def _step(attempt):
    return {"step": attempt.step, "target": attempt.target, "ok": attempt.ok,
            "detail": attempt.error}


def _tokenMatches(header, token):
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "basic":
        try:
            credentials = base64.b64decode(credentials, validate=True).decode(
                "utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.encode("utf-8", "replace"), token.encode("utf-8"))


def _isAddressHost(host):
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if ":" in host else host
    if name in ("localhost", "localhost."):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def _header(request, name):
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


def _oneLine(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


def _text(b):
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)
