"""GatewayService: reload behaviour, in process, without network traffic."""

from twisted.internet.testing import MemoryReactorClock

from s2sgate.config import load_config
from s2sgate.gateway.service import GatewayService

BASE = """
local_domains = ["example.com"]
[component]
jid = "s2s.example.com"
secret = "x"
[s2s]
use_starttls = "false"
listen = []
{extra}
[admin]
listen = ""
"""


def gateway(tmp_path, extra=""):
    path = tmp_path / "s2sgate.toml"
    path.write_text(BASE.format(extra=extra))
    reactor = MemoryReactorClock()
    return GatewayService(load_config(path), reactor), path


def test_reload_applies_a_new_host_policy(tmp_path):
    gw, path = gateway(tmp_path)
    path.write_text(BASE.format(extra='host_policy = [ { host = "spam.test", policy = "deny" } ]'))
    before = gw.current.runtime
    assert gw.reload() == []
    assert gw.current.runtime.policy.check("example.com", "spam.test")[0] is False
    assert before.policy.check("example.com", "spam.test")[0] is True
    assert gw.config.s2s.host_policy and gw.current.runtime.keys is before.keys


def test_reload_reports_settings_that_need_a_restart(tmp_path):
    gw, path = gateway(tmp_path)
    path.write_text(BASE.format(extra='listen = ["tcp:5999"]').replace("listen = []\n", "", 1))
    assert gw.reload() == ["s2s.listen"]
    # Reloading again still says so: the process still runs the old listeners.
    assert gw.reload() == ["s2s.listen"]


def test_reload_reports_outgoing_and_component_changes(tmp_path):
    gw, path = gateway(tmp_path)
    path.write_text(BASE.format(extra="[s2s.outgoing]\nip_versions = [6, 4]")
                    .replace('secret = "x"', 'secret = "y"'))
    assert set(gw.reload()) == {"component", "s2s.outgoing.ip_versions"}


def test_connector_races_with_the_configured_attempt_delay(tmp_path):
    gw, path = gateway(tmp_path, "[s2s.outgoing]\nconnection_attempt_delay = 0.1")
    assert (gw.connector.attemptDelay, gw.connector.timeout) == (0.1, 10)
    path.write_text(BASE.format(extra="[s2s.outgoing]\nconnection_attempt_delay = 0.5"))
    assert gw.reload() == ["s2s.outgoing.connection_attempt_delay"]


def test_a_bad_file_on_sighup_keeps_the_old_config_without_a_traceback(tmp_path):
    gw, path = gateway(tmp_path)
    before = gw.config
    path.write_text(BASE.format(extra="frobnicate = 1"))
    gw._reloadFromSignal()     # what the SIGHUP handler calls; must not raise
    assert gw.config is before
