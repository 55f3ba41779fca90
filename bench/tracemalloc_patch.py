"""Experiment only (``bench/run.py --tracemalloc``): trace the gateway's Python allocations.
The first SIGUSR2 takes a baseline snapshot, the next ones write the growth since then,
by file:line, to the file named by $S2SGATE_BENCH_TRACEMALLOC.  Memory that OpenSSL
allocates in C is not traced: RSS growth minus traced growth is roughly that part."""
import os
import signal
import tracemalloc

tracemalloc.start(1)
_base = []


def _dump(*_):
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)])
    if not _base:
        _base.append(snap)
        return
    stats = snap.compare_to(_base[0], "lineno")
    grown = sum(s.size_diff for s in stats)
    with open(os.environ["S2SGATE_BENCH_TRACEMALLOC"], "w") as f:
        f.write(f"total {grown}\n")
        for s in stats[:25]:
            fr = s.traceback[0]
            f.write(f"{s.size_diff} {s.count_diff} {fr.filename}:{fr.lineno}\n")


signal.signal(signal.SIGUSR2, _dump)
