"""Measurement probe (bench/run.py's gateway sections): where a latency tail comes from.

Loaded at start-up in the gateway's process (like the other ``*_patch`` modules; the code
in ``s2sgate/`` is unchanged).  It records, per reactor iteration, the wall time and the
thread's CPU time spent outside ``epoll_wait`` (the work of that turn), and every cyclic
GC pass with its generation and duration.  SIGUSR1 writes a summary of what was recorded
since the previous SIGUSR1 to the file named by $S2SGATE_BENCH_TAIL (JSON) and starts
afresh.

A turn whose wall time is far above its CPU time waited for a core (another process ran):
the scheduler's share of a tail.  A turn with high CPU time is the gateway's own work; the
GC records say how much of it was the collector.  Cost: three clock reads per turn.

Hops: for every bench stanza (id ``b<seq>.<ns>``) the monotonic time its bytes were read
from a socket (``in``), handed to OpenSSL as plaintext (``tls``) and the first socket send
after that (``sent``), so bench/run.py can split a stanza's latency into the load side,
the gateway and the sink side.  Cost: one regex over every chunk read and written, so only with
S2SGATE_BENCH_HOPS=1 (``bench/run.py --hops``).
"""
import gc
import json
import os
import re
import signal
import time

from twisted.internet import reactor, tcp
from twisted.protocols import tls

_wall = time.perf_counter
_cpu = time.thread_time
_turns = []     # (wall s, cpu s) of each turn's work
_gcs = []       # (generation, seconds, collected objects)
_gcStart = [0.0, 0]


class _Poller:
    """Wraps the reactor's epoll object to take the wait out of each turn."""

    def __init__(self, poller):
        self._poller = poller

    def poll(self, *a, **kw):
        w0, c0 = _wall(), _cpu()
        try:
            return self._poller.poll(*a, **kw)
        finally:
            _waits.append((_wall() - w0, _cpu() - c0))

    def __getattr__(self, name):
        return getattr(self._poller, name)


_waits = []


def _install():
    if hasattr(reactor, "_poller"):
        reactor._poller = _Poller(reactor._poller)
    original = reactor.doIteration
    run = reactor.runUntilCurrent

    def iteration(timeout):
        # One turn: the timed calls before it (runUntilCurrent) are timed with it.
        w0, c0 = _wall(), _cpu()
        del _waits[:]
        try:
            original(timeout)
        finally:
            w, c = _wall() - w0, _cpu() - c0
            for ww, cc in _waits:
                w -= ww
                c -= cc
            _turns.append((w + _pending[0], c + _pending[1]))

    _pending = [0.0, 0.0]

    def runUntilCurrent():
        w0, c0 = _wall(), _cpu()
        try:
            run()
        finally:
            _pending[0], _pending[1] = _wall() - w0, _cpu() - c0

    reactor.doIteration = iteration
    reactor.runUntilCurrent = runUntilCurrent


_SEQ = re.compile(rb"id='b(\d+)\.")
_now = time.monotonic_ns
_in, _tls, _sent = {}, {}, {}
_unsent = []


def _installHops():
    received, written, send = (tcp.Connection._dataReceived, tls.TLSMemoryBIOProtocol._write,
                               tcp.Connection.writeSomeData)

    def dataReceived(self, data):
        if data:
            t = _now()
            for seq in _SEQ.findall(data):
                _in.setdefault(int(seq), t)
        return received(self, data)

    def write(self, data):
        t = _now()
        for seq in _SEQ.findall(data):
            seq = int(seq)
            _tls[seq] = t
            _unsent.append(seq)
        return written(self, data)

    def writeSomeData(self, data):
        if _unsent:
            t = _now()
            for seq in _unsent:
                _sent[seq] = t
            del _unsent[:]
        return send(self, data)

    tcp.Connection._dataReceived = dataReceived
    tls.TLSMemoryBIOProtocol._write = write
    tcp.Connection.writeSomeData = writeSomeData


def _gcCallback(phase, info):
    if phase == "start":
        _gcStart[0] = _wall()
        _gcStart[1] = info["generation"]
    else:
        _gcs.append((info["generation"], _wall() - _gcStart[0], info.get("collected", 0)))


def _pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def _summary():
    turns, gcs = list(_turns), list(_gcs)
    del _turns[:]
    del _gcs[:]
    walls = [w * 1000 for w, _ in turns]
    cpus = [c * 1000 for _, c in turns]
    slow = [(w * 1000, c * 1000) for w, c in turns if w > 0.001]
    out = {
        "turns": len(turns),
        "turn_wall_ms": {"p50": _pct(walls, 50), "p99": _pct(walls, 99), "max": max(walls, default=None)},
        "turn_cpu_ms": {"p50": _pct(cpus, 50), "p99": _pct(cpus, 99), "max": max(cpus, default=None)},
        # turns over 1 ms of wall time: did they burn CPU, or wait for a core?
        "turns_over_1ms": len(slow),
        "turns_over_1ms_cpu_bound": sum(1 for w, c in slow if c >= 0.8 * w),
        "turns_over_1ms_waiting": sum(1 for w, c in slow if c < 0.5 * w),
        "slowest": sorted(slow, reverse=True)[:10],
        "gc": {},
        "gc_thresholds": gc.get_threshold(),
        "gc_frozen": gc.get_freeze_count(),
        "hops": {"in": dict(_in), "tls": dict(_tls), "sent": dict(_sent)},
    }
    _in.clear()
    _tls.clear()
    _sent.clear()
    for gen in (0, 1, 2):
        d = [s * 1000 for g, s, _ in gcs if g == gen]
        out["gc"][str(gen)] = {"count": len(d), "total_ms": sum(d), "max_ms": max(d, default=0.0)}
    return out


def _dump(*_):
    with open(os.environ["S2SGATE_BENCH_TAIL"] + ".tmp", "w") as f:
        json.dump(_summary(), f)
    os.replace(os.environ["S2SGATE_BENCH_TAIL"] + ".tmp", os.environ["S2SGATE_BENCH_TAIL"])


gc.callbacks.append(_gcCallback)
_install()
if os.environ.get("S2SGATE_BENCH_HOPS") == "1":
    _installHops()
signal.signal(signal.SIGUSR1, _dump)
