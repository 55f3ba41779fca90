# -*- test-case-name: tests.test_cli -*-
"""
The C{s2sgate} command: operator tools around the gateway.

The gateway itself runs under twistd (C{twistd -n s2sgate --config ...});
this command is for what an operator does before and beside that, starting
with C{s2sgate config check FILE}.  Errors are one line on stderr and a
non-zero exit status, never a traceback.  Subcommands hang off
L{build_parser}; each sets C{func}, which gets the parsed arguments and
returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from s2sgate import __version__

# Each module in s2sgate/commands/ adds its subcommands with register(subparsers).
COMMAND_MODULES = ("demo", "ops", "check")

EXIT_OK = 0
EXIT_CONFIG = 2


def _configCheck(args: argparse.Namespace) -> int:
    """Load the config file; print a summary, or the one-line error."""
    from s2sgate.config import ConfigError, load_config

    try:
        config = load_config(args.file)
        from s2sgate.gateway.service import buildTLS
        buildTLS(config)   # certificate and key load and match
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_CONFIG
    c = config.component
    s2s = config.s2s
    print(f"{args.file}: ok")
    print(f"  local domains: {', '.join(config.local_domains)}")
    print(f"  component:     {c.jid} via {c.host}:{c.port}")
    print(f"  s2s listen:    {', '.join(s2s.listen) or '(none)'}")
    if s2s.direct_tls_listen:
        print(f"  direct TLS:    {', '.join(s2s.direct_tls_listen)}")
    print(f"  use_starttls:  {s2s.use_starttls}")
    print(f"  admin:         {config.admin.listen or '(disabled)'}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser; add subcommands to its subparsers."""
    parser = argparse.ArgumentParser(
        prog="s2sgate",
        description="XMPP federation gateway: all s2s work for a c2s server.",
    )
    parser.add_argument(
        "--version", action="version", version=f"s2sgate {__version__}"
    )
    parser.set_defaults(func=None)   # no command given: the usage
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    config = commands.add_parser("config", help="work with configuration files")
    configCommands = config.add_subparsers(title="config commands", metavar="COMMAND")
    config.set_defaults(func=lambda args: _usage(config))

    check = configCommands.add_parser(
        "check", help="load a config file and report the first problem, if any"
    )
    check.add_argument("file", metavar="FILE", help="the TOML config file")
    check.set_defaults(func=_configCheck)
    for name in COMMAND_MODULES:
        importlib.import_module(f"s2sgate.commands.{name}").register(commands)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line in C{argv} (default C{sys.argv[1:]}); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.func is None:
        return _usage(parser)
    try:
        return args.func(args)
    except BrokenPipeError:
        # `s2sgate sessions --json | head`: the reader is gone; say nothing more.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
