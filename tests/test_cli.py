"""Tests for L{s2sgate.cli}."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from s2sgate import __version__
from s2sgate.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "etc" / "s2sgate.toml"


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"s2sgate {__version__}\n"


def test_config_check_ok(capsys, example_config):
    assert main(["config", "check", str(example_config)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == f"{example_config}: ok"
    assert "example.com, conference.example.com" in out
    assert "s2s.example.com via 127.0.0.1:5347" in out
    assert "tcp:5269" in out
    assert "use_starttls:  required" in out
    assert err == ""


def test_config_check_does_not_print_secret(capsys, example_config):
    main(["config", "check", str(example_config)])
    assert "change-me" not in capsys.readouterr().out


def test_config_check_error_is_one_line_on_stderr(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(EXAMPLE.read_text().replace('use_starttls = "required"',
                                                'use_starttls = "maybe"'))
    assert main(["config", "check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f'{path}: s2s.use_starttls: got \'maybe\'; allowed: "false", '
                   '"optional", "required", "required_trusted"\n')


def test_config_check_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.toml"
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert "No such file or directory" in err


def test_config_check_syntax_error(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[component\n")
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: line 1, column")


def test_config_check_needs_file(capsys):
    assert main(["config", "check"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_no_command_prints_usage(capsys):
    assert main([]) == 2
    assert "usage: s2sgate" in capsys.readouterr().err


def test_config_without_subcommand_prints_usage(capsys):
    assert main(["config"]) == 2
    assert "usage: s2sgate config" in capsys.readouterr().err


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "config" in capsys.readouterr().out


def test_parser_takes_more_subcommands(capsys):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    extra = subparsers.add_parser("extra-example")
    extra.set_defaults(func=lambda args: 7)
    assert parser.parse_args(["extra-example"]).func(None) == 7


def test_python_m_s2sgate_config_check(example_config):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "s2sgate", "config", "check", str(example_config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{example_config}: ok\n")
    assert result.stderr == ""


def test_config_check_reports_a_key_that_does_not_match_the_certificate(tmp_path, example_config,
                                                                         capsys):
    from tests.lab.certs import TestCA

    ca = TestCA(tmp_path / "other")
    cert, _ = ca.issue("example.com", dns=["example.com", "conference.example.com"])
    _, otherKey = ca.issue("example.com", dns=["example.com"])
    mixed = tmp_path / "mixed.pem"
    certOnly = open(cert).read().split("-----BEGIN PRIVATE KEY-----")[0]
    mixed.write_text(certOnly + open(otherKey).read())
    text = example_config.read_text()
    start = text.index('certfile = "') + len('certfile = "')
    end = text.index('"', start)
    example_config.write_text(text[:start] + str(mixed) + text[end:])
    assert main(["config", "check", str(example_config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s2s.certfile" in err


def test_python_m_s2sgate_error_has_no_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("local_domains = []\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "s2sgate", "config", "check", str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"{path}: local_domains: got []; allowed: a non-empty list of domains\n"


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`s2sgate … | head`: a reader that goes away is no traceback."""
    import subprocess
    import sys

    script = ("import sys, s2sgate.cli as c\n"
              "def func(args):\n"
              "    for _ in range(100000):\n"
              "        print('x' * 80)\n"
              "    return 0\n"
              "p = c.build_parser()\n"
              "sub = p._subparsers._group_actions[0]\n"
              "sub.add_parser('flood').set_defaults(func=func)\n"
              "c.build_parser = lambda: p\n"
              "sys.exit(c.main(['flood']))\n")
    r = subprocess.run(f"{sys.executable} -c \"$S\" | head -1", shell=True,
                       capture_output=True, text=True, env={"S": script, "PATH": "/usr/bin:/bin"})
    assert r.stdout == "x" * 80 + "\n"
    assert "Traceback" not in r.stderr, r.stderr
