# -*- test-case-name: tests.test_check -*-
"""
C{s2sgate check DOMAIN}: diagnose federation with one domain, step by step,
without a running gateway.  See L{s2sgate.ops.check}.

Exit status: 0 federation can work, 1 it cannot, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import math
import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def register(commands) -> None:
    p = commands.add_parser(
        "check",
        help="diagnose federation with a domain: DNS, ports, TLS, certificate, auth",
        description=(
            "Check, step by step, whether this gateway can federate with DOMAIN: "
            "SRV and A/AAAA records, TCP reach of each target, the stream header, "
            "STARTTLS or direct TLS, the certificate, SASL EXTERNAL and dialback; "
            "for one of our own domains also our certificates. Needs no running "
            "gateway. Exit status 0: federation can work; 1: it cannot; 2: usage "
            "or config error."),
    )
    p.add_argument("domain", metavar="DOMAIN", help="the remote (or local) XMPP domain")
    p.add_argument("--config", metavar="FILE",
                   help="gateway config: nameservers, cafile, our certificates, policy")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document with every step and the verdict")
    p.add_argument("--nameserver", metavar="IP[:PORT]", action="append", default=[],
                   help="ask this DNS server (repeatable; overrides the config's)")
    p.add_argument("--timeout", metavar="S", type=_seconds, default=None,
                   help="seconds per DNS query, TCP connect and stream step "
                        "(default: the config's, else 10)")
    p.set_defaults(func=run)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _fail(text: str) -> int:
    print(f"s2sgate check: {text}", file=sys.stderr)
    return EXIT_USAGE


def buildOptions(args: argparse.Namespace):
    """L{CheckOptions} from the command line; raise L{ValueError} (one line)."""
    from s2sgate.config import ConfigError, S2SConfig, load_config, parseNameserver
    from s2sgate.ops.check import CheckOptions

    s2s = S2SConfig()
    local: tuple[str, ...] = ()
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        s2s = config.s2s
        local = config.local_domains
    nameservers = s2s.dns.nameservers
    if args.nameserver:
        parsed = []
        for text in args.nameserver:
            ns = parseNameserver(text)
            if ns is None:
                raise ValueError(f"--nameserver: got {text!r}; allowed: IP, IP:PORT "
                                 "or [IPv6]:PORT")
            parsed.append(ns)
        nameservers = tuple(parsed)
    timeout = args.timeout
    return CheckOptions(
        domain=args.domain,
        s2s=s2s,
        localDomains=local,
        nameservers=tuple(nameservers),
        timeout=timeout if timeout is not None else s2s.outgoing.connection_timeout,
        dnsTimeout=timeout if timeout is not None else s2s.dns.timeout,
        dnsRetries=1 if timeout is not None else min(s2s.dns.retries, 1),
        configPath=args.config,
    )


def run(args: argparse.Namespace) -> int:
    from twisted.internet import task

    from s2sgate.auth.tls import TLSSetupError
    from s2sgate.ops.check import Checker, TextPrinter
    from s2sgate.xmpp.domain import InvalidDomain, normalize

    try:
        normalize(args.domain.rstrip(".") or args.domain)
    except InvalidDomain as e:
        return _fail(f"DOMAIN: {e}; give the domain part of an XMPP address, "
                     "e.g. example.com")
    try:
        options = buildOptions(args)
    except ValueError as e:
        return _fail(str(e))

    printer = None if args.json else TextPrinter()
    result: dict = {}

    async def main(reactor):
        try:
            checker = Checker(reactor, options,
                              emit=printer.step if printer is not None else (lambda s: None))
        except TLSSetupError as e:
            result["usage"] = str(e)
            return
        if printer is not None:
            printer.start(checker.report)
        try:
            result["report"] = await checker.run()
        except Exception as e:  # no traceback for the operator
            result["error"] = f"{type(e).__name__}: {e}".splitlines()[0]

    try:
        task.react(main)
    except SystemExit:
        pass
    except KeyboardInterrupt:
        return EXIT_FAILED
    if "usage" in result:
        return _fail(result["usage"])
    report = result.get("report")
    if "error" in result:
        print(f"s2sgate check: unexpected error: {result['error']}", file=sys.stderr)
        return EXIT_FAILED
    if report is None:
        print("s2sgate check: interrupted", file=sys.stderr)
        return EXIT_FAILED
    try:
        if printer is not None:
            printer.verdict(report)
        else:
            print(report.dumps(), flush=True)
    except BrokenPipeError:
        pass
    _quietStdout()
    return report.exitCode


def _quietStdout() -> None:
    """After a closed pipe, keep the interpreter's final flush from complaining."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
