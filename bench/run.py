#!/usr/bin/env python3
"""s2sgate benchmark: ``python bench/run.py [--quick] [--only SECTION ...] [--profile]``.

Sections (see bench/README.md): ceiling, gateway, processes, e2e, setup, multiplex, scale.
Prints one table, writes bench/results.json.  Uses loopback addresses 127.0.0.200-229 only; everything it
starts is stopped at the end.  Needs root for the test DNS (setup, multiplex and e2e sections).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402
from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402

from tests.lab.certs import TestCA  # noqa: E402
from tests.lab.procs import Proc  # noqa: E402

SECTIONS = ("ceiling", "gateway", "inbound", "processes", "e2e", "setup", "multiplex", "scale")
SECRET = "bench-component-secret"
NS_STREAMS = "http://etherx.jabber.org/streams"

# Loopback plan (127.0.0.200-229)
COMP_IP, GW_IP, SINK_IP, LOAD_IP = "127.0.0.200", "127.0.0.201", "127.0.0.202", "127.0.0.203"
GWB_IP, COMPB_IP = "127.0.0.204", "127.0.0.205"      # the gateway section's "before" gateway
# What the gateway section's "before" gateway changes (its patch module) and the row label.
BEFORE_PATCH = "buffered_patch"
BEFORE_CHANGE = ("writes: TLS held one reactor turn, sent at the next writable event "
                 "(before, Twisted's) → written through and sent at once (now, s2sgate/net/tls.py)")
# What buffered_patch changes on the inbound path (the s2s side only reads there).
INBOUND_CHANGE = ("component link writes: sent at the socket's next writable event (before, "
                  "Twisted's) → at the end of each batch (now, XmlStream.sendNow)")
# processes section: two raw XEP-0114 listeners, two gateways, one sink
PROC_COMP = ("127.0.0.206", "127.0.0.207")
PROC_GW = ("127.0.0.208", "127.0.0.209")
PROC_SINK = "127.0.0.215"
NATIVE_SETUP = "127.0.0.224"   # setup section: the Prosody that sends natively
E2E_A, E2E_GW, E2E_B, NAT_A, NAT_B = ("127.0.0.210", "127.0.0.211", "127.0.0.212",
                                      "127.0.0.213", "127.0.0.214")
SETUP_PEERS = {"dialback": "127.0.0.220", "starttls+dialback": "127.0.0.221",
               "starttls+sasl": "127.0.0.222", "direct-tls": "127.0.0.223"}
MUX_PEER_IP, MUX_PEER = "127.0.0.225", "p-mux.test"   # multiplex section: the peer
DNS_IP = "127.0.0.229"
# inbound section: (now, before) raw XEP-0114 listeners, gateways and senders
INB_COMP, INB_GW, INB_SRC = (("127.0.0.216", "127.0.0.219"), ("127.0.0.217", "127.0.0.226"),
                             ("127.0.0.218", "127.0.0.227"))

TARGETS = {"gateway_vs_ceiling": 0.5, "e2e_ratio": 0.95, "kib_per_stream": 60, "p99_ms": 2.0,
           "processes_ratio": 1.7}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- message mix ------------------------------------------------------------

def stanza(seq, ns, to_bare, to_full, frm=None, xmlns=None):
    """One stanza of the mix: 80% ~250-byte chat messages, 15% presence, 5% iq.
    ``id='b<seq>.<ns>'`` carries the send time (time.monotonic_ns)."""
    f = f" from='{frm}'" if frm else ""
    x = f" xmlns='{xmlns}'" if xmlns else ""
    sid = f"b{seq}.{ns}"
    k = seq % 20
    if k < 16:
        head = (f"<message{x}{f} to='{to_bare}' type='chat' id='{sid}'><body>")
        tail = ("</body><active xmlns='http://jabber.org/protocol/chatstates'/>"
                "<request xmlns='urn:xmpp:receipts'/></message>")
        pad = max(10, 250 - len(head) - len(tail))
        text = ("Hello there, this is a benchmark chat message with some text in it. " * 4)[:pad]
        return head + text + tail
    if k < 19:
        return (f"<presence{x}{f} to='{to_full}' id='{sid}'><show>away</show>"
                f"<status>In a meeting</status><c xmlns='http://jabber.org/protocol/caps' "
                f"hash='sha-1' node='https://s2sgate.example/bench' "
                f"ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/></presence>")
    return (f"<iq{x}{f} to='{to_full}' type='get' id='{sid}'>"
            f"<query xmlns='jabber:iq:version'/></iq>")


def batch(seq0, n, **kw):
    ns = time.monotonic_ns()
    return "".join(stanza(seq0 + i, ns, **kw) for i in range(n)).encode()


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


# -- process measurements ---------------------------------------------------

CLK = os.sysconf("SC_CLK_TCK")


def cpu_split(pid):
    """(user, system) CPU seconds of a process so far (utime, stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK, int(fields[12]) / CLK


def cpu_seconds(pid):
    return sum(cpu_split(pid))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- the gateway in a child process -----------------------------------------

def gateway_toml(*, ip, component_host, local_domains, certfile, cafile, use_starttls,
                 addresses=(), nameserver=None, component_jid="s2s.home.test",
                 direct_tls_listen=(), level="info", extra=""):
    addr = ", ".join(f'{{ host = "{h}", ip_address = "{i}", port = {p} }}'
                     for h, i, p in addresses)
    dns = f'nameservers = ["{nameserver}"]' if nameserver else "nameservers = []"
    doms = ", ".join(f'"{d}"' for d in local_domains)
    dtls = ", ".join(f'"{d}"' for d in direct_tls_listen)
    return f"""
local_domains = [{doms}]
[component]
jid = "{component_jid}"
host = "{component_host}"
port = 5347
secret = "{SECRET}"
max_retry_delay = 1
[s2s]
listen = ["tcp:5269:interface={ip}"]
direct_tls_listen = [{dtls}]
use_starttls = "{use_starttls}"
certfile = "{certfile}"
cafile = "{cafile}"
shared = "bench-dialback-secret"
queue_limit = 100000
address = [{addr}]
[s2s.dns]
{dns}
timeout = 2
retries = 1
[s2s.outgoing]
connection_timeout = 5
[admin]
listen = ""
[log]
level = "{level}"
{extra}"""


class Gateway:
    """``twistd -n s2sgate --config FILE`` in its own process group."""

    nodelay = False   # --nodelay: experiment with TCP_NODELAY (bench/nodelay_patch.py)
    tracemalloc = False   # --tracemalloc: Python allocation growth in the scale section

    hops = False   # --hops: the probe also times each stanza's hops (costs the gateway CPU)

    def __init__(self, workdir, name, toml, probe=False, patches=()):
        self.probe = probe   # bench/tail_patch.py: per-turn and GC timings, on SIGUSR1
        self.patches = tuple(patches)   # more bench/*_patch.py modules (before/after runs)
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "s2sgate.toml"
        self.config.write_text(toml)
        self.logfile = self.dir / "twistd.log"
        env = dict(os.environ, S2SGATE_BENCH_TRACEMALLOC=str(self.dir / "tracemalloc.txt"),
                   S2SGATE_BENCH_TAIL=str(self.dir / "tail.json"),
                   S2SGATE_BENCH_HOPS="1" if self.hops else "0")
        self.proc = Proc(f"s2sgate-{name}", env=env, argv=
                         [sys.executable, "-c", self.bootstrap(), "-n", f"--logfile={self.logfile}",
                          "--pidfile=", "s2sgate", "--config", str(self.config)],
                         cwd=str(self.dir), logfile=self.dir / "stdout.log")


    @property
    def pid(self):
        return self.proc.pid

    def bootstrap(self):
        mods = [m for m, on in (("nodelay_patch", self.nodelay),
                                ("tracemalloc_patch", self.tracemalloc),
                                ("tail_patch", self.probe),
                                ) if on] + list(self.patches)
        patch = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import {', '.join(mods)}; "
                 if mods else "")
        return patch + "from twisted.scripts.twistd import run; run()"

    def start(self):
        self.proc.start()
        return self

    def stop(self):
        self.proc.stop()

    async def tail(self):
        """What the probe recorded since the last call (bench/tail_patch.py)."""
        path = self.dir / "tail.json"
        if path.exists():
            path.unlink()
        os.kill(self.pid, signal.SIGUSR1)
        await wait_until(path.exists, 10, what="the gateway's probe summary")
        return json.loads(path.read_text())

    def log_text(self):
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""


# -- the c2s side as a raw XEP-0114 server (the gateway connects to it) ------

class ComponentServer(Protocol):
    def connectionMade(self):
        self.buf = b""
        self.ready = False
        self.headerSent = False
        self.factory.current = self
        self.transport.setTcpNoDelay(True)   # the load side must not add Nagle delays

    def dataReceived(self, data):
        if self.ready:
            self.factory.errors += data.count(b"type='error'")
            self.factory.counter.feed(data)
            return
        self.buf += data
        if not self.headerSent and b"<stream:stream" in self.buf:
            self.transport.write(
                f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='{NS_STREAMS}' "
                f"id='bench{time.monotonic_ns()}' from='{self.factory.jid}'>".encode())
            self.headerSent = True
        if b"</handshake>" in self.buf:
            self.transport.write(b"<handshake/>")
            self.ready = True
            waiters, self.factory.waiters = self.factory.waiters, []
            for d in waiters:
                d.callback(self)

    def connectionLost(self, reason):
        if self.factory.current is self:
            self.factory.current = None


class ComponentFactory(Factory):
    protocol = ComponentServer

    def __init__(self, jid):
        self.jid = jid
        self.current = None
        self.waiters = []
        self.errors = 0
        self.counter = peers.Counter()   # what the gateway delivers (the inbound section)

    def whenReady(self, timeout=20):
        if self.current is not None and self.current.ready:
            return defer.succeed(self.current)
        d = defer.Deferred()
        self.waiters.append(d)
        d.addTimeout(timeout, reactor)
        return d


# -- helpers ----------------------------------------------------------------

async def stop_listening(port, factory):
    if factory.current is not None:
        factory.current.transport.abortConnection()
    await port.stopListening()


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class Child:
    """A multiprocessing child (spawned, so it shares nothing with the reactor)."""

    def __init__(self, target, *args):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.p = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.p.start()

    def call(self, cmd, timeout=600):
        self.conn.send(cmd)
        if not self.conn.poll(timeout):
            raise TimeoutError(f"child did not answer {cmd!r}")
        return self.conn.recv()

    async def acall(self, cmd, timeout=600):
        """Ask without blocking the reactor (for long commands)."""
        self.conn.send(cmd)
        deadline = time.monotonic() + timeout
        while not self.conn.poll():
            if time.monotonic() > deadline:
                raise TimeoutError(f"child did not answer {cmd!r}")
            await sleep(0.05)
        return self.conn.recv()

    def stop(self):
        if self.p.is_alive():
            self.p.terminate()
        self.p.join(5)
        if self.p.is_alive():
            self.p.kill()
            self.p.join(5)


