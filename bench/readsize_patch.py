"""
Experiment (``bench/run.py --before-patch readsize_patch``): the gateway's TCP connections
read at most ``S2SGATE_BENCH_READ`` bytes per readable event (default 16 384; Twisted's
own is 65 536).  After a stall, a backlog is then handled in smaller chunks, each sent
when it is done, instead of one 64 KiB chunk whose first stanzas wait for its end.
"""
import os

from twisted.internet import tcp

tcp.Connection.bufferSize = int(os.environ.get("S2SGATE_BENCH_READ", "16384"))
