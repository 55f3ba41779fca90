"""
Every C{test-case-name} header in s2sgate/ names test modules that exist
(C{trial --testmodule} and editors run what the header names).
"""

import importlib.util
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "s2sgate"
HEADER = re.compile(r"-\*-\s*test-case-name:\s*(.*?)\s*-\*-")


def headers():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        with path.open(encoding="utf-8") as f:
            head = f.readline() + f.readline()
        for match in HEADER.finditer(head):
            found.append((path.relative_to(PACKAGE.parent).as_posix(), match.group(1)))
    return found


def test_the_modules_of_stanzas_and_metrics_have_headers():
    named = dict(headers())
    assert named["s2sgate/xmpp/stanzas.py"] == "tests.test_stanzas"
    assert named["s2sgate/ops/metrics.py"] == "tests.test_metrics"


@pytest.mark.parametrize(("source", "names"), headers())
def test_test_case_name_header_names_existing_test_modules(source, names):
    for name in (n.strip() for n in names.split(",")):
        assert name.startswith("tests.test_"), f"{source}: {name} is not a test module"
        assert importlib.util.find_spec(name) is not None, f"{source}: no module {name}"
