"""A real Prosody 0.12 with its own config, data dir and loopback address."""
from __future__ import annotations

import subprocess
from pathlib import Path

from .procs import Proc, port_open, with_test_resolver

REPO = Path(__file__).resolve().parents[2]
PROSODY_MODULES = REPO / "etc" / "prosody"


def _lua_str(s) -> str:
    s = str(s)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _lua_list(items) -> str:
    return "{ " + "; ".join(_lua_str(i) for i in items) + " }"


def _lua_bool(b) -> str:
    return "true" if b else "false"


def _lua_ssl(certfile, keyfile) -> str:
    return f"{{ certificate = {_lua_str(certfile)}; key = {_lua_str(keyfile)} }}"


_TLS_KEYS = {"cafile", "certs", "secure_auth", "require_encryption", "direct_tls_port",
             "dialback", "secure_domains", "insecure_domains"}


def _check_tls(tls, hosts) -> dict:
    unknown = set(tls) - _TLS_KEYS
    if unknown:
        raise ValueError(f"unknown tls option(s) {sorted(unknown)}; allowed: {sorted(_TLS_KEYS)}")
    t = {"cafile": None, "certs": {}, "secure_auth": False, "require_encryption": True,
         "direct_tls_port": None, "secure_domains": (), "insecure_domains": ()}
    t.update(tls)
    t.setdefault("dialback", not t["secure_auth"])
    t["certs"] = {h: (str(c), str(k)) for h, (c, k) in dict(t["certs"]).items()}
    stray = set(t["certs"]) - set(hosts)
    if stray:
        raise ValueError(f"tls certs for hosts that are not VirtualHosts: {sorted(stray)}")
    return t


