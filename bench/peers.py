"""Load-side helpers of the benchmark that run in their own processes (no Twisted).

- ``sink_main``: a tiny s2s server.  It negotiates STARTTLS (required) and SASL EXTERNAL
  with whoever connects, then only counts stanzas and reads the send timestamps that
  ``bench/run.py`` puts in every stanza id (``id='b<seq>.<monotonic_ns>'``).
- ``loadgen_main``: opens many inbound s2s streams to a gateway, each STARTTLS + SASL
  EXTERNAL with a wildcard client certificate (``*.load.test``; stream ``i`` comes from
  ``s<i>.load.test``), and keeps them open and idle.
- ``sender_main``: one such stream (from ``s0.load.test``) that writes stanzas at once or
  paced in 1 ms ticks, stamped at the moment they are written (the inbound section).

Both are driven over a ``multiprocessing`` pipe by the parent.
"""
from __future__ import annotations

import asyncio
import re
import socket
import ssl
import threading
import time

NS_STREAMS = "http://etherx.jabber.org/streams"
ID_RE = re.compile(rb"id=['\"]b(\d+)\.(\d+)['\"]")


class Counter:
    """Counts stanzas in raw XML bytes (by their end tags) and collects timestamps."""

    def __init__(self):
        self.timestamps = True   # False: count only (throughput runs; the sink costs less)
        self.count = 0
        self.first = None
        self.last = None
        self.samples = []   # (seq, sent_ns, received_ns)
        self._carry = b""

    def feed(self, data):
        now = time.monotonic_ns()
        buf = self._carry + data
        cut = buf.rfind(b">") + 1
        part, self._carry = buf[:cut], buf[cut:]
        n = part.count(b"</message>") + part.count(b"</presence>") + part.count(b"</iq>")
        if n:
            if self.first is None:
                self.first = now
            self.last = now
            self.count += n
            if self.timestamps:
                self.samples.extend((int(s), int(t), now) for s, t in ID_RE.findall(part))

    def reset(self):
        self.count, self.first, self.last, self.samples = 0, None, None, []


def _until(sock, buf, marker):
    """Read until ``marker`` and the next '>' after it; return the bytes after that."""
    while True:
        i = buf.find(marker)
        if i >= 0:
            j = buf.find(b">", i)
            if j >= 0:
                return buf[:j + 1], buf[j + 1:]
        data = sock.recv(65536)
        if not data:
            raise EOFError(f"peer closed while waiting for {marker!r}")
        buf += data


def _header(domain, to):
    return (f"<stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
            f"xmlns:db='jabber:server:dialback' id='sink{time.monotonic_ns()}' from='{domain}' "
            f"to='{to}' version='1.0'>").encode()


