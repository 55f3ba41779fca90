# -*- test-case-name: tests.test_demo -*-
"""
C{s2sgate demo}: two federated sites on loopback, messages both ways, a
timed burst; exit status 0 when every message arrived exactly once.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register", "runDemo"]


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value
    return parse


def _count(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def register(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="run two federated sites on loopback and show the gateway at work",
        description=(
            "Start two sites in this process, alpha.test and beta.test, each a small c2s "
            "server stand-in with s2sgate in front of it, on 127.0.0.1 only. The gateways "
            "authenticate with STARTTLS + SASL EXTERNAL (and dialback for the "
            "conference.alpha.test pair), exchange messages both ways and time a burst. "
            "Exit status 0 when every message was delivered exactly once."),
    )
    parser.add_argument("--burst", type=_count, default=1000, metavar="N",
                        help="messages alice@alpha.test sends bob@beta.test in the timed "
                             "burst (default 1000; 0: no burst)")
    parser.add_argument("--timeout", type=_positive(float), default=60.0, metavar="SECONDS",
                        help="give up after this many seconds in all (default 60)")
    parser.add_argument("--keep-running", action="store_true",
                        help="keep both sites running after the burst, until Ctrl-C: each "
                             "serves its status page and admin API on 127.0.0.1, a small chat "
                             "keeps going, and the commands to try are printed")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="also print every other log event of the gateways")
    parser.set_defaults(func=runDemo)


def _command():
    """How to run this s2sgate again: C{s2sgate} when PATH finds this one, else its path."""
    import os
    import shutil

    me = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(me) != "s2sgate" or not os.path.exists(me):
        return f"{sys.executable} -m s2sgate"
    found = shutil.which("s2sgate")
    if found and os.path.realpath(found) == os.path.realpath(me):
        return "s2sgate"
    return os.path.relpath(me) if not os.path.relpath(me).startswith("..") else me


def runDemo(args):
    """Run the demo under its own reactor; return the exit status."""
    from twisted.internet import task
    from twisted.logger import globalLogBeginner

    from s2sgate.demo.run import Demo, DemoOptions

    options = DemoOptions(burst=args.burst, timeout=args.timeout,
                          keepRunning=args.keep_running, verbose=args.verbose,
                          command=_command())

    def write(line):
        print(line, flush=True)

    def writeError(line):
        sys.stdout.flush()
        print(line, file=sys.stderr, flush=True)

    # The demo's narrator prints what matters; nothing else is logged.
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)

    async def main(reactor):
        code = await Demo(reactor, options, write=write, writeError=writeError).run()
        if code:
            raise SystemExit(code)

    try:
        task.react(main)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0