async def wait_until(pred, timeout, step=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await sleep(step)


def abba(variants, r):
    """The variants in round ``r``'s order: as given in even rounds, reversed in odd ones
    (now, before, before, now), so neither gateway always runs first after the other."""
    names = list(variants)
    return names if r % 2 == 0 else names[::-1]


async def paced(write, make, rate, duration):
    """Write ``rate`` stanzas/s for ``duration`` s in 1 ms ticks; returns how many."""
    start = time.monotonic()
    sent = 0
    total = int(rate * duration)
    while sent < total:
        due = min(total, int(rate * (time.monotonic() - start)) + 1)
        if due > sent:
            write(make(sent, due - sent))
            sent = due
        await sleep(0.001)
    return sent


def latency_ms(samples, seq_min=0):
    return [(r - s) / 1e6 for seq, s, r in samples if seq >= seq_min]


class KernelSends:
    """When the bench's own socket sends handed each stanza to the kernel (``b<seq>.`` ids
    in what ``writeSomeData`` sent): a stanza is stamped when it is made, then waits in the
    bench's Twisted transport for its next writable event.  That wait is the bench's, not
    the gateway's.  Installed for one measurement, then removed."""

    SEQ = re.compile(rb"id='b(\d+)\.")

    def __init__(self, enabled=True):
        from twisted.internet import tcp
        self.tcp, self.times, self.enabled = tcp, {}, enabled
        self.original = tcp.Connection.writeSomeData

    def __enter__(self):
        if not self.enabled:
            return self
        original, times, seq = self.original, self.times, self.SEQ

        def writeSomeData(conn, data):
            sent = original(conn, data)
            if isinstance(sent, int) and sent > 0:
                t = time.monotonic_ns()
                for k in seq.findall(bytes(data[:sent])):
                    times.setdefault(k.decode(), t)
            return sent
        self.tcp.Connection.writeSomeData = writeSomeData
        return self

    def __exit__(self, *exc):
        self.tcp.Connection.writeSomeData = self.original


def hop_split(samples, probe, seq_min=0, kernel=None):
    """Split each stanza's latency at the gateway's probe points (bench/tail_patch.py):
    load side (sent by the bench → read by the gateway), gateway (read → plaintext into
    OpenSSL), TLS out (→ the socket send after it), sink side (→ counted by the sink).
    With ``kernel`` (L{KernelSends}.times) the load side is split in two: the bench's own
    wait (made → handed to the kernel) and the wait before the gateway read it (kernel →
    read: the gateway busy with earlier input, or not yet woken).
    Pops the probe's raw ``hops``.  p50/p99 per hop in ms, and how many stanzas had all."""
    hops = probe.pop("hops", None)
    if not hops:
        return None
    t_in, t_tls, t_sent = hops["in"], hops["tls"], hops["sent"]
    parts = {"load_side": [], "bench_send": [], "gateway_input_wait": [], "gateway": [],
             "tls_out": [], "sink_side": [], "read_to_send": [], "kernel_to_send": []}
    for seq, s, r in samples:
        k = str(seq)
        if seq < seq_min or k not in t_in or k not in t_tls or k not in t_sent:
            continue
        if kernel is not None and k not in kernel:
            continue
        a, b, c = t_in[k], t_tls[k], t_sent[k]
        if kernel is not None:
            parts["bench_send"].append((kernel[k] - s) / 1e6)
            parts["gateway_input_wait"].append((a - kernel[k]) / 1e6)
            parts["kernel_to_send"].append((c - kernel[k]) / 1e6)
        parts["load_side"].append((a - s) / 1e6)
        parts["gateway"].append((b - a) / 1e6)
        parts["tls_out"].append((c - b) / 1e6)
        parts["sink_side"].append((r - c) / 1e6)
        parts["read_to_send"].append((c - a) / 1e6)
    if not parts["gateway"]:
        return None
    out = {name: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for name, v in parts.items() if v}
    out["stanzas"] = len(parts["gateway"])
    return out


# -- ceiling ----------------------------------------------------------------

def feed_all(parser, header, data):
    t0 = time.process_time()
    parser.feed(header)
    for i in range(0, len(data), 65536):
        parser.feed(data[i:i + 65536])
    return time.process_time() - t0


def run_ceiling(quick):
    from s2sgate.xmpp.parser import StreamParser
    from s2sgate.xmpp.serialize import toXml  # the gateway's serializer (XmlStream.serialize)
    n = 20000 if quick else 60000
    data = batch(0, n, to_bare="bob@sink.test", to_full="bob@sink.test/res",
                 frm="alice@home.test/bench")
    header = (f"<stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
              f"xmlns:db='jabber:server:dialback' to='home.test' version='1.0'>").encode()
    prefixes = {NS_STREAMS: "stream", "jabber:server:dialback": "db"}
    best = {}
    for _ in range(3):
        # parse only (elements dropped as they come, as a forwarding process would)
        count = [0]

        def drop(e):
            count[0] += 1
        t = feed_all(StreamParser(lambda h: None, drop, lambda: None), header, data)
        assert count[0] == n, count[0]
        best["parse"] = min(best.get("parse", 1e9), t)

        # parse + serialize each stanza as it is parsed (the forwarding loop)
        out = []

        def forward(e):
            out.append(toXml(e, prefixes=prefixes, defaultUri="jabber:server",
                             prefixesInScope=["stream", "db"]).encode("utf-8"))
        t = feed_all(StreamParser(lambda h: None, forward, lambda: None), header, data)
        assert len(out) == n
        best["both"] = min(best.get("both", 1e9), t)

        # serialize only (elements parsed beforehand)
        elements = []
        feed_all(StreamParser(lambda h: None, elements.append, lambda: None), header, data)
        t0 = time.process_time()
        for e in elements:
            toXml(e, prefixes=prefixes, defaultUri="jabber:server",
                  prefixesInScope=["stream", "db"]).encode("utf-8")
        best["serialize"] = min(best.get("serialize", 1e9), time.process_time() - t0)
        elements = out = []
    return {"stanzas": n, "bytes_per_stanza": round(len(data) / n),
            "parse_per_s": n / best["parse"], "serialize_per_s": n / best["serialize"],
            "stanzas_per_s": n / best["both"]}


# -- gateway ----------------------------------------------------------------

class CpuWatch:
    """CPU seconds of named processes (and of the whole machine) between two points."""

    def __init__(self, pids):
        self.pids = dict(pids)
        self.start()

    def start(self):
        self.t0 = time.monotonic()
        self.m0 = machine_busy()
        self.st0 = machine_steal()
        self.c0 = {k: cpu_seconds(p) for k, p in self.pids.items()}

    def stop(self):
        wall = time.monotonic() - self.t0
        used = {k: cpu_seconds(p) - self.c0[k] for k, p in self.pids.items()}
        machine = machine_busy() - self.m0
        steal = machine_steal() - self.st0
        return {"wall_s": wall, "cpu_s": used, "machine_cpu_s": machine, "steal_cpu_s": steal,
                "others_cpu_s": max(0.0, machine - steal - sum(used.values()))}


def machine_steal():
    """CPU seconds the hypervisor gave other guests while ours wanted to run (/proc/stat
    steal, all cores)."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / CLK


def machine_busy():
    """Busy CPU seconds of the machine, all cores (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK


async def burst(links, sink, expect):
    """Write pre-serialised payloads (``[(transport, bytes)]``) at once; time to the last
    stanza at the sink.  Returns (stanzas per second, seconds)."""
    sink.call("reset")
    t0 = time.monotonic_ns()
    for transport, payload in links:
        transport.write(payload)
    await wait_until(lambda: sink.call("last")[0] >= expect, 180, 0.01,
                     what=f"{expect} stanzas at the sink")
    count, last = sink.call("last")
    seconds = (last - t0) / 1e9
    return count / seconds, seconds


PIN = False   # --pin: the gateway section's gateways on the last CPU, the bench and sink elsewhere


HALT_POLL = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"
HALT_POLL_NS = None   # --halt-poll NS: the gateway section also measures half load with it


def cpu_idle():
    """How this machine's cores idle: the cpuidle driver, and for a guest's haltpoll driver
    how long a core polls before it halts (0: it halts at once, and waking it goes through
    the hypervisor)."""
    try:
        driver = Path("/sys/devices/system/cpu/cpuidle/current_driver").read_text().strip()
    except OSError:
        return "?"
    try:
        return f"{driver}, halt-poll {int(Path(HALT_POLL).read_text())} ns"
    except (OSError, ValueError):
        return driver


class HaltPoll:
    """``with HaltPoll(ns):`` a guest's cores poll ``ns`` before they halt, and the old value
    comes back afterwards (root, haltpoll cpuidle driver)."""

    def __init__(self, ns):
        self.ns, self.old = ns, None

    def __enter__(self):
        self.old = Path(HALT_POLL).read_text().strip()
        Path(HALT_POLL).write_text(str(self.ns))
        return self

    def __exit__(self, *exc):
        Path(HALT_POLL).write_text(self.old)


def check_halt_poll():
    """Stop at once with one line if ``--halt-poll`` cannot be set here."""
    try:
        old = Path(HALT_POLL).read_text().strip()
        Path(HALT_POLL).write_text(old)
    except OSError as e:
        raise SystemExit(f"bench/run.py: --halt-poll needs the haltpoll cpuidle driver and root "
                         f"({HALT_POLL}: {e.strerror})")


def late_shape(lat_by_send, over_ms=2.0, window_ns=100_000_000):
    """How the stanzas later than ``over_ms`` spread over the run: ``[(sent_ns, ms)]`` →
    their share, in how many of the run's 100 ms windows they fall, and the worst window
    (its late stanzas and its longest latency).  A few windows with many: stalls; many
    windows with a tick's worth each: the load's own queueing."""
    if not lat_by_send:
        return None
    t0 = min(t for t, _ in lat_by_send)
    windows = {}
    late = 0
    for t, ms in lat_by_send:
        w = windows.setdefault((t - t0) // window_ns, [0, 0.0])
        if ms > over_ms:
            late += 1
            w[0] += 1
            w[1] = max(w[1], ms)
    hit = [w for w in windows.values() if w[0]]
    worst = max(hit, default=[0, 0.0])
    return {"over_ms": over_ms, "share": late / len(lat_by_send), "windows": len(windows),
            "windows_late": len(hit), "worst_window_late": worst[0],
            "worst_window_max_ms": worst[1]}


def pin(pid, cpus):
    """Every thread of process C{pid} onto C{cpus}."""
    for task_id in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task_id), cpus)


async def run_gateway(ctx, quick, profile):
    """One gateway (``now``) and, in the same run, one with the parser's trickle scan as it
    was before (``before``, bench/oldscan_patch.py): throughput runs alternate between
    them; latency at the same paced rate for both."""
    wd, ca = ctx["workdir"], ctx["ca"]
    gwcert = ca.issue("home.test", dns=["home.test"])
    sinkcert = ca.issue("sink.test", dns=["sink.test"])
    res = {}
    sink = Child(peers.sink_main, SINK_IP, 5269, "sink.test", str(sinkcert[0]), str(ca.cafile))
    variants = {"now": (COMP_IP, GW_IP, ()),
                "before": (COMPB_IP, GWB_IP, (BEFORE_PATCH,))}
    if quick:
        del variants["before"]
    comps, ports, gws, links = {}, [], {}, {}
    try:
        if not sink.conn.poll(20) or sink.conn.recv() != "ready":
            raise RuntimeError("sink did not start")
        for name, (cip, gip, patches) in variants.items():
            comps[name] = ComponentFactory("s2s.home.test")
            ports.append((reactor.listenTCP(5347, comps[name], interface=cip), comps[name]))
            gws[name] = Gateway(wd, f"gateway-{name}", gateway_toml(
                ip=gip, component_host=cip, local_domains=["home.test"],
                certfile=gwcert[0], cafile=ca.cafile, use_starttls="required",
                addresses=[("sink.test", SINK_IP, 5269)]), probe=True, patches=patches).start()
        for name in variants:
            links[name] = await comps[name].whenReady(30)
        if PIN:
            last = max(os.sched_getaffinity(0))
            for g in gws.values():
                pin(g.pid, {last})
            for pid in (os.getpid(), sink.p.pid):
                pin(pid, os.sched_getaffinity(0) - {last})
        gw, link = gws["now"], links["now"]
        kw = dict(to_bare="bob@sink.test", to_full="bob@sink.test/res",
                  frm="alice@home.test/bench")
        seq = [0]

        def make(_, k):
            b = batch(seq[0], k, **kw)
            seq[0] += k
            return b

        # warm-up: open and authenticate the outbound streams, warm caches
        for name in variants:
            sink.call("reset")
            links[name].transport.write(make(0, 2000))
            await wait_until(lambda: sink.call("count")[0] >= 2000, 30,
                             what="warm-up at the sink")
        sinkinfo = sink.call("count")
        res["outbound_streams"] = sinkinfo[1]
        n = 30000 if quick else 100000
        runs = {name: [] for name in variants}
        sink.call(("timestamps", False))
        for r in range(1 if quick else 2):
            for name in abba(variants, r):
                payload = make(0, n)
                u0, s0 = cpu_split(gws[name].pid)
                rate, _ = await burst([(links[name].transport, payload)], sink, n)
                u1, s1 = cpu_split(gws[name].pid)
                runs[name].append({"rate": rate, "cpu": u1 + s1 - u0 - s0,
                                   "system": s1 - s0})
        sink.call(("timestamps", True))
        best = {name: max(v, key=lambda x: x["rate"]) for name, v in runs.items()}
        res["stanzas"] = n
        res["max_per_s"] = best["now"]["rate"]
        res["runs_per_s"] = [round(x["rate"]) for x in runs["now"]]
        res["cpu_s_per_10k"] = best["now"]["cpu"] / n * 10000
        res["system_share_of_cpu"] = best["now"]["system"] / max(best["now"]["cpu"], 1e-9)
        res["gateway_rss_kib"] = rss_kib(gw.pid)
        if profile:
            res["profile"] = await profile_gateway(gw, link, make, n, sink, wd)
            res["profile_paced"] = await profile_gateway(gw, link, make, 60000, sink, wd,
                                                         rate=res["max_per_s"] / 2)

        async def paced_latency(name, rate, dur):
            sink.call("reset")
            seq0 = seq[0]
            g = gws[name]
            await g.tail()
            u0, s0 = cpu_split(g.pid)
            steal0, t0 = machine_steal(), time.monotonic()
            with KernelSends(Gateway.hops) as kernel:
                sent = await paced(links[name].transport.write, make, rate, dur)
                await wait_until(lambda: sink.call("count")[0] >= sent, 30, what="paced stanzas")
            u1, s1 = cpu_split(g.pid)
            steal = (machine_steal() - steal0) / (time.monotonic() - t0)
            c0, c1 = u0 + s0, u1 + s1
            probe = await g.tail()
            samples = sink.call("report")["samples"]
            lat = latency_ms(samples, seq0)
            return {"rate": rate, "cpu_share": (c1 - c0) / dur, "samples": len(lat),
                    "cpu_s_per_10k": (c1 - c0) / sent * 10000,
                    "system_share_of_cpu": (s1 - s0) / max(c1 - c0, 1e-9),
                    "steal_cores": steal,
                    "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat),
                    "late": late_shape([(t, (r - t) / 1e6) for q, t, r in samples if q >= seq0]),
                    "hops": hop_split(samples, probe, seq0, kernel.times), "probe": probe}

        # latency at half of the max rate, twice per gateway in the order now, before, before,
        # now (an order effect shows as a difference between a gateway's two runs); the
        # figure is the worse of now's two
        rate = res["max_per_s"] / 2
        dur = 3 if quick else 6
        order = ["now", "before", "before", "now"] if "before" in variants else ["now", "now"]
        halves = {name: [] for name in variants}
        for name in order:
            halves[name].append(await paced_latency(name, rate, dur))
        half = max(halves["now"], key=lambda h: h["p99_ms"])
        res["half_rate_per_s"] = rate
        res["half_rate_cpu_share"] = half["cpu_share"]
        res["half_rate_cpu_s_per_10k"] = half["cpu_s_per_10k"]
        res["half_rate_system_share"] = half["system_share_of_cpu"]
        res["half_rate_steal_cores"] = [h["steal_cores"] for h in halves["now"]]
        res["latency_samples"] = half["samples"]
        res["p50_ms"], res["p99_ms"], res["max_ms"] = half["p50_ms"], half["p99_ms"], half["max_ms"]
        res["half_rate_p99_runs_ms"] = [h["p99_ms"] for h in halves["now"]]
        res["half_rate_probe"] = half["probe"]
        res["half_rate_hops"] = half["hops"]
        res["half_rate_late"] = half["late"]
        if HALT_POLL_NS is not None:
            # the same half load with the cores polling before they halt, alternating with
            # the machine as it is, in the order poll, as is, as is, poll
            idle = {"poll": [], "as is": []}
            for setting in ("poll", "as is", "as is", "poll"):
                if setting == "poll":
                    with HaltPoll(HALT_POLL_NS):
                        idle[setting].append(await paced_latency("now", rate, dur))
                else:
                    idle[setting].append(await paced_latency("now", rate, dur))
            res["halt_poll"] = {"ns": HALT_POLL_NS, "machine": cpu_idle(), "runs": {
                k: [{f: h[f] for f in ("p50_ms", "p99_ms", "cpu_s_per_10k", "cpu_share",
                                       "steal_cores", "late")}
                    | {"turns_over_1ms": h["probe"]["turns_over_1ms"],
                       "turns": h["probe"]["turns"]} for h in v]
                for k, v in idle.items()}}
        if "before" in variants:
            b_ = max(halves["before"], key=lambda h: h["p99_ms"])
            b_["p99_runs_ms"] = [h["p99_ms"] for h in halves["before"]]
            res["before"] = {
                "change": BEFORE_CHANGE,
                "max_per_s": best["before"]["rate"],
                "runs_per_s": [round(x["rate"]) for x in runs["before"]],
                "cpu_s_per_10k": best["before"]["cpu"] / n * 10000,
                "half_rate": b_}
        # latency at lower loads: 200/s, 10% and 25% of the max
        sweep = {}
        for label, r_ in (("200/s", 200), ("10%", res["max_per_s"] * 0.1),
                          ("25%", res["max_per_s"] * 0.25)):
            sink.call("reset")
            seq0 = seq[0]
            sent = await paced(link.transport.write, make, r_, 2)
            await wait_until(lambda: sink.call("count")[0] >= sent, 30, what="low-rate stanzas")
            lat = latency_ms(sink.call("report")["samples"], seq0)
            sweep[label] = {"rate": r_, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}
        res["latency_sweep"] = sweep
        res["low_rate_p50_ms"], res["low_rate_p99_ms"] = sweep["200/s"]["p50_ms"], sweep["200/s"]["p99_ms"]
        res["bounced"] = sum(c.errors for c in comps.values())
        return res
    finally:
        for g in gws.values():
            g.stop()
        for port, comp in ports:
            await stop_listening(port, comp)
        try:
            sink.call("stop", timeout=5)
        except Exception:  # noqa: BLE001
            pass
        sink.stop()


# -- the inbound direction ----------------------------------------------------

def mix_templates(period=20, **kw):
    """One period of the mix, each stanza cut around its id value: what the inbound
    sender (bench/peers.py) fills with ``b<seq>.<time of writing>``."""
    out = []
    for k in range(period):
        text = stanza(k, 0, **kw).encode()
        i = text.index(b"id='b") + len(b"id='")
        j = text.index(b"'", i)
        out.append((text[:i], text[j:]))
    return out


async def run_inbound(ctx, quick):
    """The other direction: a remote server's stream (STARTTLS, SASL EXTERNAL) → gateway →
    component link → the c2s side (the bench).  Max throughput, CPU per stanza and latency
    at half load, for ``now`` and the ``before`` gateway (BEFORE_PATCH) in one run."""
    wd, ca = ctx["workdir"], ctx["ca"]
    gwcert = ca.issue("home.test", dns=["home.test"])
    loadcert = ca.issue("load.test", dns=["*.load.test"])
    kw = dict(to_bare="bob@home.test", to_full="bob@home.test/res",
              frm="alice@s0.load.test/bench")
    variants = {"now": 0, "before": 1}
    if quick:
        del variants["before"]
    comps, ports, gws, senders = {}, [], {}, {}
    res = {}
    try:
        for name, i in variants.items():
            comps[name] = ComponentFactory("s2s.home.test")
            ports.append((reactor.listenTCP(5347, comps[name], interface=INB_COMP[i]),
                          comps[name]))
            gws[name] = Gateway(wd, f"inbound-{name}", gateway_toml(
                ip=INB_GW[i], component_host=INB_COMP[i], local_domains=["home.test"],
                certfile=gwcert[0], cafile=ca.cafile, use_starttls="required"),
                patches=(BEFORE_PATCH,) if name == "before" else ()).start()
        for name, i in variants.items():
            await comps[name].whenReady(30)
            senders[name] = Child(peers.sender_main, INB_GW[i], 5269, "home.test",
                                  str(loadcert[0]), str(ca.cafile), INB_SRC[i])
            got = senders[name].conn.recv() if senders[name].conn.poll(60) else "no answer"
            if got != "ready":
                raise RuntimeError(f"inbound sender did not connect: {got}")
            senders[name].call(("templates", mix_templates(**kw)))
        seq = [0]

        def payload(k):
            b = batch(seq[0], k, **kw)
            seq[0] += k
            return b

        async def delivered(name, expect, what):
            counter = comps[name].counter
            await wait_until(lambda: counter.count >= expect, 60, 0.01, what=what)

        for name in variants:   # warm-up
            comps[name].counter.reset()
            await senders[name].acall(("burst", payload(2000)))
            await delivered(name, 2000, "warm-up at the c2s side")
        n = 30000 if quick else 100000
        runs = {name: [] for name in variants}
        for r in range(1 if quick else 2):
            for name in abba(variants, r):
                counter = comps[name].counter
                counter.reset()
                counter.timestamps = False
                data = payload(n)
                u0, s0 = cpu_split(gws[name].pid)
                t0 = time.monotonic_ns()
                await senders[name].acall(("burst", data))
                await delivered(name, n, "the inbound burst")
                u1, s1 = cpu_split(gws[name].pid)
                runs[name].append({"rate": n / ((counter.last - t0) / 1e9),
                                   "cpu": u1 + s1 - u0 - s0})
                counter.timestamps = True
        best = {name: max(v, key=lambda x: x["rate"]) for name, v in runs.items()}

        async def paced_latency(name, rate, dur):
            counter = comps[name].counter
            counter.reset()
            seq0 = seq[0]
            c0 = cpu_seconds(gws[name].pid)
            sent = await senders[name].acall(("paced", seq0, rate, dur))
            seq[0] += sent
            await delivered(name, sent, "paced inbound stanzas")
            c1 = cpu_seconds(gws[name].pid)
            lat = latency_ms(counter.samples, seq0)
            return {"rate": rate, "cpu_share": (c1 - c0) / dur, "samples": len(lat),
                    "cpu_s_per_10k": (c1 - c0) / sent * 10000,
                    "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat)}

        rate = best["now"]["rate"] / 2
        dur = 3 if quick else 6
        order = ["now", "before", "before", "now"] if "before" in variants else ["now", "now"]
        halves = {name: [] for name in variants}
        for name in order:
            halves[name].append(await paced_latency(name, rate, dur))
        for name in variants:
            half = max(halves[name], key=lambda h: h["p99_ms"])
            res[name] = {"max_per_s": best[name]["rate"],
                         "runs_per_s": [round(x["rate"]) for x in runs[name]],
                         "cpu_s_per_10k": best[name]["cpu"] / n * 10000,
                         "half_rate": dict(half, p99_runs_ms=[h["p99_ms"] for h in halves[name]])}
        res["stanzas"] = n
        res["half_rate_per_s"] = rate
        res["change"] = (INBOUND_CHANGE if BEFORE_PATCH == "buffered_patch" else BEFORE_CHANGE)
        res["bounced"] = sum(c.errors for c in comps.values())
        return res
    finally:
        for sender in senders.values():
            try:
                sender.call(("close",), timeout=5)
            except Exception:  # noqa: BLE001
                pass
            sender.stop()
        for g in gws.values():
            g.stop()
        for port, comp in ports:
            await stop_listening(port, comp)


# -- one process vs two ------------------------------------------------------

PROC_COMPONENTS = ("s2s1.home.test", "s2s2.home.test")


def rendezvous(components, domain):
    """The components in preference order for ``domain``, as etc/prosody/mod_s2sgate.lua
    (and the ejabberd module) rank them: the first six bytes of SHA-256("<component>
    <domain>"), highest first, ties by list order."""
    def score(c):
        return int.from_bytes(hashlib.sha256(f"{c} {domain}".encode()).digest()[:6], "big")
    return sorted(components, key=lambda c: (-score(c), components.index(c)))


def balanced_domains(per):
    """The first ``per`` remote domains (r0.sink.test, r1.sink.test, …) the hash gives each
    component: both carry the same share, as many domains would on average."""
    owners = {c: [] for c in PROC_COMPONENTS}
    i = 0
    while any(len(v) < per for v in owners.values()):
        d = f"r{i}.sink.test"
        i += 1
        c = rendezvous(PROC_COMPONENTS, d)[0]
        if len(owners[c]) < per:
            owners[c].append(d)
    return owners


def spread(seq0, n, domains, owner):
    """``n`` stanzas of the mix, round robin over ``domains``, pre-serialised per link
    (``owner(domain)``: the index of the component link that carries it)."""
    ns = time.monotonic_ns()
    out = {}
    for i in range(n):
        d = domains[i % len(domains)]
        out.setdefault(owner(d), []).append(
            stanza(seq0 + i, ns, to_bare=f"bob@{d}", to_full=f"bob@{d}/res",
                   frm="alice@home.test/bench"))
    return {k: "".join(v).encode() for k, v in out.items()}


async def run_processes(ctx, quick):
    """Max throughput with one gateway process against two (issue 14 part 1): the remote
    domains split between the two component links by the routing modules' rendezvous hash.
    Runs alternate one/two; CPU of every process over each run."""
    wd, ca = ctx["workdir"], ctx["ca"]
    owners = balanced_domains(4)
    domains = [d for pair in zip(*owners.values()) for d in pair]
    gwcert = ca.issue("home.test", dns=["home.test"])
    sinkcert = ca.issue("sink.test", dns=["sink.test", "*.sink.test"])
    sink = Child(peers.sink_main, PROC_SINK, 5269, "sink.test", str(sinkcert[0]),
                 str(ca.cafile))
    comps, ports, gws, links = [], [], [], []
    res = {"domains": owners}
    try:
        if not sink.conn.poll(20) or sink.conn.recv() != "ready":
            raise RuntimeError("sink did not start")
        for i, jid in enumerate(PROC_COMPONENTS):
            comp = ComponentFactory(jid)
            comps.append(comp)
            ports.append((reactor.listenTCP(5347, comp, interface=PROC_COMP[i]), comp))
            gws.append(Gateway(wd, f"process-{i + 1}", gateway_toml(
                ip=PROC_GW[i], component_host=PROC_COMP[i], component_jid=jid,
                local_domains=["home.test"], certfile=gwcert[0], cafile=ca.cafile,
                use_starttls="required",
                addresses=[(d, PROC_SINK, 5269) for d in domains])).start())
        for comp in comps:
            links.append(await comp.whenReady(30))
        seq = [0]

        def payloads(k, two):
            def owner(d):
                if not two:
                    return 0      # the routing module with one component listed
                return PROC_COMPONENTS.index(rendezvous(PROC_COMPONENTS, d)[0])
            out = spread(seq[0], k, domains, owner)
            seq[0] += k
            return [(links[i].transport, data) for i, data in sorted(out.items())]

        # warm-up: gateway 1 opens a stream to every domain, gateway 2 to its own
        for two in (False, True):
            writes = payloads(800, two)
            await burst(writes, sink, 800)
        res["sink_streams"] = sink.call("count")[1]
        sink.call(("timestamps", False))
        n = 30000 if quick else 100000
        pids = {"gateway 1": gws[0].pid, "gateway 2": gws[1].pid, "sink": sink.p.pid,
                "load (bench)": os.getpid()}
        runs = {"one": [], "two": []}
        # one, two, one, two, …: the machine's speed moves from run to run; each mode's
        # best is its max, and every pair's ratio is kept beside it
        for _ in range(1 if quick else 3):
            for mode in ("one", "two"):
                writes = payloads(n, mode == "two")
                watch = CpuWatch(pids)
                rate, seconds = await burst(writes, sink, n)
                cpu = watch.stop()
                runs[mode].append({"rate": rate, "seconds": seconds, "cpu": cpu,
                                   "bytes_per_link": [len(data) for _, data in writes]})
        sink.call(("timestamps", True))
        res["stanzas"] = n
        for mode, v in runs.items():
            best = max(v, key=lambda x: x["rate"])
            res[mode] = {"max_per_s": best["rate"], "runs_per_s": [round(x["rate"]) for x in v],
                         "cpu": best["cpu"],
                         # share of one core each process used over the run
                         "cores": {k: c / best["cpu"]["wall_s"]
                                   for k, c in best["cpu"]["cpu_s"].items()},
                         "machine_cores": best["cpu"]["machine_cpu_s"] / best["cpu"]["wall_s"],
                         "others_cores": best["cpu"]["others_cpu_s"] / best["cpu"]["wall_s"],
                         "steal_cores": best["cpu"]["steal_cpu_s"] / best["cpu"]["wall_s"],
                         "gateway_cpu_s_per_10k": sum(c for k, c in best["cpu"]["cpu_s"].items()
                                                      if k.startswith("gateway")) / n * 10000}
        res["ratio"] = res["two"]["max_per_s"] / res["one"]["max_per_s"]
        res["pair_ratios"] = [t["rate"] / o["rate"] for o, t in zip(runs["one"], runs["two"])]
        # every run: the gateways' cores and CPU per 10 000 stanzas, the steal
        res["runs"] = {mode: [{"rate": round(x["rate"]),
                               "gateway_cores": round(sum(c for k, c in x["cpu"]["cpu_s"].items()
                                                          if k.startswith("gateway"))
                                                      / x["cpu"]["wall_s"], 2),
                               "gateway_cpu_s_per_10k": round(
                                   sum(c for k, c in x["cpu"]["cpu_s"].items()
                                       if k.startswith("gateway")) / n * 10000, 3),
                               "steal_cores": round(x["cpu"]["steal_cpu_s"] / x["cpu"]["wall_s"], 2)}
                              for x in v] for mode, v in runs.items()}
        res["bounced"] = sum(c.errors for c in comps)
        return res
    finally:
        for g in gws:
            g.stop()
        for port, comp in ports:
            await stop_listening(port, comp)
        try:
            sink.call("stop", timeout=5)
        except Exception:  # noqa: BLE001
            pass
        sink.stop()


async def profile_gateway(gw, link, make, n, sink, wd, rate=None):
    """py-spy the gateway while it forwards ``n`` stanzas (at once, or paced at ``rate``
    per second); top self/inclusive frames."""
    pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if pyspy is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    out = Path(wd) / f"gateway-profile-{'paced' if rate else 'burst'}.txt"
    sink.call("reset")
    payload = None if rate else make(0, n)
    prof = subprocess.Popen([pyspy, "record", "-p", str(gw.pid), "-r", "250", "-f", "raw",
                             "-o", str(out), "-d", "60", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    await sleep(1.0)
    if rate:
        n = await paced(link.transport.write, make, rate, n / rate)
    else:
        link.transport.write(payload)
    await wait_until(lambda: sink.call("count")[0] >= n, 120, 0.01, what="profiled run")
    prof.send_signal(2)  # SIGINT: py-spy writes what it has
    await sleep(0.1)
    for _ in range(100):
        if prof.poll() is not None:
            break
        await sleep(0.1)
    if prof.poll() is None:
        prof.kill()
    return summarize_profile(out)


INTERESTING = ("s2sgate/", "xish/domish", "protocols/tls", "_newtls", "prometheus_client",
               "OpenSSL/", "tcp.py")


def summarize_profile(path, top=15):
    selfc, incl, total = {}, {}, 0
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {"error": f"no profile written at {path}"}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        frames = [f for f in stack.split(";") if f]
        # skip samples where the process sits in epoll (idle)
        if frames and ("poll (twisted/internet/epollreactor.py" in frames[-1]
                       or "_Poller.poll (" in frames[-1]):   # the same under bench/tail_patch.py
            continue
        total += c
        if frames:
            selfc[frames[-1]] = selfc.get(frames[-1], 0) + c
        # inclusive time per function (line dropped), s2sgate and XML/TLS/metrics code only
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            if any(k in f for k in INTERESTING):
                incl[f] = incl.get(f, 0) + c

    def short(f):
        return re.sub(r"/[^ (]*/site-packages/|" + re.escape(str(REPO)) + "/", "", f)

    def topk(d):
        return [(short(f), round(100 * c / total, 1))
                for f, c in sorted(d.items(), key=lambda x: -x[1])[:top]]
    return {"busy_samples": total, "self": topk(selfc), "inclusive": topk(incl),
            "raw": str(path)}


# -- end-to-end vs native -----------------------------------------------------

def quiet(prosody):
    """Prosody logging at "warn" instead of the lab's "debug" (as in production)."""
    write = prosody.write_config

    def write_config():
        write()
        text = prosody.config.read_text()
        prosody.config.write_text(text.replace('levels = { min = "debug" }',
                                               'levels = { min = "warn" }', 1))
    prosody.write_config = write_config
    return prosody


async def run_e2e(ctx, quick):
    from tests.lab.client import connect_client
    from tests.lab.prosody import Prosody
    wd, ca, dns = ctx["workdir"], ctx["ca"], ctx["dns"]
    tls = lambda host: {"cafile": ca.cafile, "certs": {host: ca.issue(host, dns=[host])},  # noqa: E731
                        "secure_auth": True, "require_encryption": True}
    started = []
    clients = []
    res = {}
    try:
        a = Prosody(wd, "e2e-a", E2E_A, hosts=["home.test"], users=[("alice@home.test", "pw")],
                    components={"s2s.home.test": SECRET}, route_to="s2s.home.test")
        b = Prosody(wd, "e2e-b", E2E_B, hosts=["remote.test"], users=[("bob@remote.test", "pw")],
                    tls=tls("remote.test"))
        na = Prosody(wd, "nat-a", NAT_A, hosts=["home2.test"], users=[("alice@home2.test", "pw")],
                     tls=tls("home2.test"), dns=dns)
        nb = Prosody(wd, "nat-b", NAT_B, hosts=["remote2.test"],
                     users=[("bob@remote2.test", "pw")], tls=tls("remote2.test"))
        for p in (a, b, na, nb):
            quiet(p).start()
            started.append(p)
        gwcert = ca.issue("home.test", dns=["home.test"])
        gw = Gateway(wd, "e2e-gateway", gateway_toml(
            ip=E2E_GW, component_host=E2E_A, local_domains=["home.test"], certfile=gwcert[0],
            cafile=ca.cafile, use_starttls="required",
            addresses=[("remote.test", E2E_B, 5269)]), probe=True).start()
        started.append(gw)
        paths = {}
        for name, (sip, sender, rip, receiver) in {
                "gateway": (E2E_A, "alice@home.test", E2E_B, "bob@remote.test"),
                "native": (NAT_A, "alice@home2.test", NAT_B, "bob@remote2.test")}.items():
            rx = await connect_client(reactor, receiver + "/r", "pw", rip)
            clients.append(rx)
            rx.send_presence()
            tx = await connect_client(reactor, sender + "/bench", "pw", sip)
            clients.append(tx)
            counter = peers.Counter()
            rx.xs.dataReceived = counter.feed
            paths[name] = (tx, counter, receiver)
        n = 5000 if quick else 20000
        seqs = {}

        def maker(name):
            tx, counter, receiver = paths[name]

            def make(_, k):
                b_ = batch(seqs[name], k, to_bare=receiver, to_full=receiver + "/r")
                seqs[name] += k
                return b_
            return make

        for name in paths:
            seqs[name] = 0
        await wait_until(lambda: "component link up" in gw.log_text(), 30,
                         what="the gateway's component link")
        # warm up both paths (stream setup, TLS, SASL EXTERNAL)
        for name, (tx, counter, _) in paths.items():
            tx.xs.transport.write(maker(name)(0, 1))
        for name, (tx, counter, _) in paths.items():
            await wait_until(lambda: counter.count >= 1, 30, what=f"{name} first message")
        for name, (tx, counter, _) in paths.items():
            tx.xs.transport.write(maker(name)(0, 200))
        for name, (tx, counter, _) in paths.items():
            await wait_until(lambda: counter.count >= 201, 60, what=f"{name} warm-up")
        # CPU of every server process on both paths over each burst (the other
        # path's processes idle meanwhile): CPU seconds per 10 000 stanzas
        pids = {"gateway": {"Prosody A": prosody_pid(a), "s2sgate": gw.pid,
                            "Prosody B": prosody_pid(b)},
                "native": {"Prosody A'": prosody_pid(na), "Prosody B'": prosody_pid(nb)}}
        for name, (tx, counter, _) in paths.items():
            counter.reset()
            payload = maker(name)(0, n)
            if name == "gateway":
                await gw.tail()
            watch = CpuWatch(pids[name])
            t0 = time.monotonic_ns()
            tx.xs.transport.write(payload)
            try:
                await wait_until(lambda: counter.count >= n, 120, 0.01, what=f"{name} burst")
            except TimeoutError:
                res[f"{name}_lost"] = n - counter.count
            cpu = watch.stop()
            res[f"{name}_per_s"] = counter.count / ((counter.last - t0) / 1e9)
            res[f"{name}_cpu_s_per_10k"] = {k: v / max(1, counter.count) * 10000
                                            for k, v in cpu["cpu_s"].items()}
            res[f"{name}_others_cores"] = cpu["others_cpu_s"] / cpu["wall_s"]
            if name == "gateway":
                probe = res["gateway_probe"] = await gw.tail()
                probe.pop("hops", None)
                res["gateway_stanzas_per_turn"] = counter.count / max(1, probe["turns"])
        rate = min(res["gateway_per_s"], res["native_per_s"]) / 2
        res["latency_rate_per_s"] = rate
        for name, (tx, counter, _) in paths.items():
            counter.reset()
            seq0 = seqs[name]
            sent = await paced(tx.xs.transport.write, maker(name), rate, 2 if quick else 5)
            await wait_until(lambda: counter.count >= sent, 60, what=f"{name} paced")
            lat = latency_ms(counter.samples, seq0)
            res[f"{name}_p50_ms"], res[f"{name}_p99_ms"] = pct(lat, 50), pct(lat, 99)
        res["throughput_ratio"] = res["gateway_per_s"] / res["native_per_s"]
        res["p50_ratio"] = res["gateway_p50_ms"] / res["native_p50_ms"]
        res["p99_ratio"] = res["gateway_p99_ms"] / res["native_p99_ms"]
        res["gateway_path_auth"] = _auth_summary(b)
        res["native_path_auth"] = _auth_summary(nb)
        return res
    finally:
        for c in clients:
            try:
                c.connector.disconnect()
            except Exception:  # noqa: BLE001
                pass
        for p in reversed(started):
            p.stop()


async def first_delivery_ms(link, rx, frm, to, sid):
    """A chat message written on the component link, in ms until client ``rx`` has it."""
    d = rx.wait_for(lambda e: e.getAttribute("id") == sid, timeout=30)
    t0 = time.monotonic()
    link.transport.write(f"<message from='{frm}' to='{to}' type='chat' id='{sid}'>"
                         f"<body>hello</body></message>".encode())
    await d
    return (time.monotonic() - t0) * 1000


def prosody_pid(prosody):
    """Prosody's own pid (its pidfile; the lab may start it through unshare and sh)."""
    try:
        return int(prosody.pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return prosody.proc.pid


def _auth_summary(prosody):
    rows = prosody.s2s_sessions()
    return [f"{r.get('dir')} {r.get('remote')} {r.get('secure')} cert={r.get('cert')} "
            f"sasl={r.get('s2s_sasl')} dialback={r.get('dialback')}" for r in rows]


# -- setup ------------------------------------------------------------------

async def run_setup(ctx, quick):
    from tests.lab.client import connect_client
    from tests.lab.prosody import Prosody
    wd, ca, dns = ctx["workdir"], ctx["ca"], ctx["dns"]
    locals_ = ["home.test", "h2.test", "h3.test"] if not quick else ["home.test"]
    gwcert = ca.issue("home.test", dns=["home.test", "h2.test", "h3.test"])
    cfg = {
        "dialback": dict(tls=None),
        "starttls+dialback": dict(tls={"cafile": ca.untrusted_cafile, "secure_auth": False,
                                       "require_encryption": True}),
        "starttls+sasl": dict(tls={"cafile": ca.cafile, "secure_auth": True,
                                   "require_encryption": True}),
        "direct-tls": dict(tls={"cafile": ca.cafile, "secure_auth": True,
                                "require_encryption": True, "direct_tls_port": 5270}),
    }
    started, clients, res, receivers = [], [], {}, {}
    comp = ComponentFactory("s2s.home.test")
    port = reactor.listenTCP(5347, comp, interface=COMP_IP)
    try:
        servers = {}
        for mode, ip in SETUP_PEERS.items():
            dom = "p-" + mode.replace("+", "-") + ".test"
            tls = cfg[mode]["tls"]
            if tls is not None:
                tls = dict(tls, certs={dom: ca.issue(dom, dns=[dom])})
            p = Prosody(wd, "setup-" + mode.replace("+", "-"), ip, hosts=[dom],
                        users=[(f"bob@{dom}", "pw")], dns=dns, tls=tls)
            quiet(p).start()
            started.append(p)
            servers[mode] = (p, dom, ip)
        gw = Gateway(wd, "setup-gateway", gateway_toml(
            ip=GW_IP, component_host=COMP_IP, local_domains=["home.test", "h2.test", "h3.test"],
            certfile=gwcert[0], cafile=ca.cafile, use_starttls="optional",
            nameserver=f"{DNS_IP}:53",
            # Each local domain's own fresh stream: the multiplex section times joining one.
            extra="[s2s.multiplex]\nenabled = false\n")).start()
        started.append(gw)
        link = await comp.whenReady(30)
        for mode, (p, dom, ip) in servers.items():
            rx = await connect_client(reactor, f"bob@{dom}/r", "pw", ip)
            clients.append(rx)
            times = []
            for i, local in enumerate(locals_):
                try:
                    times.append(await first_delivery_ms(
                        link, rx, f"alice@{local}/bench", f"bob@{dom}/r", f"setup-{mode}-{i}"))
                except Exception as e:  # noqa: BLE001
                    res[f"{mode}_error"] = str(e)[:200]
                    break
            res[mode] = {"ms": [round(t, 1) for t in times],
                         "median_ms": statistics.median(times) if times else None,
                         "prosody_view": _auth_summary(p)}
            receivers[mode] = rx
        # The same peers reached natively: a Prosody (s2s by mod_s2s, certificates from
        # the same CA, dialback allowed) whose clients send the first stanza.  Its time
        # runs from the client's write, so it includes the c2s hop the gateway's lacks.
        natives = [f"n{i + 1}.test" for i in range(len(locals_))]
        sender = Prosody(wd, "setup-native", NATIVE_SETUP, hosts=natives,
                         users=[(f"alice@{d}", "pw") for d in natives], dns=dns,
                         tls={"cafile": ca.cafile, "secure_auth": False,
                              "require_encryption": False, "dialback": True,
                              "certs": {d: ca.issue(d, dns=[d]) for d in natives}})
        quiet(sender).start()
        started.append(sender)
        senders = []
        for d in natives:
            tx = await connect_client(reactor, f"alice@{d}/bench", "pw", NATIVE_SETUP)
            clients.append(tx)
            senders.append(tx)
        res["native"] = {}
        for mode, (p, dom, ip) in servers.items():
            rx = receivers[mode]
            times = []
            for i, tx in enumerate(senders):
                sid = f"native-{mode}-{i}"
                d = rx.wait_for(lambda e, sid=sid: e.getAttribute("id") == sid, timeout=30)
                t0 = time.monotonic()
                tx.xs.transport.write(
                    f"<message to='bob@{dom}/r' type='chat' id='{sid}'>"
                    f"<body>hello</body></message>".encode())
                try:
                    await d
                    times.append((time.monotonic() - t0) * 1000)
                except Exception as e:  # noqa: BLE001
                    res["native"][f"{mode}_error"] = str(e)[:200]
                    break
            res["native"][mode] = {"ms": [round(t, 1) for t in times],
                                   "median_ms": statistics.median(times) if times else None,
                                   "prosody_view": _auth_summary(sender)}
        return res
    finally:
        for c in clients:
            try:
                c.connector.disconnect()
            except Exception:  # noqa: BLE001
                pass
        for p in reversed(started):
            p.stop()
        await stop_listening(port, comp)


# -- multiplex --------------------------------------------------------------

async def _mux_round(wd, name, comp, rx, certfile, cafile, multiplex, domains):
    """
    One gateway process: home.test's first stanza opens the stream to the
    peer; then each further local domain's first stanza is timed, write to
    delivery.  Returns (ms per further domain, joined, own streams).
    """
    extra = "" if multiplex else "[s2s.multiplex]\nenabled = false\n"
    gw = Gateway(wd, name, gateway_toml(
        ip=GW_IP, component_host=COMP_IP, local_domains=domains, certfile=certfile,
        cafile=cafile, use_starttls="required", nameserver=f"{DNS_IP}:53", extra=extra)).start()
    try:
        link = await comp.whenReady(30)
        times = []
        for i, local in enumerate(domains):
            ms = await first_delivery_ms(link, rx, f"alice@{local}/bench", f"bob@{MUX_PEER}/r",
                                         f"{name}-{i}")
            if i:
                times.append(ms)
        text = gw.log_text()
        joined = sum(text.count(f"took {d} on the stream of home.test") for d in domains[1:])
        own = sum(text.count(f"connecting {d} -> {MUX_PEER}") for d in domains[1:])
        return times, joined, own
    finally:
        gw.stop()
        await wait_until(lambda: comp.current is None, 10, what="component link closed")


async def run_multiplex(ctx, quick):
    """
    Second (and third) local domain's first stanza to a peer already
    connected: multiplexing on (the pair joins the stream, the peer dials
    back to verify) versus off (a stream of its own), in the same run,
    rounds interleaved; with our certificate naming every local domain
    (off: STARTTLS + SASL EXTERNAL) and naming home.test only (off: STARTTLS
    + dialback).
    """
    from tests.lab.client import connect_client
    from tests.lab.prosody import Prosody
    wd, ca, dns = ctx["workdir"], ctx["ca"], ctx["dns"]
    domains = ["home.test", "h2.test", "h3.test"]
    certs = {"cert names all": ca.issue("home.test", dns=domains)[0],
             "cert names home.test": ca.issue("home.test", dns=["home.test"])[0]}
    rounds = 2 if quick else 5
    comp = ComponentFactory("s2s.home.test")
    port = reactor.listenTCP(5347, comp, interface=COMP_IP)
    peer = quiet(Prosody(wd, "mux-peer", MUX_PEER_IP, hosts=[MUX_PEER],
                         users=[(f"bob@{MUX_PEER}", "pw")], dns=dns,
                         tls={"cafile": ca.cafile, "secure_auth": False,
                              "require_encryption": True,
                              "certs": {MUX_PEER: ca.issue(MUX_PEER, dns=[MUX_PEER])}}))
    rx = None
    res = {}
    runs = itertools.count()
    try:
        peer.start()
        rx = await connect_client(reactor, f"bob@{MUX_PEER}/r", "pw", MUX_PEER_IP)
        for n in range(rounds):
            for cert, certfile in certs.items():
                for multiplex in (True, False):
                    key = f"{cert}, multiplexing {'on' if multiplex else 'off'}"
                    times, joined, own = await _mux_round(
                        wd, f"mux-{next(runs)}", comp, rx, certfile, ca.cafile, multiplex,
                        domains)
                    r = res.setdefault(key, {"ms": [], "joined": 0, "own_streams": 0})
                    r["ms"] += [round(t, 1) for t in times]
                    r["joined"] += joined
                    r["own_streams"] += own
        for r in res.values():
            r["median_ms"] = statistics.median(r["ms"]) if r["ms"] else None
        res["prosody_view_last"] = _auth_summary(peer)
        return res
    finally:
        if rx is not None:
            try:
                rx.connector.disconnect()
            except Exception:  # noqa: BLE001
                pass
        peer.stop()
        await stop_listening(port, comp)


# -- scale ------------------------------------------------------------------

async def run_scale(ctx, quick, big):
    wd, ca = ctx["workdir"], ctx["ca"]
    gwcert = ca.issue("home.test", dns=["home.test"])
    loadcert = ca.issue("load.test", dns=["*.load.test"])
    comp = ComponentFactory("s2s.home.test")
    port = reactor.listenTCP(5347, comp, interface=COMP_IP)
    res = {}
    gw = lg = None
    try:
        gw = Gateway(wd, "scale-gateway", gateway_toml(
            ip=GW_IP, component_host=COMP_IP, local_domains=["home.test"],
            certfile=gwcert[0], cafile=ca.cafile, use_starttls="required")).start()
        await comp.whenReady(30)
        lg = Child(peers.loadgen_main, GW_IP, 5269, "home.test", str(loadcert[0]),
                   str(ca.cafile), LOAD_IP)
        # one stream first, so that one-time costs (TLS contexts, imports) are in the baseline
        r = await lg.acall(("open", 1))
        if r["open"] != 1:
            raise RuntimeError(f"first stream failed: {r['errors']}")
        await sleep(1)
        if Gateway.tracemalloc:
            os.kill(gw.pid, signal.SIGUSR2)
            await sleep(1)
        base_rss, base_fds = rss_kib(gw.pid), fd_count(gw.pid)
        res["baseline_rss_kib"], res["baseline_fds"] = base_rss, base_fds
        levels = [1000] + ([10000] if big else [])
        for level in levels:
            c0 = cpu_seconds(gw.pid)
            r = await lg.acall(("open", level), timeout=900)
            c1 = cpu_seconds(gw.pid)
            await sleep(2)
            rss, fds = rss_kib(gw.pid), fd_count(gw.pid)
            idle = 5 if quick else 10
            i0 = cpu_seconds(gw.pid)
            await sleep(idle)
            i1 = cpu_seconds(gw.pid)
            res[str(level)] = {
                "open": r["open"], "failed": r["failed"], "errors": r["errors"],
                "open_seconds": r["seconds"], "handshakes_per_s": (r["open"] - 1) / r["seconds"],
                "gateway_cpu_ms_per_handshake": (c1 - c0) * 1000 / max(1, r["open"] - 1),
                "rss_kib": rss, "fds": fds,
                "kib_per_stream": (rss - base_rss) / max(1, r["open"] - 1),
                "idle_cpu_percent": (i1 - i0) / idle * 100,
            }
            if Gateway.tracemalloc:
                os.kill(gw.pid, signal.SIGUSR2)
                tm = gw.dir / "tracemalloc.txt"
                await wait_until(lambda: tm.exists() and tm.stat().st_size > 0, 60,
                                 what="tracemalloc dump")
                await sleep(0.5)
                res[str(level)]["tracemalloc"] = tm.read_text()
                tm.unlink()
            log(f"scale: {level} streams: {res[str(level)]}")
        res["authenticated_in_log"] = gw.log_text().count("inbound stream s")
        return res
    finally:
        if lg is not None:
            try:
                await lg.acall(("close",), timeout=30)
            except Exception:  # noqa: BLE001
                pass
            lg.stop()
        if gw is not None:
            gw.stop()
        await stop_listening(port, comp)


# -- report -----------------------------------------------------------------

def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import twisted
    try:
        prosody = "prosody " + subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "prosody"], capture_output=True, text=True,
            timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        prosody = "?"
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "twisted": twisted.__version__, "prosody": prosody, "kernel": platform.release(),
            "idle": cpu_idle()}


def fmt(v, unit="", digits=0):
    if v is None:
        return "—"
    if isinstance(v, float):
        v = f"{v:,.{digits}f}"
    else:
        v = f"{v:,}" if isinstance(v, int) else str(v)
    return f"{v}{unit}"


def verdict(ok):
    return "PASS" if ok else "MISS"


def probe_rows(section, name, p):
    """What the gateway's probe (bench/tail_patch.py) saw during a half-load run."""
    if not p:
        return []
    gcs = " / ".join(f"{p['gc'][k]['count']}" for k in ("0", "1", "2"))
    gcmax = max(p["gc"][k]["max_ms"] for k in ("0", "1", "2"))
    return [(section, f"{name}: turns > 1 ms at half load (waiting for a core / CPU)",
             f"{p['turns_over_1ms']} of {p['turns']} ({p['turns_over_1ms_waiting']} / "
             f"{p['turns_over_1ms_cpu_bound']}); turn p99 wall {fmt(p['turn_wall_ms']['p99'], ' ms', 2)}"
             f", CPU {fmt(p['turn_cpu_ms']['p99'], ' ms', 2)}", "", ""),
            (section, f"{name}: GC passes gen 0/1/2, longest, at half load",
             f"{gcs}, {gcmax:.2f} ms", "", "")]


def hop_rows(section, name, h):
    """The latency split of a half-load run (bench/run.py hop_split)."""
    if not h:
        return []
    names = (("bench_send", "bench made → kernel"),
             ("gateway_input_wait", "kernel → gateway read"),
             ("gateway", "gateway read → OpenSSL"), ("tls_out", "OpenSSL → socket send"),
             ("read_to_send", "gateway read → send"),
             ("kernel_to_send", "kernel → gateway send"), ("sink_side", "sink side"))
    return [(section, f"{name}: p50 / p99 of each hop at half load ({h['stanzas']:,} stanzas)",
             "; ".join(f"{label} {fmt(h[k]['p50_ms'], '', 2)} / {fmt(h[k]['p99_ms'], ' ms', 2)}"
                       for k, label in names if k in h), "", "")]


def late_rows(section, name, late):
    """How the late stanzas of a half-load run spread over it (late_shape)."""
    if not late:
        return []
    return [(section, f"{name}: stanzas over {late['over_ms']:g} ms at half load, and where",
             f"{100 * late['share']:.2f} %, in {late['windows_late']} of {late['windows']} "
             f"windows of 100 ms; the worst window {late['worst_window_late']} stanzas, up to "
             f"{late['worst_window_max_ms']:.1f} ms", "", "")]


def halt_poll_rows(section, hp):
    """The half-load runs with the cores polling before they halt, beside the machine as
    it is (``--halt-poll``)."""
    if not hp:
        return []
    rows = [(section, f"half load with cores polling {hp['ns']:,} ns before they halt "
             "(poll) against the machine as it is", f"as it is: {hp['machine']}", "", "")]
    for setting in ("poll", "as is"):
        runs = hp["runs"][setting]
        rows.append((section, f"{setting}: p99; CPU s per 10 000; turns > 1 ms; steal; late",
                     "; ".join(f"{fmt(h['p99_ms'], ' ms', 2)}, {fmt(h['cpu_s_per_10k'], ' s', 3)}, "
                               f"{h['turns_over_1ms']} of {h['turns']}, {h['steal_cores']:.2f}, "
                               f"{100 * h['late']['share']:.1f} % in {h['late']['windows_late']} "
                               "windows" for h in runs), "", ""))
    return rows


def before_now_rows(section, change, rate, before, now):
    """The before → now rows of a section: ``before`` and ``now`` each with max_per_s,
    cpu_s_per_10k and the half-load p50_ms, p99_ms, p99_runs_ms."""
    def runs(x):
        return ", ".join(fmt(v, "", 2) for v in x.get("p99_runs_ms", []))
    return [(section, f"before → now: {change}", "", "", ""),
            (section, "before → now: max throughput",
             f"{fmt(before['max_per_s'], '/s')} → {fmt(now['max_per_s'], '/s')} "
             f"= {now['max_per_s'] / before['max_per_s']:.2f}×", "", ""),
            (section, "before → now: CPU s per 10 000 stanzas",
             f"{fmt(before['cpu_s_per_10k'], ' s', 3)} → {fmt(now['cpu_s_per_10k'], ' s', 3)} "
             f"= {now['cpu_s_per_10k'] / before['cpu_s_per_10k']:.2f}×", "", ""),
            (section, f"before → now: p50 / p99 at {rate:,.0f}/s",
             f"{fmt(before['p50_ms'], ' ms', 2)} / {fmt(before['p99_ms'], ' ms', 2)} → "
             f"{fmt(now['p50_ms'], ' ms', 2)} / {fmt(now['p99_ms'], ' ms', 2)} "
             f"(p99 {now['p99_ms'] / before['p99_ms']:.2f}×); p99 of each run: before "
             f"{runs(before)}, now {runs(now)}", "", "")]


def table(results):
    rows = []
    c, g, inb, pr, e, s, mx, sc = (results.get(k) for k in (
        "ceiling", "gateway", "inbound", "processes", "e2e", "setup", "multiplex", "scale"))
    if c:
        rows += [("ceiling", "parse + serialize (one process)", fmt(c["stanzas_per_s"], "/s"), "", ""),
                 ("ceiling", "parse only / serialize only",
                  f"{fmt(c['parse_per_s'], '/s')} / {fmt(c['serialize_per_s'], '/s')}", "", "")]
    if g and "max_per_s" in g:
        rows += [("gateway", "max throughput (component → TLS s2s)", fmt(g["max_per_s"], "/s"),
                  "", "")]
        if c:
            ratio = g["max_per_s"] / c["stanzas_per_s"]
            g["vs_ceiling"] = ratio
            rows += [("gateway", "share of ceiling", fmt(ratio * 100, "%", 1),
                      f"≥ {TARGETS['gateway_vs_ceiling']:.0%}",
                      verdict(ratio >= TARGETS["gateway_vs_ceiling"]))]
        rows += [("gateway", "CPU s per 10 000 stanzas", fmt(g["cpu_s_per_10k"], " s", 2), "", ""),
                 ("gateway", "CPU s per 10 000: burst / paced at half load; system share",
                  f"{fmt(g['cpu_s_per_10k'], ' s', 3)} / "
                  f"{fmt(g.get('half_rate_cpu_s_per_10k'), ' s', 3)}; "
                  f"{fmt(100 * g.get('system_share_of_cpu', 0), '%')} / "
                  f"{fmt(100 * g.get('half_rate_system_share', 0), '%')}; "
                  f"{fmt(g.get('half_rate_cpu_share', 0), '', 2)} of a core busy at half load",
                  "", ""),
                 ("gateway", "cores the hypervisor took (steal) during each half-load run of now",
                  ", ".join(f"{x:.2f}" for x in g.get("half_rate_steal_cores", [])), "", ""),
                 ("gateway", f"latency p50 / p99 at {g['half_rate_per_s']:,.0f}/s (50%)",
                  f"{fmt(g['p50_ms'], ' ms', 2)} / {fmt(g['p99_ms'], ' ms', 2)}",
                  f"p99 ≤ {TARGETS['p99_ms']} ms", verdict(g["p99_ms"] <= TARGETS["p99_ms"])),
                 ] + [("gateway", f"latency p50 / p99 at {k} ({v['rate']:,.0f}/s)",
                       f"{fmt(v['p50_ms'], ' ms', 2)} / {fmt(v['p99_ms'], ' ms', 2)}", "", "")
                      for k, v in g.get("latency_sweep", {}).items()]
        rows += probe_rows("gateway", "now", g.get("half_rate_probe"))
        rows += late_rows("gateway", "now", g.get("half_rate_late"))
        rows += hop_rows("gateway", "now", g.get("half_rate_hops"))
        rows += halt_poll_rows("gateway", g.get("halt_poll"))
        b = g.get("before")
        if b:
            h = b["half_rate"]
            rows += before_now_rows(
                "gateway", b["change"], g["half_rate_per_s"],
                dict(h, max_per_s=b["max_per_s"], cpu_s_per_10k=b["cpu_s_per_10k"]),
                dict(g, p99_runs_ms=g.get("half_rate_p99_runs_ms", [])))
            rows += probe_rows("gateway", "before", h.get("probe"))
            rows += late_rows("gateway", "before", h.get("late"))
            rows += hop_rows("gateway", "before", h.get("hops"))
    if inb and "now" in inb:
        now = inb["now"]
        h = now["half_rate"]
        rows += [("inbound", "max throughput (TLS s2s → component)", fmt(now["max_per_s"], "/s"),
                  "", ""),
                 ("inbound", "CPU s per 10 000 stanzas: burst / paced at half load",
                  f"{fmt(now['cpu_s_per_10k'], ' s', 3)} / {fmt(h['cpu_s_per_10k'], ' s', 3)}; "
                  f"{fmt(h['cpu_share'], '', 2)} of a core busy at half load", "", ""),
                 ("inbound", f"latency p50 / p99 at {inb['half_rate_per_s']:,.0f}/s (50%)",
                  f"{fmt(h['p50_ms'], ' ms', 2)} / {fmt(h['p99_ms'], ' ms', 2)} (p99 of each run "
                  f"{', '.join(fmt(x, '', 2) for x in h['p99_runs_ms'])})", "", "")]
        b = inb.get("before")
        if b:
            rows += before_now_rows(
                "inbound", inb["change"], inb["half_rate_per_s"],
                dict(b["half_rate"], max_per_s=b["max_per_s"], cpu_s_per_10k=b["cpu_s_per_10k"]),
                dict(h, max_per_s=now["max_per_s"], cpu_s_per_10k=now["cpu_s_per_10k"]))
    if pr and "ratio" in pr:
        one, two = pr["one"], pr["two"]
        rows += [("procs", "max throughput: one process (8 remote domains)",
                  fmt(one["max_per_s"], "/s"), "", ""),
                 ("procs", "max throughput: two processes (4 + 4 domains by hash)",
                  f"{fmt(two['max_per_s'], '/s')} = {pr['ratio']:.2f}× one",
                  f"≥ {TARGETS['processes_ratio']}×",
                  verdict(pr["ratio"] >= TARGETS["processes_ratio"]))]
        for mode, m in (("one", one), ("two", two)):
            cores = ", ".join(f"{k} {v:.2f}" for k, v in m["cores"].items()
                              if not (mode == "one" and k == "gateway 2"))
            rows.append(("procs", f"{mode}: cores used (of {os.cpu_count()})",
                         f"{cores}, others {m['others_cores']:.2f}, taken by the hypervisor "
                         f"(steal) {m.get('steal_cores', 0):.2f}; "
                         f"machine {m['machine_cores']:.2f}", "", ""))
        rows.append(("procs", "gateway CPU s per 10 000 stanzas: one / two",
                     f"{fmt(one['gateway_cpu_s_per_10k'], ' s', 3)} / "
                     f"{fmt(two['gateway_cpu_s_per_10k'], ' s', 3)}", "", ""))
        for mode, v in pr.get("runs", {}).items():
            rows.append(("procs", f"{mode}: each run's rate / gateway cores / CPU s per 10 000 / steal",
                         "; ".join(f"{x['rate']:,} / {x['gateway_cores']:.2f} / "
                                   f"{x['gateway_cpu_s_per_10k']:.3f} / {x['steal_cores']:.2f}"
                                   for x in v), "", ""))
        if pr.get("pair_ratios"):
            rows.append(("procs", "two / one of each pair of runs (one, two, one, two, …)",
                         ", ".join(f"{r:.2f}×" for r in pr["pair_ratios"]) +
                         f"; rates one {pr['one']['runs_per_s']}, two {pr['two']['runs_per_s']}",
                         "", ""))
    if e and "throughput_ratio" in e:
        rows += [("e2e", "throughput gateway / native",
                  f"{fmt(e['gateway_per_s'], '/s')} / {fmt(e['native_per_s'], '/s')} "
                  f"= {e['throughput_ratio']:.2f}×", f"≥ {TARGETS['e2e_ratio']}×",
                  verdict(e["throughput_ratio"] >= TARGETS["e2e_ratio"])),
                 ("e2e", f"p50 latency gw / native at {e['latency_rate_per_s']:,.0f}/s",
                  f"{fmt(e['gateway_p50_ms'], ' ms', 2)} / {fmt(e['native_p50_ms'], ' ms', 2)}"
                  f" = {e['p50_ratio']:.2f}×", "", ""),
                 ("e2e", "p99 latency gw / native",
                  f"{fmt(e['gateway_p99_ms'], ' ms', 2)} / {fmt(e['native_p99_ms'], ' ms', 2)}"
                  f" = {e['p99_ratio']:.2f}×", "", "")]
        for name in ("gateway", "native"):
            cpu = e.get(f"{name}_cpu_s_per_10k")
            if cpu:
                rows.append(("e2e", f"{name} path: CPU s per 10 000 stanzas",
                             ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
                             + f" (sum {sum(cpu.values()):.2f}); others "
                               f"{e[f'{name}_others_cores']:.2f} cores", "", ""))
        if "gateway_stanzas_per_turn" in e:
            rows.append(("e2e", "s2sgate during the burst: stanzas per reactor turn",
                         f"{e['gateway_stanzas_per_turn']:.1f} ({e['gateway_probe']['turns']} turns)",
                         "", ""))
    if s:
        for mode in SETUP_PEERS:
            if mode in s:
                m = s[mode]
                rows.append(("setup", f"{mode}: first stanza → delivered",
                             f"{fmt(m['median_ms'], ' ms', 1)} (runs {m['ms']})", "",
                             "" if m["median_ms"] is not None else "FAIL"))
            nat = s.get("native", {}).get(mode)
            if nat:
                rows.append(("setup", f"{mode}: native Prosody → Prosody",
                             f"{fmt(nat['median_ms'], ' ms', 1)} (runs {nat['ms']})", "",
                             "" if nat["median_ms"] is not None else "FAIL"))
    if mx:
        for key, m in mx.items():
            if isinstance(m, dict) and "median_ms" in m:
                rows.append(("multiplex", f"2nd local domain, {key}: first stanza → delivered",
                             f"{fmt(m['median_ms'], ' ms', 1)} (runs {m['ms']}; "
                             f"{m['joined']} joined, {m['own_streams']} own streams)", "",
                             "" if m["median_ms"] is not None else "FAIL"))
    if sc:
        for level in ("1000", "10000"):
            if level in sc:
                x = sc[level]
                ok = x["kib_per_stream"] <= TARGETS["kib_per_stream"]
                rows += [("scale", f"{level} idle TLS streams: RSS per stream",
                          f"{fmt(x['kib_per_stream'], ' KiB', 1)} "
                          f"({x['open']} open, {x['failed']} failed)",
                          f"≤ {TARGETS['kib_per_stream']} KiB", verdict(ok)),
                         ("scale", f"{level}: RSS / fds / idle CPU",
                          f"{fmt(x['rss_kib'] / 1024, ' MiB', 1)} / {x['fds']} / "
                          f"{fmt(x['idle_cpu_percent'], '%', 2)}", "", ""),
                         ("scale", f"{level}: TLS+SASL handshakes",
                          f"{fmt(x['handshakes_per_s'], '/s')}, gateway "
                          f"{fmt(x['gateway_cpu_ms_per_handshake'], ' ms', 2)} CPU each", "", "")]
    widths = [max(len(str(r[i])) for r in rows + [("section", "figure", "value", "target", "")])
              for i in range(5)]
    out = []
    head = ("section", "figure", "value", "target", "")
    for r in [head] + rows:
        out.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())
        if r is head:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


async def main(args):
    results = {"machine": machine(), "quick": args.quick, "nodelay_experiment": args.nodelay,
               "command": "python bench/run.py " + " ".join(sys.argv[1:])}
    only = args.only or list(SECTIONS)
    workdir = Path(tempfile.mkdtemp(prefix="s2sgate-bench-"))
    ctx = {"workdir": workdir, "ca": TestCA(workdir / "ca")}
    log(f"workdir {workdir}")
    started = time.monotonic()
    dns = None
    try:
        if "e2e" in only or "setup" in only or "multiplex" in only:
            from tests.lab.dns import TestDNS
            dns = TestDNS(workdir / "dns", ip=DNS_IP)
            dns.add_host("remote2.test", NAT_B)
            dns.add_srv("_xmpp-server._tcp.remote2.test", "remote2.test", 5269)
            for d in ("home.test", "h2.test", "h3.test"):
                dns.add_srv(f"_xmpp-server._tcp.{d}", "gw.home.test", 5269)
            for d in ("n1.test", "n2.test", "n3.test"):   # setup: the native sender
                dns.add_srv(f"_xmpp-server._tcp.{d}", "native.setup.test", 5269)
            dns.add_host("native.setup.test", NATIVE_SETUP)
            dns.add_host("gw.home.test", GW_IP)
            dns.add_srv(f"_xmpp-server._tcp.{MUX_PEER}", MUX_PEER, 5269)
            dns.add_host(MUX_PEER, MUX_PEER_IP)
            for mode, ip in SETUP_PEERS.items():
                dom = "p-" + mode.replace("+", "-") + ".test"
                if mode == "direct-tls":
                    dns.add_srv(f"_xmpps-server._tcp.{dom}", f"tls.{dom}", 5270)
                    dns.add_no_service(f"_xmpp-server._tcp.{dom}")
                    dns.add_host(f"tls.{dom}", ip)
                else:
                    dns.add_srv(f"_xmpp-server._tcp.{dom}", dom, 5269)
                    dns.add_host(dom, ip)
            dns.start()
            if dns.ip != DNS_IP:
                raise RuntimeError(f"test DNS could not bind {DNS_IP}:53")
            ctx["dns"] = dns
        for section in SECTIONS:
            if section not in only:
                continue
            t = time.monotonic()
            log(f"section {section} …")
            try:
                if section == "ceiling":
                    results[section] = run_ceiling(args.quick)
                elif section == "gateway":
                    results[section] = await run_gateway(ctx, args.quick, args.profile)
                elif section == "inbound":
                    results[section] = await run_inbound(ctx, args.quick)
                elif section == "processes":
                    results[section] = await run_processes(ctx, args.quick)
                elif section == "e2e":
                    results[section] = await run_e2e(ctx, args.quick)
                elif section == "setup":
                    results[section] = await run_setup(ctx, args.quick)
                elif section == "multiplex":
                    results[section] = await run_multiplex(ctx, args.quick)
                elif section == "scale":
                    results[section] = await run_scale(ctx, args.quick, not args.quick)
            except Exception as e:  # noqa: BLE001
                import traceback
                traceback.print_exc()
                results[section] = {"error": f"{type(e).__name__}: {e}"}
            log(f"section {section} done in {time.monotonic() - t:.1f}s")
    finally:
        if dns is not None:
            dns.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    m = results["machine"]
    print(f"\ns2sgate benchmark ({'quick' if args.quick else 'full'}; {m['nproc']} × {m['cpu']}; "
          f"Python {m['python']}, Twisted {m['twisted']}, {m['prosody']}; idle {m['idle']}; "
          f"{results['seconds']} s)\n")
    print(table(results))
    for k in SECTIONS:
        if isinstance(results.get(k), dict) and "error" in results[k]:
            print(f"\n{k}: ERROR {results[k]['error']}")
    for key, what in (("profile", "burst"), ("profile_paced", "paced at half load")):
        prof = (results.get("gateway") or {}).get(key)
        if prof and "self" in prof:
            print(f"\ngateway profile, {what} ({prof['busy_samples']} busy samples), top self time:")
            for f, p in prof["self"]:
                print(f"  {p:5.1f}%  {f}")
            print("top inclusive:")
            for f, p in prof["inclusive"]:
                print(f"  {p:5.1f}%  {f}")
    out = Path(args.output)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwritten {out}")


def cli():
    global BEFORE_PATCH, BEFORE_CHANGE, PIN, HALT_POLL_NS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs, no 10 000-stream test")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                    help=f"run only these sections: {', '.join(SECTIONS)}")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the gateway during one throughput run (pip install py-spy)")
    ap.add_argument("--nodelay", action="store_true",
                    help="experiment: run the gateway with TCP_NODELAY on its streams")
    ap.add_argument("--hops", action="store_true",
                    help="the gateway section also splits each stanza's latency into hops "
                         "(costs the gateway and the bench CPU, so the p99 rises)")
    ap.add_argument("--pin", action="store_true",
                    help="the gateway section's gateways on the last CPU, the bench and the "
                         "sink on the others (every thread of each process)")
    ap.add_argument("--halt-poll", type=int, metavar="NS",
                    help="experiment: the gateway section also measures half load with the "
                         "cores polling NS before they halt (a guest's haltpoll cpuidle driver; "
                         "root), alternating with the machine as it is")
    ap.add_argument("--before-patch", default=BEFORE_PATCH, metavar="MODULE",
                    help="the patch module (bench/*_patch.py) of the gateway section's 'before' "
                         f"gateway (default {BEFORE_PATCH})")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="experiment: trace the gateway's Python allocations in the scale section")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--output", default=str(BENCH / "results.json"))
    args = ap.parse_args()
    raise_nofile()
    Gateway.hops = args.hops
    PIN = args.pin
    if args.halt_poll is not None:
        check_halt_poll()
        HALT_POLL_NS = args.halt_poll
    Gateway.nodelay = args.nodelay
    if args.before_patch != BEFORE_PATCH:
        BEFORE_PATCH = args.before_patch
        BEFORE_CHANGE = f"as shipped (now) vs bench/{BEFORE_PATCH}.py (before)"
    Gateway.tracemalloc = args.tracemalloc
    task.react(lambda _: defer.ensureDeferred(main(args)))


if __name__ == "__main__":
    cli()
