# -*- test-case-name: tests.test_tap -*-
"""
C{twistd s2sgate}: options and service maker.

A bad config stops start-up with the one line L{ConfigError} gives (file,
key, what is allowed), not a traceback.
"""

import dataclasses
import sys

from twisted.python import usage

from s2sgate.config import ConfigError, load_config

DEFAULT_CONFIG = "/etc/s2sgate/s2sgate.toml"


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = ("Run the s2sgate XMPP federation gateway: all server-to-server work for a "
                "c2s server, attached to it as an XEP-0114 component.")
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The TOML configuration file."],
        ["log-format", None, None, "Log format, overriding [log] format: text or json."],
    ]
    # twistd's own options, which set this when they run us as a subcommand
    parent: usage.Options | None = None

    def postOptions(self):
        try:
            self["parsed"] = load_config(self["config"])
            if self["log-format"] is not None:
                if self["log-format"] not in ("text", "json"):
                    raise ConfigError("--log-format", "-", f"got {self['log-format']!r}",
                                      '"text" or "json"')
                self["parsed"] = dataclasses.replace(
                    self["parsed"], log=dataclasses.replace(self["parsed"].log,
                                                            format=self["log-format"]))
            if (self["parsed"].log.format == "json" and self.parent is not None
                    and not self.parent.get("nodaemon")):
                raise ConfigError(self["config"], "log.format",
                                  "JSON logs go to standard output, which a daemonised twistd "
                                  "discards", 'run "twistd --nodaemon" (-n), as the systemd '
                                  'unit does, or use "text"')
            from s2sgate.gateway.service import buildTLS
            self["tls"] = buildTLS(self["parsed"])   # a bad certificate stops start-up here
        except ConfigError as e:
            sys.stderr.write(f"s2sgate: {e}\n")
            raise SystemExit(2)


def makeService(options):
    from s2sgate.gateway.service import GatewayService
    return GatewayService(options["parsed"], applyLogLevel=True, handleSignals=True,
                          tls=options.get("tls"))
