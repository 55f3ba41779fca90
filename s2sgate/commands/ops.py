# -*- test-case-name: tests.test_ops_cli -*-
"""
Operator commands that talk to a running gateway's admin API:

  s2sgate sessions              every s2s link and how it is secured, plus totals
  s2sgate sessions --all        the same for this process and every C{[admin] peers}
                                entry of C{--config} (one gateway process each)
  s2sgate failures              recent failed outbound attempts, step by step
  s2sgate connect LOCAL REMOTE  open and authenticate a stream now, printing each step
  s2sgate close REMOTE          close every stream with REMOTE
  s2sgate reload                re-read the config file (as SIGHUP does)

Common options: C{--admin URL} (default: C{--config FILE}'s C{[admin] listen},
else http://127.0.0.1:5281; C{unix:/path} for a unix socket), C{--token}
(default: C{$S2SGATE_ADMIN_TOKEN}, else C{--config FILE}'s C{admin.token}),
C{--json} (print the API's JSON instead of tables).

Exit status: 0 done; 1 the operation failed (connect failed, API unreachable
or refused the request); 2 a configuration problem (bad C{--config}, reload
refused).  Errors are one line on stderr.  Only the standard library is used
to talk HTTP (proxies from the environment are ignored: the API is local).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
DEFAULT_URL = "http://127.0.0.1:5281"
TOKEN_ENV = "S2SGATE_ADMIN_TOKEN"


class OpsError(Exception):
    """One line for stderr, and the exit status."""

    def __init__(self, message, status=EXIT_FAILED):
        super().__init__(message)
        self.status = status


def register(commands):
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("admin API")
    group.add_argument("--admin", metavar="URL",
                       help="the admin API, e.g. http://127.0.0.1:5281 or unix:/run/s2sgate/admin.sock "
                            f"(default: --config's [admin] listen, else {DEFAULT_URL})")
    group.add_argument("--config", metavar="FILE",
                       help="the gateway's config file, for the admin address and token")
    group.add_argument("--token", help=f"the admin token (default: ${TOKEN_ENV}, else --config's "
                                       "admin.token)")
    group.add_argument("--json", action="store_true", help="print the API's JSON")
    group.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="how long to wait for the answer (default 10, connect 120)")

    p = commands.add_parser("sessions", parents=[common],
                            help="list s2s links: security, auth, traffic (running gateway)")
    p.add_argument("--all", action="store_true",
                   help="also ask the other gateway processes listed in --config's "
                        "[admin] peers (same token)")
    p.set_defaults(func=_run(cmdSessions))
    p = commands.add_parser("failures", parents=[common],
                            help="recent failed outbound connection attempts with their steps")
    p.set_defaults(func=_run(cmdFailures))
    p = commands.add_parser("connect", parents=[common],
                            help="open and authenticate an s2s stream now, printing each step")
    p.add_argument("local", metavar="LOCAL", help="one of local_domains")
    p.add_argument("remote", metavar="REMOTE", help="the remote domain")
    p.set_defaults(func=_run(cmdConnect))
    p = commands.add_parser("close", parents=[common], help="close every stream with a domain")
    p.add_argument("remote", metavar="REMOTE", help="the remote domain")
    p.set_defaults(func=_run(cmdClose))
    p = commands.add_parser("reload", parents=[common],
                            help="re-read the config file of the running gateway (like SIGHUP)")
    p.set_defaults(func=_run(cmdReload))


def _run(command):
    def func(args):
        try:
            return command(AdminClient.fromArgs(args), args)
        except OpsError as e:
            print(f"s2sgate: {e}", file=sys.stderr)
            return e.status
    return func


# --- talking to the API ----------------------------------------------------------------


class AdminClient:
    def __init__(self, url, token=None, timeout=None):
        self.url = url
        self.token = token
        self.timeout = timeout
        if url.startswith("unix:"):
            self.base = "http://localhost"
            handler = _UnixHandler(url[len("unix:"):])
        else:
            parsed = urllib.parse.urlsplit(url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise OpsError(f"--admin: {url!r} is not an http:// URL or unix:/path", EXIT_CONFIG)
            self.base = url.rstrip("/")
            handler = None
        handlers = [urllib.request.ProxyHandler({})] + ([handler] if handler else [])
        self.opener = urllib.request.build_opener(*handlers)

    @classmethod
    def fromArgs(cls, args):
        url, token = args.admin, args.token or os.environ.get(TOKEN_ENV) or None
        if args.config and (url is None or token is None):
            from s2sgate.config import ConfigError, load_config
            try:
                config = load_config(args.config)
            except ConfigError as e:
                raise OpsError(str(e), EXIT_CONFIG) from None
            if url is None:
                if config.admin.listen is None:
                    raise OpsError(f'{args.config}: admin.listen is "" (the admin API is off); '
                                   "set [admin] listen and restart s2sgate", EXIT_CONFIG)
                url = adminURL(config.admin.listen)
            token = token or config.admin.token
        return cls(url or DEFAULT_URL, token, args.timeout)

    def call(self, method, path, params=None, timeout=10):
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        headers = {"Accept": "application/json", "User-Agent": "s2sgate-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, method=method, headers=headers,
                                         data=b"" if method == "POST" else None)
        timeout = self.timeout or timeout
        try:
            with self.opener.open(request, timeout=timeout) as response:
                status, body = response.status, response.read()
                contentType = response.headers.get("content-type", "")
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
            contentType = e.headers.get("content-type", "")
        except urllib.error.URLError as e:
            raise OpsError(self._unreachable(e.reason)) from None
        except (OSError, http.client.HTTPException) as e:
            raise OpsError(self._unreachable(e)) from None
        if "json" not in contentType:
            raise OpsError(f"{self.url} is not the s2sgate admin API (HTTP {status}, "
                           f"{contentType or 'no content type'})")
        try:
            data = json.loads(body)
        except ValueError:
            raise OpsError(f"{self.url} sent a broken answer (HTTP {status})") from None
        if status == 401:
            raise OpsError(f"the admin API at {self.url} refused the request: "
                           f"{'wrong' if self.token else 'no'} token; pass --token or set "
                           f"${TOKEN_ENV} to the gateway's admin.token")
        return status, data

    def _unreachable(self, reason):
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, FileNotFoundError):
            why = "no such socket"
        elif isinstance(reason, (TimeoutError, socket.timeout)):
            why = "no answer in time"
        elif isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror.lower()
        else:
            why = str(reason) or type(reason).__name__
        return (f"cannot reach the admin API at {self.url}: {why} — "
                "is s2sgate running with [admin] listen?")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, host="localhost", timeout=socket._GLOBAL_DEFAULT_TIMEOUT, **kw):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
            sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixHandler(urllib.request.AbstractHTTPHandler):
    """Send http://localhost/... requests over the unix socket at C{path}."""

    def __init__(self, path):
        super().__init__()
        self.socketPath = path

    def http_open(self, request):
        return self.do_open(lambda host, **kw: _UnixConnection(self.socketPath, **kw), request)

    http_request = urllib.request.AbstractHTTPHandler.do_request_
    handler_order = 100   # before the standard HTTPHandler


