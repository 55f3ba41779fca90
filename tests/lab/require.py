"""What a test needs from the machine: skip without it, fail under CI's S2SGATE_REQUIRE_SERVERS=1."""
from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(what: str, install: str) -> NoReturn:
    """C{what} is not on this machine; C{install} is the command that adds it."""
    if os.environ.get("S2SGATE_REQUIRE_SERVERS") == "1":
        pytest.fail(f"S2SGATE_REQUIRE_SERVERS=1 but {what}: {install}")
    pytest.skip(f"{what}: {install}")
