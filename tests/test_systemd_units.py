"""The systemd units in etc/systemd: the template for several processes is the single
unit with the instance's config file, and systemd-analyze finds nothing else wrong."""

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "etc" / "systemd"


def directives(path):
    return [line for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_the_template_is_the_single_unit_with_one_config_file_per_instance():
    single = directives(UNITS / "s2sgate.service")
    template = directives(UNITS / "s2sgate@.service")
    expected = [line.replace("/etc/s2sgate/s2sgate.toml", "/etc/s2sgate/%i.toml")
                .replace("Description=s2sgate XMPP federation gateway",
                         "Description=s2sgate XMPP federation gateway, process %i")
                for line in single]
    added = [line for line in template if line not in expected]
    assert added == ["TimeoutStopSec=30"]
    assert [line for line in expected if line not in template] == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_finds_only_the_missing_install(tmp_path):
    shutil.copy(UNITS / "s2sgate@.service", tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", "./s2sgate@1.service"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if line.strip() and "/opt/s2sgate/bin/" not in line]
    assert problems == []
