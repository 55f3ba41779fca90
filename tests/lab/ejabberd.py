"""A real ejabberd 23.01 running in the foreground as user ejabberd."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .procs import Proc, port_open, with_test_resolver

EJABBERD_USER = "ejabberd"


def _free_port(ip="127.0.0.1") -> int:
    s = socket.socket()
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return f'"{value}"'


def _pgrep(pattern) -> str:
    r = subprocess.run(["pgrep", "-a", "-f", pattern], capture_output=True, text=True)
    return r.stdout.strip()


class Ejabberd:
    """ejabberd on ``ip``: c2s 5222 (plain auth allowed), s2s-in 5269, dialback.

    ``users``: ``[("alice@host", "pw"), ...]``; ``dns``: started TestDNS or None;
    ``s2s_use_starttls``: "false" | "true" | "optional" | "required" | "required_trusted";
    ``extra_yaml``: raw YAML appended to ejabberd.yml (top-level keys).

    TLS (ejabberd 23.01 option names, checked in its ejabberd_options):
    ``certfile``: PEM with cert + chain + key (TestCA.issue()'s certfile), copied into
    the runtime dir and listed in ``certfiles:`` (23.01 has no ``s2s_certfile``: the
    certificate for a domain is picked from ``certfiles`` by the names it carries);
    ``cafile``: trust anchors, copied and set as both ``ca_file`` (pkix, chain checks of
    our own certfiles) and ``s2s_cafile`` (peer certificates on s2s);
    ``dialback``: load ``mod_s2s_dialback`` (default True).

    As the c2s server the gateway attaches to: ``s2s=False`` (no ``ejabberd_s2s_in``
    listener, ``s2s_access: none``, no dialback: ejabberd federates nothing itself);
    ``components``: ``{jid: secret}``, one ``ejabberd_service`` listener on ``ip``:5347
    with ``check_from: false``; ``service_options``: more options of that listener
    (``{"global_routes": False}``); ``extra_listen_yaml``: raw YAML items appended to
    ``listen:``; ``modules``: ``{name: {option: value}}`` added to
    ``modules:`` (a value may be a string, a bool or a list of strings); ``beams``:
    compiled modules copied into the runtime dir and put on the code path with ``-pa``
    in ``ERL_OPTIONS`` (``ejabberdctl`` resets ``ERL_LIBS``);
    ``dist_ip``: the address of the Erlang distribution listener and the node's host
    part (default: 127.0.0.1, node ``ejabberd_<name>@localhost``); ``loglevel``: ejabberd's
    (``debug`` logs every routed stanza and the routes' changes; ``info`` costs less under
    traffic).

    ``s2s_use_starttls`` in 23.01 accepts only false/true/optional/required;
    "required_trusted" is gone. Here it is a lab alias for ``required`` without
    dialback: then the certificate is the only way in or out (outgoing, ejabberd checks
    the peer's certificate only when mod_s2s_dialback's ``access`` denies dialback for
    that peer, hook ``s2s_out_tls_verify``; with dialback loaded and the default access,
    an outgoing stream with a bad peer certificate falls back to dialback).

    ejabberd 23.01 (p1_xmpp 1.6.1) crashes on an outgoing connection whose PEER
    certificate carries an id-on-xmppAddr otherName (the sender gets
    ``internal-server-error``): certificates of servers that ejabberd connects to (the
    gateway's, a Prosody peer's) must carry DNS-IDs / SRV-IDs only.

    The runtime dirs live in a fresh world-traversable /tmp directory (pytest's basetemp
    is mode 0700, which user ejabberd cannot enter); ``workdir/<name>`` links to it while
    running, and ``stop()`` moves it there.
    """

    def __init__(self, workdir, name, ip, *, host, users=(), dns=None,
                 s2s_use_starttls="false", extra_yaml="", certfile=None, cafile=None,
                 dialback=True, s2s=True, components=None, service_options=None,
                 extra_listen_yaml="", modules=None, beams=(), dist_ip=None, loglevel="debug"):
        self.name = name
        self.ip = ip
        self.host = host
        self.users = list(users)
        self.dns = dns
        mode = str(s2s_use_starttls).lower()
        if mode not in ("false", "true", "optional", "required", "required_trusted"):
            raise ValueError(f"s2s_use_starttls {s2s_use_starttls!r}: false, true, optional, "
                             "required or required_trusted")
        if mode == "required_trusted":  # lab alias, see the class docstring
            mode, dialback = "required", False
        self.s2s_use_starttls = mode
        self.certfile = Path(certfile) if certfile else None
        self.cafile = Path(cafile) if cafile else None
        self.s2s = s2s
        self.dialback = dialback and s2s
        self.components = dict(components or {})
        self.service_options = dict(service_options or {})
        self.extra_listen_yaml = extra_listen_yaml
        self.modules = dict(modules or {})
        self.beams = [Path(b) for b in beams]
        self.dist_ip = dist_ip
        self.loglevel = loglevel
        self.extra_yaml = extra_yaml
        self.link = Path(workdir) / name
        self.base: Path | None = None
        self.node = f"ejabberd_{name.replace('-', '_')}@{dist_ip or 'localhost'}"
        self.proc: Proc | None = None

    # -- paths ------------------------------------------------------------
    @property
    def confdir(self):
        return self.base / "conf"

    @property
    def spool(self):
        return self.base / "spool"

    @property
    def logs(self):
        return self.base / "logs"

    def _prepare(self):
        self.base = Path(tempfile.mkdtemp(prefix=f"s2sgate-ejabberd-{self.name}-"))
        self.base.chmod(0o755)
        for d in (self.confdir, self.spool, self.logs):
            d.mkdir()
        self.link.parent.mkdir(parents=True, exist_ok=True)
        if self.link.is_dir() and not self.link.is_symlink():
            # The logs of an earlier run of a restarted server: keep them.
            runs = 1
            while self.link.with_name(f"{self.name}.run{runs}").exists():
                runs += 1
            self.link.rename(self.link.with_name(f"{self.name}.run{runs}"))
        elif self.link.is_symlink() or self.link.exists():
            self.link.unlink()
        self.link.symlink_to(self.base)
        (self.confdir / "ejabberd.yml").write_text(self._yaml())
        dist_ip = self.dist_ip or "127.0.0.1"
        ctl_cfg = (f'ERLANG_NODE={self.node}\n'
                   f'ERL_DIST_PORT={_free_port(dist_ip)}\n'
                   f'INET_DIST_INTERFACE={dist_ip}\n'
                   f'ERL_EPMD_ADDRESS={dist_ip}\n')
        if self.beams:
            # Not below a folder named ejabberd-*: code:lib_dir(ejabberd) would point there.
            ebin = self.base / "lib" / "s2sgate" / "ebin"
            ebin.mkdir(parents=True)
            for beam in self.beams:
                shutil.copy(beam, ebin / beam.name)
            ctl_cfg += f'ERL_OPTIONS="-pa {ebin}"\n'
        (self.confdir / "ejabberdctl.cfg").write_text(ctl_cfg)
        # Copies: user ejabberd cannot read inside pytest's 0700 basetemp.
        if self.certfile is not None:
            (self.confdir / "certs").mkdir()
            shutil.copy(self.certfile, self.confdir / "certs" / "server.pem")
        if self.cafile is not None:
            shutil.copy(self.cafile, self.confdir / "cafile.pem")
        inetrc = ["{lookup,[file,dns]}."]
        if self.dns is not None:
            # Copies: user ejabberd cannot read inside pytest's 0700 basetemp.
            shutil.copy(self.dns.resolv_conf, self.confdir / "resolv.conf")
            shutil.copy(self.dns.hosts_file, self.confdir / "hosts")
            inetrc += [f'{{resolv_conf,"{self.confdir / "resolv.conf"}"}}.',
                       f'{{hosts_file,"{self.confdir / "hosts"}"}}.']
        else:
            inetrc += ['{host,{127,0,0,1},["localhost"]}.']
        (self.confdir / "inetrc").write_text("\n".join(inetrc) + "\n")
        for root, dirs, files in os.walk(self.base):
            for n in dirs + files:
                shutil.chown(os.path.join(root, n), EJABBERD_USER, EJABBERD_USER)
        shutil.chown(self.base, EJABBERD_USER, EJABBERD_USER)

    def _yaml(self) -> str:
        return f"""# generated by tests/lab/ejabberd.py
hosts:
  - "{self.host}"
loglevel: {self.loglevel}
log_rotate_count: 0
{self._tls_yaml()}auth_method: internal
auth_password_format: plain
s2s_use_starttls: {self.s2s_use_starttls}
s2s_access: {"s2s" if self.s2s else "none"}
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  s2s:
    allow: all
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
listen:
  - port: 5222
    ip: "{self.ip}"
    module: ejabberd_c2s
    max_stanza_size: 262144
    access: c2s
{self._s2s_listener_yaml()}{self._component_listener_yaml()}{self.extra_listen_yaml}modules:
  mod_roster: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
{"  mod_s2s_dialback: {}" if self.dialback else ""}
{self._modules_yaml()}
{self.extra_yaml}
"""

    def _s2s_listener_yaml(self) -> str:
        if not self.s2s:
            return ""
        return f"""  - port: 5269
    ip: "{self.ip}"
    module: ejabberd_s2s_in
"""

    def _component_listener_yaml(self) -> str:
        if not self.components:
            return ""
        y = ["  - port: 5347", f'    ip: "{self.ip}"', "    module: ejabberd_service",
             "    check_from: false"]
        y += [f"    {k}: {_yaml_value(v)}" for k, v in self.service_options.items()]
        y += ["    hosts:"]
        for jid, secret in self.components.items():
            y += [f'      "{jid}":', f'        password: "{secret}"']
        return "\n".join(y) + "\n"

    def _modules_yaml(self) -> str:
        y = []
        for name, opts in self.modules.items():
            y.append(f"  {name}:" + ("" if opts else " {}"))
            y += [f"    {k}: {_yaml_value(v)}" for k, v in opts.items()]
        return "\n".join(y)

    def _tls_yaml(self) -> str:
        y = []
        if self.certfile is not None:
            y += ["certfiles:", f'  - "{self.confdir / "certs" / "server.pem"}"']
        else:
            y += ["certfiles: []"]
        if self.cafile is not None:
            y += [f'ca_file: "{self.confdir / "cafile.pem"}"',
                  f's2s_cafile: "{self.confdir / "cafile.pem"}"']
        return "\n".join(y) + "\n"

    def _ctl_argv(self, *args):
        argv = ["setpriv", f"--reuid={EJABBERD_USER}", f"--regid={EJABBERD_USER}",
                "--init-groups", "ejabberdctl", "--config-dir", str(self.confdir),
                "--spool", str(self.spool), "--logs", str(self.logs), *args]
        if self.dns is not None:
            argv = with_test_resolver(argv, self.dns.resolv_conf, self.dns.hosts_file)
        return argv

    def _env(self):
        env = dict(os.environ)
        env["HOME"] = str(self.spool)  # Erlang cookie lives here, readable by ejabberd
        env.pop("ERL_INETRC", None)
        return env

    def ctl(self, *args, timeout=60) -> subprocess.CompletedProcess:
        return subprocess.run(self._ctl_argv(*args), env=self._env(), cwd=self.spool,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, start_new_session=True)

    # -- lifecycle --------------------------------------------------------
    def start(self):
        if self.proc is not None and self.proc.running():
            return self
        for p in self._ports():
            if port_open(self.ip, p):
                raise RuntimeError(f"{self.name}: {self.ip}:{p} already in use")
        self._prepare()
        self.proc = Proc(f"ejabberd-{self.name}", self._ctl_argv("foreground"),
                         env=self._env(), cwd=self.spool,
                         logfile=self.logs / "foreground.out").start()
        try:
            self.proc.wait_port(self.ip, 5222, timeout=30)
            for p in self._ports()[1:]:
                self.proc.wait_port(self.ip, p, timeout=10)
            for jid, password in self.users:
                user, host = jid.split("@", 1)
                r = self.ctl("register", user, host, password)
                if r.returncode != 0:
                    raise RuntimeError(f"ejabberdctl register {jid} failed: "
                                       f"{r.stdout}{r.stderr}")
        except Exception as e:
            self.stop()
            raise RuntimeError(f"{e}\n--- ejabberd log tail ---\n"
                               + "\n".join(self.log_text().splitlines()[-40:])) from None
        return self

    def _ports(self):
        return [5222] + ([5269] if self.s2s else []) + ([5347] if self.components else [])

    def restart(self):
        """A fresh start: new runtime dir, users registered again (rosters are gone)."""
        self.stop()
        return self.start()

    def stop(self):
        if self.proc is None:
            return
        self.proc.stop(timeout=15)
        self.proc = None
        # Nothing of ours may survive: beam of this node, epmd.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _pgrep(self.node):
            time.sleep(0.1)
        left = _pgrep(self.node)
        if left:
            for line in left.splitlines():
                try:
                    os.kill(int(line.split()[0]), 9)
                except (ProcessLookupError, ValueError):
                    pass
        # Move the runtime dir (logs, spool) into workdir; nothing is left in /tmp.
        if self.base is not None and self.link.is_symlink():
            self.link.unlink()
            shutil.copytree(self.base, self.link, symlinks=True)
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = self.link

    def leftovers(self) -> str:
        """Processes of this node still alive (should be '')."""
        return _pgrep(self.node)

    def log_text(self) -> str:
        out = []
        if self.base is None:
            return ""
        for f in ("ejabberd.log", "error.log", "crash.log", "foreground.out"):
            try:
                out.append((self.logs / f).read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(out)


def build_module(source, outdir) -> Path:
    """Compile an ejabberd module with erlc against Debian's ejabberd, as
    docs/attach-ejabberd.md tells operators to; returns the .beam.

    Debian installs p1_xmpp as ``p1_xmpp-<vsn>``, so ``-include_lib("xmpp/...")``
    needs an include folder with a link ``xmpp -> p1_xmpp-<vsn>``."""
    [ejabberd] = sorted(Path("/usr/lib").glob("*/ejabberd-[0-9]*"))[-1:]
    [xmpp] = sorted(Path("/usr/lib/erlang/lib").glob("p1_xmpp-*"))[-1:]
    outdir = Path(outdir)
    include = outdir / "include"
    include.mkdir(parents=True, exist_ok=True)
    if not (include / "xmpp").is_symlink():
        (include / "xmpp").symlink_to(xmpp)
    r = subprocess.run(["erlc", "-Werror", "-I", str(ejabberd / "include"), "-I", str(include),
                        "-pa", str(ejabberd / "ebin"), "-o", str(outdir), str(source)],
                       check=False, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"erlc {source} failed:\n{r.stdout}{r.stderr}")
    return outdir / (Path(source).stem + ".beam")