class Prosody:
    """Prosody on ``ip`` (c2s 5222, s2s 5269 when enabled, components 5347).

    ``hosts``: VirtualHost names; ``users``: ``[("alice@home.test", "pw"), ...]``;
    ``components``: ``{jid: secret}`` external components; ``route_to``: component JID
    (``s2sgate_component``) or a list of them (``s2sgate_components``: one gateway process
    each), loads mod_s2sgate (from etc/prosody) on every host and disables mod_s2s;
    ``s2s``: "dialback" (plain-TCP dialback peer) or None (no s2s);
    ``dns``: a started :class:`TestDNS` (Prosody then resolves only through it);
    ``extra``: raw Lua appended to the config (after the host sections: Prosody scopes
    it to the last VirtualHost/Component); ``extra_global``: raw Lua in the global section;
    ``bidi``: load mod_s2s_bidi (XEP-0288: offered on incoming s2s streams, asked for on
    outgoing ones; over TLS only while s2s_require_encryption is on).

    ``tls``: None (default: plain-TCP peer as above) or a dict making this a TLS peer
    (needs ``s2s="dialback"``, the default; lua-sec does the TLS)::

        {"cafile": path,                     # trust anchors (global ssl.cafile)
         "certs": {host: (certfile, keyfile)},   # per VirtualHost ssl certificate/key
         "secure_auth": bool,                # s2s_secure_auth (default False)
         "require_encryption": bool,         # s2s_require_encryption (default True)
         "direct_tls_port": None | int,      # s2s_direct_tls_ports (XEP-0368)
         "dialback": bool,                   # load mod_dialback (default: not secure_auth)
         "secure_domains": [...], "insecure_domains": [...]}  # s2s_(in)secure_domains

    With ``tls``, s2s offers STARTTLS (required when require_encryption), asks the peer
    for a client certificate, validates chains against ``cafile`` and authenticates with
    SASL EXTERNAL when the certificate matches (mod_s2s_auth_certs), dialback otherwise
    (when loaded and allowed). Outgoing, Prosody 0.12 looks up ``_xmpps-server._tcp``
    first (Direct TLS, SNI = peer domain, ALPN xmpp-server), then ``_xmpp-server._tcp``.
    Direct TLS listening: ``s2s_direct_tls_ports`` plus ``s2s_direct_tls_ssl`` per host
    (Prosody's portmanager builds the SNI contexts of that port from the host option
    ``s2s_direct_tls_ssl``, not from the host's ``ssl``) and globally (default context).
    """

    def __init__(self, workdir, name, ip, *, hosts, users=(), components=None, route_to=None,
                 s2s="dialback", dns=None, extra="", s2s_port=5269, tls=None,
                 extra_global="", bidi=False):
        self.workdir = Path(workdir) / name
        self.name = name
        self.ip = ip
        self.hosts = list(hosts)
        self.users = list(users)
        self.components = dict(components or {})
        self.route_to = route_to
        self.s2s = None if route_to else s2s
        if s2s not in (None, "dialback"):
            raise ValueError(f"unsupported s2s mode {s2s!r}")
        self.dns = dns
        self.extra = extra
        self.extra_global = extra_global
        self.bidi = bidi
        self.s2s_port = s2s_port
        self.tls = _check_tls(tls, self.hosts) if tls is not None else None
        if self.tls is not None and self.s2s is None:
            raise ValueError("tls needs s2s (route_to/s2s=None disable Prosody's s2s)")
        self.config = self.workdir / "prosody.cfg.lua"
        self.data = self.workdir / "data"
        self.logfile = self.workdir / "prosody.log"
        self.outfile = self.workdir / "prosody.out"
        self.pidfile = self.workdir / "prosody.pid"
        self.proc: Proc | None = None

    # -- config -----------------------------------------------------------
    def _ports(self):
        ports = [5222]
        if self.s2s:
            ports.append(self.s2s_port)
            if self.tls and self.tls["direct_tls_port"]:
                ports.append(self.tls["direct_tls_port"])
        if self.components:
            ports.append(5347)
        return ports

    def write_config(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(exist_ok=True)
        (self.workdir / "certs").mkdir(exist_ok=True)
        modules = ["roster", "saslauth", "tls", "disco", "ping", "admin_shell"]
        disabled = ["offline"]
        if self.route_to:
            modules.append("s2sgate")
            disabled.append("s2s")
        elif self.s2s == "dialback":
            if self.tls is None or self.tls["dialback"]:
                modules.append("dialback")
            # As Debian's default config does: XEP-0198, on s2s once loaded.
            modules.append("smacks")
        else:
            disabled.append("s2s")
        if self.bidi and self.s2s:
            modules.append("s2s_bidi")
        L = [
            "-- generated by tests/lab/prosody.py",
            "run_as_root = true",
            f"pidfile = {_lua_str(self.pidfile)}",
            f"data_path = {_lua_str(self.data)}",
            f"plugin_paths = {_lua_list([PROSODY_MODULES])}",
            f"log = {{ {{ levels = {{ min = \"debug\" }}, to = \"file\", filename = {_lua_str(self.logfile)} }} }}",
            f"interfaces = {_lua_list([self.ip])}",
            "local_interfaces = { }",
            "c2s_ports = { 5222 }",
            f"s2s_ports = {{ {self.s2s_port} }}" if self.s2s else "s2s_ports = { }",
            "c2s_direct_tls_ports = { }",
            (f"s2s_direct_tls_ports = {{ {self.tls['direct_tls_port']} }}"
             if self.tls and self.tls["direct_tls_port"] else "s2s_direct_tls_ports = { }"),
            "legacy_ssl_ports = { }", "http_ports = { }", "https_ports = { }",
            "c2s_require_encryption = false",
            "allow_unencrypted_plain_auth = true",
            'authentication = "internal_plain"',
            f"modules_enabled = {_lua_list(modules)}",
            f"modules_disabled = {_lua_list(disabled)}",
        ]
        if self.components:
            L += ["component_ports = { 5347 }", f"component_interfaces = {_lua_list([self.ip])}"]
        else:
            L += ["component_ports = { }"]
        if self.s2s == "dialback" and self.tls is None:
            L += ["s2s_allow_encryption = false", "s2s_require_encryption = false",
                  "s2s_secure_auth = false"]
        elif self.tls is not None:
            t = self.tls
            L += ["s2s_allow_encryption = true",
                  f"s2s_require_encryption = {_lua_bool(t['require_encryption'])}",
                  f"s2s_secure_auth = {_lua_bool(t['secure_auth'])}",
                  f"s2s_secure_domains = {_lua_list(t['secure_domains'])}",
                  f"s2s_insecure_domains = {_lua_list(t['insecure_domains'])}"]
            if t["cafile"]:
                L += [f"ssl = {{ cafile = {_lua_str(t['cafile'])} }}"]
            if t["direct_tls_port"] and t["certs"]:
                cert, key = next(iter(t["certs"].values()))
                L += [f"s2s_direct_tls_ssl = {_lua_ssl(cert, key)}"]
        if isinstance(self.route_to, str):
            L += [f"s2sgate_component = {_lua_str(self.route_to)}"]
        elif self.route_to:
            L += [f"s2sgate_components = {_lua_list(self.route_to)}"]
        if not self.route_to and self.s2s:
            L += ["smacks_enabled_s2s = true"]
        if self.dns is not None:
            L += ["unbound = {",
                  f"  resolvconf = {_lua_str(self.dns.resolv_conf)};",
                  f"  hoststxt = {_lua_str(self.dns.hosts_file)};",
                  '  options = { ["local-zone:"] = "test. transparent" };',
                  "}"]
        if self.extra_global:
            L += [self.extra_global]
        for h in self.hosts:
            L += ["", f"VirtualHost {_lua_str(h)}"]
            if self.tls is not None and h in self.tls["certs"]:
                cert, key = self.tls["certs"][h]
                L += [f"  ssl = {_lua_ssl(cert, key)}"]
                if self.tls["direct_tls_port"]:
                    L += [f"  s2s_direct_tls_ssl = {_lua_ssl(cert, key)}"]
        for jid, secret in self.components.items():
            L += ["", f"Component {_lua_str(jid)}",
                  f"  component_secret = {_lua_str(secret)}",
                  "  validate_from_addresses = false"]
        if self.extra:
            L += ["", self.extra]
        self.config.write_text("\n".join(L) + "\n")

    # -- control ----------------------------------------------------------
    def _wrap(self, argv):
        if self.dns is not None:
            return with_test_resolver(argv, self.dns.resolv_conf, self.dns.hosts_file)
        return argv

    def prosodyctl(self, *args, timeout=30) -> subprocess.CompletedProcess:
        return subprocess.run(self._wrap(["prosodyctl", "--config", str(self.config), *args]),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def register_users(self):
        for jid, password in self.users:
            user, host = jid.split("@", 1)
            r = self.prosodyctl("register", user, host, password)
            if r.returncode != 0:
                raise RuntimeError(f"prosodyctl register {jid} failed: {r.stdout}{r.stderr}")

    def start(self):
        if self.proc is not None and self.proc.running():
            return self
        for p in self._ports():
            if port_open(self.ip, p):
                raise RuntimeError(f"{self.name}: {self.ip}:{p} already in use")
        self.write_config()
        self.register_users()
        self.proc = Proc(f"prosody-{self.name}",
                         self._wrap(["prosody", "-F", "--config", str(self.config)]),
                         logfile=self.outfile).start()
        try:
            for p in self._ports():
                self.proc.wait_port(self.ip, p, timeout=15)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"{e}\n--- prosody.log tail ---\n{self._log_tail()}") from None
        return self

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def kill(self):
        """kill -9: the process dies without closing its streams."""
        if self.proc is not None:
            self.proc.kill()
            self.proc = None

    def _log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    def log_text(self) -> str:
        out = []
        for f in (self.logfile, self.outfile):
            try:
                out.append(f.read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(out)

    def s2s_show(self, columns=None) -> str:
        """Output of ``prosodyctl shell 's2s:show()'`` (best effort; '' on failure).
        ``columns``: a column spec such as ``S2S_COLUMNS`` (default: Prosody's)."""
        cmd = "s2s:show()" if columns is None else f"s2s:show(nil, {_lua_str(columns)})"
        try:
            r = self.prosodyctl("shell", cmd, timeout=15)
        except Exception as e:  # noqa: BLE001
            return f"(s2s:show failed: {e})"
        return r.stdout + r.stderr

    def s2s_sessions(self, columns=None) -> list[dict]:
        """``s2s:show()`` parsed into one dict per session, keyed by the column names of
        ``columns`` (default ``S2S_COLUMNS``: host dir remote port secure cert s2s_sasl
        dialback sni alpn). Values as Prosody prints them, e.g. secure "TLSv1.3", cert "Valid",
        s2s_sasl "Success" (SASL EXTERNAL done), dialback "Not used"/"Completed",
        dir "-->"/"<--"/"<->"."""
        columns = columns or S2S_COLUMNS
        names = columns.split()
        out = self.s2s_show(columns)
        rows, header = [], None
        for line in out.splitlines():
            cells = [c.strip() for c in line.split(" | ")]
            if len(cells) != len(names):
                continue
            if header is None:  # the first table line holds the column titles
                header = cells
                continue
            rows.append(dict(zip(names, cells)))
        return rows


S2S_COLUMNS = "host dir remote port secure cert s2s_sasl dialback sni alpn"
