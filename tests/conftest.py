"""Shared pytest setup.

Tests marked ``@pytest.mark.servers`` run real Prosody / ejabberd / dnsmasq processes
(see tests/lab/). Without those programs they skip with one line; with
``S2SGATE_REQUIRE_SERVERS=1`` (CI) they fail instead.
"""
from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import Phase, settings

_SERVER_TOOLS = {
    "prosody": "prosody",
    "prosodyctl": "prosody",
    "ejabberdctl": "ejabberd",
    "dnsmasq": "dnsmasq-base",
    "unshare": "util-linux",
    "setpriv": "util-linux",
}
_APT = "apt-get install prosody lua-sec lua-unbound ejabberd dnsmasq-base"

# scripts/mutate runs each mutant against every test that reaches the mutated
# function, and every stream test reaches the parser: at their full example
# counts, shrinking each failure, the properties made one parser mutant cost
# 20-40 s.  Under S2SGATE_HYPOTHESIS=mutation (set by scripts/mutate) each
# property runs at most MUTATION_EXAMPLES examples, the same ones every run
# (a mutant's verdict does not depend on luck), stored nowhere, not shrunk (a
# killed mutant needs one failing example, not the smallest).  The exact
# boundaries are pinned by deterministic tests, not left to the properties.
MUTATION_EXAMPLES = 25
settings.register_profile("mutation", max_examples=MUTATION_EXAMPLES, deadline=None,
                          derandomize=True, database=None,
                          phases=(Phase.explicit, Phase.reuse, Phase.generate))
if os.environ.get("S2SGATE_HYPOTHESIS") == "mutation":
    settings.load_profile("mutation")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "servers: needs real prosody, ejabberd and dnsmasq (tests/lab); "
        "skipped when missing unless S2SGATE_REQUIRE_SERVERS=1")


def pytest_collection_modifyitems(items):
    """Under the mutation profile, cap the properties that name their own example count too."""
    if settings.get_current_profile_name() != "mutation":
        return
    for item in items:
        test = getattr(item, "obj", None)
        # Where @settings keeps a test's settings; read each time the test runs.
        own = getattr(test, "_hypothesis_internal_use_settings", None)
        if own is not None and own.max_examples > MUTATION_EXAMPLES:
            test._hypothesis_internal_use_settings = settings(own, max_examples=MUTATION_EXAMPLES)


def _servers_problem():
    missing = sorted({pkg for tool, pkg in _SERVER_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        return f"{', '.join(missing)} not installed: {_APT}"
    if os.geteuid() != 0:
        return "server tests need root (mount namespaces for the test DNS, setpriv for ejabberd)"
    return None


_PROBLEM = _servers_problem()


def pytest_runtest_setup(item):
    if _PROBLEM and item.get_closest_marker("servers") is not None:
        if os.environ.get("S2SGATE_REQUIRE_SERVERS") == "1":
            pytest.fail(f"S2SGATE_REQUIRE_SERVERS=1 but {_PROBLEM}", pytrace=False)
        pytest.skip(_PROBLEM)


def pytest_sessionstart(session):
    """With S2SGATE_TEST_LOG=FILE, the gateway's Twisted log goes to FILE."""
    path = os.environ.get("S2SGATE_TEST_LOG")
    if path:
        from twisted.logger import globalLogPublisher, textFileLogObserver
        globalLogPublisher.addObserver(textFileLogObserver(open(path, "a")))


@pytest.fixture
def example_config(tmp_path):
    """
    etc/s2sgate.toml as an operator would use it: the same file with its
    certfile pointing at a real certificate for its domains.
    """
    from pathlib import Path

    from tests.lab.certs import TestCA

    example = Path(__file__).resolve().parents[1] / "etc" / "s2sgate.toml"
    certfile, _ = TestCA(tmp_path / "ca").issue(
        "example.com", dns=["example.com", "conference.example.com"])
    path = tmp_path / "s2sgate.toml"
    text = example.read_text()
    assert '"/etc/s2sgate/example.com.pem"' in text
    path.write_text(text.replace('"/etc/s2sgate/example.com.pem"', f'"{certfile}"'))
    return path