def adminURL(listen):
    """The URL for a Twisted endpoint string from C{[admin] listen}."""
    kind, args, kwargs = _parseEndpoint(listen)
    if kind == "unix":
        return "unix:" + kwargs.get("address", args[0] if args else "")
    port = kwargs.get("port", args[0] if args else "5281")
    interface = kwargs.get("interface", args[2] if len(args) > 2 else "")
    if interface in ("", "0.0.0.0"):
        interface = "127.0.0.1"
    elif interface == "::":
        interface = "::1"
    host = f"[{interface}]" if ":" in interface else interface
    return f"http://{host}:{port}"


def _parseEndpoint(description):
    parts, current, escaped = [], "", False
    for ch in description:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    args, kwargs = [], {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            kwargs[key] = value
        else:
            args.append(part)
    return parts[0], args, kwargs


# --- the commands -------------------------------------------------------------------------


def certificateColumn(cert):
    """The verdict, and how DANE decided it when it did: "valid (DANE dane-ee)"."""
    if not cert:
        return "-"
    return cert["status"] + (f" (DANE {cert['dane']})" if cert.get("dane") else "")


def cmdSessions(client, args):
    if args.all:
        return _allSessions(client, args)
    _, data = client.call("GET", "/api/sessions")
    if args.json:
        return _printJSON(data)
    _printSessions(data)
    return EXIT_OK


def _printSessions(data, process=None):
    from s2sgate.s2s.sessions import domainsOf
    sessions = sorted(data["sessions"], key=lambda s: (s.get("remote") or "", s["direction"]))
    if sessions:
        rows = [(("PROCESS",) if process else ()) + (
                 "DIR", "LOCAL", "REMOTE", "SECURITY", "CERTIFICATE", "AUTH", "PEER", "SINCE",
                 "STANZAS IN/OUT", "QUEUE", "SM", "UNACKED")]
        for s in sessions:
            rows.append(((process(s),) if process else ()) + (
                         direction(s), domainsOf(s, ours=True), domainsOf(s, ours=False),
                         security(s), certificateColumn(s.get("certificate")),
                         s.get("auth") or "(pending)", s.get("peer") or "-",
                         ago(data["now"], s["since"]),
                         f"{s['stanzas_in']}/{s['stanzas_out']}", str(s["queue"]),
                         "on" if s.get("sm") else "off",
                         "-" if s.get("unacked") is None else str(s["unacked"])))
        _printTable(rows)
        print()
    else:
        print("no s2s links")
    print(totalsLine(data["totals"]))


def _allSessions(client, args):
    """Every process of the site: this one, then each of C{[admin] peers}."""
    if not args.config:
        raise OpsError("--all needs --config FILE: the other processes are its [admin] peers",
                       EXIT_CONFIG)
    from s2sgate.config import ConfigError, load_config
    try:
        peers = load_config(args.config).admin.peers
    except ConfigError as e:
        raise OpsError(str(e), EXIT_CONFIG) from None
    processes, failed = [], 0
    for url in [client.url] + [u for u in peers if u != client.url.rstrip("/")]:
        other = client if url == client.url else AdminClient(url, client.token, client.timeout)
        try:
            _, link = other.call("GET", "/api/link")
            _, data = other.call("GET", "/api/sessions")
        except OpsError as e:
            failed += 1
            print(f"s2sgate: {e}", file=sys.stderr)
            processes.append({"admin": url, "error": str(e)})
            continue
        processes.append({"admin": url, "component": link.get("jid"), "link": link.get("state"),
                          **data})
    if args.json:
        _printJSON({"processes": processes})
        return EXIT_FAILED if failed else EXIT_OK
    answered = [p for p in processes if "error" not in p]
    merged = {"now": max((p["now"] for p in answered), default=0), "sessions": [],
              "totals": {}}
    for p in answered:
        merged["sessions"] += [dict(s, process=p["component"]) for s in p["sessions"]]
        for key, value in p["totals"].items():
            merged["totals"][key] = merged["totals"].get(key, 0) + value
    for p in processes:
        state = f"link {p['link']}" if "error" not in p else "NOT REACHED"
        print(f"{p.get('component') or '?'} at {p['admin']}: {state}"
              + (f", {p['totals']['links']} links" if "error" not in p else ""))
    print()
    if merged["totals"]:
        _printSessions(merged, process=lambda s: s["process"])
    if failed:
        print(f"{failed} of {len(processes)} processes did not answer: the list is incomplete")
        return EXIT_FAILED
    return EXIT_OK


def cmdFailures(client, args):
    _, data = client.call("GET", "/api/failures")
    if args.json:
        return _printJSON(data)
    if not data["failures"]:
        print("no failed connection attempts recently")
        return EXIT_OK
    for i, f in enumerate(data["failures"]):
        if i:
            print()
        print(f"{_when(f['time'])} ({ago(data['now'], f['time'])} ago)  "
              f"{f['local']} -> {f['remote']}  {f['condition']}: {f['text']}")
        _printSteps(f["steps"])
    return EXIT_OK


def cmdConnect(client, args):
    if not args.json:
        print(f"connecting {args.local} -> {args.remote} ...", flush=True)
    status, data = client.call("POST", "/api/connect",
                               {"local": args.local, "remote": args.remote}, timeout=120)
    if args.json:
        _printJSON(data)
        if status != 200:
            print(f"s2sgate: {data.get('error', f'HTTP {status}')}", file=sys.stderr)
        return EXIT_OK if status == 200 else EXIT_FAILED
    if status != 200:
        _printSteps(data.get("steps") or [])
        raise OpsError(data.get("error", f"HTTP {status}"))
    s = data["session"]
    if data.get("reused"):
        print("  already connected")
    else:
        _printSteps(data.get("steps") or [])
    cert = s.get("certificate")
    # A further local domain joins another's stream (XEP-0220 multiplexing).
    shared = (f" (on the stream of {s['local']}, {len(s.get('pairs') or [])} pairs)"
              if s.get("local") and s["local"] != args.local else "")
    print(f"connected: {args.local} -> {s['remote']}{shared}"
          f"{' (bidi)' if s.get('bidi') else ''}, "
          f"{security(s, cipher=True)}, "
          f"certificate {certificateColumn(cert) if cert else 'none'}, auth {s.get('auth')}, "
          f"peer {s.get('peer') or '-'}, stream {s.get('stream_id')}")
    return EXIT_OK


def cmdClose(client, args):
    status, data = client.call("POST", "/api/close", {"remote": args.remote})
    if status != 200:
        raise OpsError(data.get("error", f"HTTP {status}"))
    if args.json:
        return _printJSON(data)
    n = data["closed"]
    print(f"closed {n} stream{'' if n == 1 else 's'} with {data['remote']}" if n
          else f"no open stream with {data['remote']}")
    return EXIT_OK


def cmdReload(client, args):
    status, data = client.call("POST", "/api/reload")
    if status == 400:
        if args.json:
            _printJSON(data)
        raise OpsError(f"reload refused, still running on the previous config: {data['error']}",
                       EXIT_CONFIG)
    if status != 200:
        raise OpsError(data.get("error", f"HTTP {status}"))
    if args.json:
        return _printJSON(data)
    print(f"reloaded {data['reloaded']}: policies, certificates and limits apply to new streams")
    if data["needs_restart"]:
        print("changed but only applied after a restart: " + ", ".join(data["needs_restart"]))
    return EXIT_OK


# --- formatting -------------------------------------------------------------------------


def totalsLine(t):
    line = (f"{t['links']} link{'' if t['links'] == 1 else 's'}: {t['tls']} TLS, {t['plain']} plain; "
            f"{t['certificate']} by certificate, {t['dialback']} by dialback")
    if t.get("unauthenticated"):
        line += f"; {t['unauthenticated']} not yet authenticated"
    return line


def direction(s):
    """'in'/'out', and 'in+out'/'out+in' for a bidi stream (XEP-0288): opened that way, used both."""
    return s["direction"] + ("+" + ("in" if s["direction"] == "out" else "out")
                             if s.get("bidi") else "")


def security(s, cipher=False):
    tls = s.get("tls")
    if not tls:
        return "plain"
    text = tls.get("version") or "TLS"
    if s.get("direct_tls"):
        text += " direct"
    if cipher and tls.get("cipher"):
        text += f" ({tls['cipher']})"
    return text


def ago(now, then):
    s = max(0, int(round(now - then)))
    if s < 60:
        return f"{s}s"
    m = s // 60
    if m < 60:
        return f"{m}m"
    h = m // 60
    if h < 48:
        return f"{h}h{m % 60:02d}m"
    return f"{h // 24}d{h % 24:02d}h"


def _when(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _printSteps(steps):
    width = max((len(s["step"]) for s in steps), default=0)
    for s in steps:
        mark = "[ok]  " if s["ok"] else "[FAIL]"
        print(f"  {mark} {s['step']:<{width}}  {s['target']}: {s['detail']}")


def _printTable(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())


def _printJSON(data):
    print(json.dumps(data, indent=2, ensure_ascii=False))
    return EXIT_OK