def sink_main(conn, ip, port, default, certfile, cafile):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile)
    ctx.load_verify_locations(cafile)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port))
    srv.listen(64)
    counters = []
    lock = threading.Lock()
    errors = []
    timestamps = [True]

    def handle(sock):
        c = Counter()
        try:
            head, buf = _until(sock, b"", b"<stream:stream")
            peer = re.search(rb"from=['\"]([^'\"]+)", head)
            to = peer.group(1).decode() if peer else "unknown"
            # Answer as the domain the stream is for (one sink serves several).
            ours = re.search(rb"\sto=['\"]([^'\"]+)", head)
            domain = ours.group(1).decode() if ours else default
            sock.sendall(_header(domain, to) + b"<stream:features><starttls xmlns="
                         b"'urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
                         b"</stream:features>")
            _, buf = _until(sock, buf, b"<starttls")
            sock.sendall(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            sock = ctx.wrap_socket(sock, server_side=True)
            _, buf = _until(sock, b"", b"<stream:stream")
            sock.sendall(_header(domain, to) + b"<stream:features><mechanisms xmlns="
                         b"'urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism>"
                         b"</mechanisms></stream:features>")
            _, buf = _until(sock, buf, b"<auth")
            sock.sendall(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
            _, buf = _until(sock, buf, b"<stream:stream")
            sock.sendall(_header(domain, to) + b"<stream:features/>")
            with lock:
                c.timestamps = timestamps[0]
                counters.append(c)
            if buf:
                with lock:
                    c.feed(buf)
            while True:
                data = sock.recv(262144)
                if not data:
                    break
                with lock:
                    c.feed(data)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def serve():
        while True:
            try:
                s, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(s,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    conn.send("ready")
    while True:
        cmd = conn.recv()
        with lock:
            if isinstance(cmd, tuple) and cmd[0] == "timestamps":
                timestamps[0] = cmd[1]
                for c in counters:
                    c.timestamps = cmd[1]
                conn.send("ok")
            elif cmd == "last":
                lasts = [c.last for c in counters if c.last is not None]
                conn.send((sum(c.count for c in counters), max(lasts) if lasts else None))
            elif cmd == "count":
                conn.send((sum(c.count for c in counters), len(counters), list(errors)))
            elif cmd == "report":
                firsts = [c.first for c in counters if c.first is not None]
                lasts = [c.last for c in counters if c.last is not None]
                conn.send({"count": sum(c.count for c in counters),
                           "first": min(firsts) if firsts else None,
                           "last": max(lasts) if lasts else None,
                           "samples": [s for c in counters for s in c.samples],
                           "streams": len(counters), "errors": list(errors)})
            elif cmd == "reset":
                for c in counters:
                    c.reset()
                conn.send("ok")
            elif cmd == "stop":
                srv.close()
                conn.send("ok")
                return


# -- load generator ---------------------------------------------------------

async def _open_stream(i, ip, port, local, ctx, src_ip):
    remote = f"s{i}.load.test"
    hdr = (f"<stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
           f"xmlns:db='jabber:server:dialback' from='{remote}' to='{local}' "
           f"version='1.0'>").encode()
    r, w = await asyncio.open_connection(ip, port, local_addr=(src_ip, 0))
    try:
        w.write(hdr)
        await r.readuntil(b"</stream:features>")
        w.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        got = await r.readuntil(b"/>")
        if b"proceed" not in got:
            raise RuntimeError(f"no proceed: {got[-200:]!r}")
        await w.start_tls(ctx, server_hostname=local)
        w.write(hdr)
        feats = await r.readuntil(b"</stream:features>")
        if b"EXTERNAL" not in feats:
            raise RuntimeError(f"no SASL EXTERNAL offered: {feats[-300:]!r}")
        w.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        got = await r.readuntil(b"/>")
        if b"success" not in got:
            raise RuntimeError(f"SASL refused: {got[-300:]!r}")
        w.write(hdr)
        await r.readuntil(b"</stream:features>")
    except BaseException:
        w.close()
        raise
    return r, w


async def _loadgen(conn, ip, port, local, certfile, cafile, src_ip, concurrency):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.load_cert_chain(certfile)
    streams = []
    loop = asyncio.get_running_loop()
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd[0] == "open":
            target = cmd[1]
            start = time.monotonic()
            sem = asyncio.Semaphore(concurrency)
            errors = []

            async def one(i):
                async with sem:
                    try:
                        streams.append(await asyncio.wait_for(
                            _open_stream(i, ip, port, local, ctx, src_ip), 60))
                    except Exception as e:  # noqa: BLE001
                        errors.append(f"{type(e).__name__}: {e}")

            await asyncio.gather(*(one(i) for i in range(len(streams), target)))
            conn.send({"open": len(streams), "failed": len(errors),
                       "errors": errors[:3], "seconds": time.monotonic() - start})
        elif cmd[0] == "close":
            for _, w in streams:
                w.close()
            streams.clear()
            conn.send("ok")
            return


def loadgen_main(conn, ip, port, local, certfile, cafile, src_ip, concurrency=32):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_loadgen(conn, ip, port, local, certfile, cafile, src_ip, concurrency))


# -- inbound sender -----------------------------------------------------------

async def _sender(conn, ip, port, local, certfile, cafile, src_ip):
    """One authenticated inbound stream (from s0.load.test) that writes what it is told."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.load_cert_chain(certfile)
    loop = asyncio.get_running_loop()
    try:
        r, w = await asyncio.wait_for(_open_stream(0, ip, port, local, ctx, src_ip), 60)
    except Exception as e:  # noqa: BLE001
        conn.send(f"failed: {type(e).__name__}: {e}")
        return
    conn.send("ready")
    templates = None
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd[0] == "templates":
            # one period of the mix: (before the id value, after it) per seq % len
            templates = cmd[1]
            conn.send("ok")
        elif cmd[0] == "burst":
            w.write(cmd[1])
            await w.drain()
            conn.send("ok")
        elif cmd[0] == "paced":
            _, seq0, rate, duration = cmd
            period = len(templates)
            start = time.monotonic()
            sent, total = 0, int(rate * duration)
            while sent < total:
                due = min(total, int(rate * (time.monotonic() - start)) + 1)
                if due > sent:
                    ns = time.monotonic_ns()
                    w.write(b"".join(
                        templates[(seq0 + k) % period][0] + b"b%d.%d" % (seq0 + k, ns)
                        + templates[(seq0 + k) % period][1] for k in range(sent, due)))
                    sent = due
                await asyncio.sleep(0.001)
            await w.drain()
            conn.send(sent)
        elif cmd[0] == "close":
            w.close()
            conn.send("ok")
            return


def sender_main(conn, ip, port, local, certfile, cafile, src_ip):
    asyncio.run(_sender(conn, ip, port, local, certfile, cafile, src_ip))
