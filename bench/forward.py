#!/usr/bin/env python3
"""
Forwarding from bytes against rebuilding, in one process and one run.

``python bench/forward.py [--stanzas 50000] [--runs 3]``

The bench mix (``bench/run.py``'s ``batch``) arrives on a component stream and is
written by an s2s stream (an ``XmlStream`` on a ``StringTransport``): once as the
gateway did before (the parser builds a DOM per stanza, the namespace is moved, the
stream serialises it with ``toXml``) and once as it does now (the parser hands over a
``RawStanza``, the stream writes its bytes). CPU seconds (``time.process_time``) per
10 000 stanzas, best of ``--runs``, and their ratio. No network, no servers.

A third variant measures the parser's trickle scan (``StreamParser._scan``) as it was
before it followed only the last tag of each chunk: from bytes, with the old scan put
back on a subclass (``bench/before.py``; the parser in ``s2sgate/`` is not changed).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from before import everyTagScan  # noqa: E402
from run import batch  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from s2sgate.xmpp.namespaces import NS_COMPONENT, NS_SERVER  # noqa: E402
from s2sgate.xmpp.parser import StreamParser  # noqa: E402
from s2sgate.xmpp.stanzas import STANZA_NAMES, setNamespace  # noqa: E402
from s2sgate.xmpp.stream import XmlStream  # noqa: E402

HEADER = (b"<stream:stream xmlns='jabber:component:accept' "
          b"xmlns:stream='http://etherx.jabber.org/streams' id='bench'>")


class S2SSide(XmlStream):
    """The writing half of an outbound s2s stream."""


class EveryTagParser(StreamParser):
    _scan = everyTagScan


def run(data, raw, parserClass=StreamParser):
    out = S2SSide(task.Clock())
    out.makeConnection(StringTransport())

    def rebuilt(element):
        out.send(setNamespace(element, NS_COMPONENT, NS_SERVER))

    names = frozenset((NS_COMPONENT, n) for n in STANZA_NAMES) if raw else frozenset()
    parser = parserClass(lambda h: None, rebuilt, lambda: None, onStanza=out.sendStanza,
                          stanzaNames=names)
    t0 = time.process_time()
    parser.feed(HEADER)
    for i in range(0, len(data), 65536):
        parser.feed(data[i:i + 65536])
    return time.process_time() - t0, out.transport.value()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--stanzas", type=int, default=50000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    data = batch(0, args.stanzas, to_bare="bob@sink.test", to_full="bob@sink.test/res",
                 frm="alice@home.test/bench")
    best = {}
    variants = {"rebuilt": (False, StreamParser), "old scan": (True, EveryTagParser),
                "bytes": (True, StreamParser)}
    for _ in range(args.runs):
        for name, (raw, cls) in variants.items():
            seconds, written = run(data, raw, cls)
            best[name] = min(best.get(name, seconds), seconds)
            if raw:
                assert written == data, "raw forwarding changed the bytes"
    per = {name: best[name] / args.stanzas * 10000 for name in best}
    print(f"stanzas {args.stanzas}, best of {args.runs} runs, CPU s per 10 000 stanzas:")
    print(f"  rebuilt (DOM + toXml)                  {per['rebuilt']:.3f} s")
    print(f"  from bytes, every tag scanned (before) {per['old scan']:.3f} s")
    print(f"  from bytes (RawStanza, now)            {per['bytes']:.3f} s")
    print(f"  from bytes / rebuilt                   {per['bytes'] / per['rebuilt']:.2f}x")
    print(f"  last-tag scan / every-tag scan         {per['bytes'] / per['old scan']:.2f}x")


if __name__ == "__main__":
    main()
