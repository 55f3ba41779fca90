#!/usr/bin/env python3
"""
Trickled XML (issue 10, item 5): parser CPU for a 400 KB attribute sent in 256-byte
segments, against the same bytes sent at once, with and without holding back the bytes
of a long open tag (s2sgate.xmpp.parser.TRICKLE_BYTES).

    python bench/trickle.py [--size 400000] [--segment 256] [--runs 3]
"""
import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import s2sgate.xmpp.parser as parser  # noqa: E402

HEADER = (b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/"
          b"streams' to='a.test' version='1.0'>")


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def once(data, segment):
    got = []
    p = parser.StreamParser(lambda h: None, got.append, lambda: None,
                            maxStanzaBytes=len(data) + 1024)
    p.feed(HEADER)
    start = cpu()
    for i in range(0, len(data), segment):
        p.feed(data[i:i + segment])
    took = cpu() - start
    assert len(got) == 1
    return took


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--size", type=int, default=400_000)
    a.add_argument("--segment", type=int, default=256)
    a.add_argument("--runs", type=int, default=3)
    o = a.parse_args()
    data = b"<message to='b@a.test' x='" + b"a" * o.size + b"'/>"
    rows = []
    for label, threshold in (("holding back (s2sgate)", parser.TRICKLE_BYTES),
                             ("every piece to expat", 10 ** 12)):
        parser.TRICKLE_BYTES = threshold
        bulk = min(once(data, len(data)) for _ in range(o.runs))
        trickled = min(once(data, o.segment) for _ in range(o.runs))
        rows.append((label, bulk, trickled))
    print(f"{o.size:,}-byte attribute, {o.segment}-byte segments vs at once "
          f"(CPU seconds, best of {o.runs}; expat {parser.pyexpat.EXPAT_VERSION})")
    for label, bulk, trickled in rows:
        print(f"  {label:<24} at once {bulk:7.3f} s   trickled {trickled:7.3f} s   "
              f"ratio {trickled / bulk:6.1f}x")


if __name__ == "__main__":
    main()
