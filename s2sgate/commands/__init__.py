"""
Subcommands of the C{s2sgate} command, one module each.

Each module has C{register(subparsers)}, which adds its parsers and sets
C{func(args) -> exit status} on them; L{s2sgate.cli.COMMAND_MODULES} lists
the modules.
"""
