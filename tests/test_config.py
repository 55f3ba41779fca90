"""Tests for L{s2sgate.config}."""

import copy
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2sgate.config import (
    AddressOverride,
    ConfigError,
    DomainCert,
    HostPolicy,
    load_config,
    parse_config,
    parseNameserver,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "etc" / "s2sgate.toml"
SECRET = "s3cr3t-Value-xyz"
LINE = re.compile(r"^(?P<file>[^\n]+?): (?P<key>[^\n]+?): (?P<problem>[^\n]+); allowed: (?P<allowed>[^\n]+)$")

# The checks only look for the PEM markers; TLS code loads the real thing.
FAKE_PEM = (
    "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
)


def minimal(**s2s):
    """A valid config dict with only the required keys (plus C{s2s} keys)."""
    data = {
        "local_domains": ["example.com"],
        "component": {"jid": "s2s.example.com", "secret": SECRET},
        "s2s": {"use_starttls": "false"},
    }
    data["s2s"].update(s2s)
    return data


def reject(data, filename="x.toml"):
    """Parse C{data}, expect a L{ConfigError}, check its one-line shape."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, filename)
    err = info.value
    text = str(err)
    assert "\n" not in text
    m = LINE.match(text)
    assert m, text
    assert text == f"{err.file}: {err.key}: {err.problem}; allowed: {err.allowed}"
    assert err.file == filename
    assert SECRET not in text
    return err


@pytest.fixture
def pem(tmp_path):
    path = tmp_path / "cert.pem"
    path.write_text(FAKE_PEM)
    return str(path)


# --- the example and the defaults -------------------------------------------


def test_example_file_loads(example_config):
    config = load_config(example_config)
    assert config.local_domains == ("example.com", "conference.example.com")
    assert config.component.jid == "s2s.example.com"
    assert config.s2s.listen == ("tcp:5269",)
    assert config.s2s.use_starttls == "required"
    assert config.admin.listen == "tcp:5281:interface=127.0.0.1"


def test_example_file_without_its_certificate_names_the_certfile():
    with pytest.raises(ConfigError) as e:
        load_config(EXAMPLE)
    assert e.value.key == "s2s.certfile"
    assert "/etc/s2sgate/example.com.pem" in str(e.value)


def test_example_file_names_every_key():
    text = EXAMPLE.read_text()
    from s2sgate.config import _S2S_KEYS

    for key in _S2S_KEYS + ("jid", "host", "port", "secret", "secret_file",
                            "keepalive", "auth_retry_delay", "buffer_limit",
                            "buffer_timeout", "buffer_bytes", "high_water", "low_water",
                            "ip_versions", "connection_timeout", "connection_attempt_delay",
                            "timeout", "retries", "nameservers", "level", "format"):
        assert re.search(rf"^#? ?{key} =|\[s2s\.{key}\]", text, re.M), key


def test_defaults():
    config = parse_config(minimal(), "x.toml")
    c, s = config.component, config.s2s
    assert (c.host, c.port, c.keepalive, c.max_retry_delay, c.auth_retry_delay,
            c.buffer_limit, c.buffer_timeout, c.secret_file) == (
        "127.0.0.1", 5347, 60, 60, 300, 1000, 60, None)
    assert s.listen == ("tcp:5269",)
    assert s.direct_tls_listen == ()
    assert s.default_policy == "allow"
    assert s.host_policy == () and s.domain_certfile == () and s.address == ()
    assert s.certfile is None and s.cafile is None and s.ciphers is None
    assert s.shared is None
    assert s.secure_auth is False and s.allow_anonymous_s2s is False
    assert s.stanza_size_limit == 524288
    assert s.max_retry_delay == 300
    assert (s.queue_limit, s.idle_timeout, s.negotiation_timeout) == (1000, 600, 30)
    assert s.bidi is True
    assert (s.outgoing.port, s.outgoing.ip_versions, s.outgoing.connection_timeout,
            s.outgoing.connection_attempt_delay) == (5269, (4, 6), 10, 0.25)
    assert (s.dns.timeout, s.dns.retries, s.dns.nameservers) == (10, 2, ())
    assert config.admin.listen == "tcp:5281:interface=127.0.0.1"
    assert (config.log.level, config.log.format) == ("info", "text")


def test_default_use_starttls_is_required(pem):
    data = minimal(certfile=pem)
    del data["s2s"]["use_starttls"]
    assert parse_config(data, "x.toml").s2s.use_starttls == "required"


def test_config_is_immutable():
    config = parse_config(minimal(), "x.toml")
    with pytest.raises(AttributeError):
        config.local_domains = ()
    assert isinstance(config.s2s.listen, tuple)


def test_config_is_hashable_and_comparable():
    assert parse_config(minimal(), "x.toml") == parse_config(minimal(), "x.toml")
    hash(parse_config(minimal(), "x.toml"))


# --- files and syntax ---------------------------------------------------------


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: -: cannot read {path!r} (No such file or directory); "
        "allowed: a readable TOML file")


def test_toml_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('local_domains = ["a.example"]\n[component\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.key.startswith("line 2, column")
    assert "TOML syntax error" in err.problem
    assert LINE.match(str(err))


def test_not_utf8(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'local_domains = ["\xff"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problem == "not valid UTF-8"


# --- enumerations, ranges, types ---------------------------------------------


def test_use_starttls_enumeration():
    err = reject(minimal(use_starttls="maybe"), "etc/s2sgate.toml")
    assert str(err) == (
        "etc/s2sgate.toml: s2s.use_starttls: got 'maybe'; allowed: "
        '"false", "optional", "required", "required_trusted"')


def test_use_starttls_boolean_is_refused():
    err = reject(minimal(use_starttls=False))
    assert err.key == "s2s.use_starttls"
    assert err.problem == "got false (a boolean)"


def test_stanza_size_limit_minimum():
    err = reject(minimal(stanza_size_limit=5000))
    assert str(err) == (
        "x.toml: s2s.stanza_size_limit: got 5000; allowed: an integer >= 10000")


def test_bool_is_not_an_integer():
    err = reject(minimal(stanza_size_limit=True))
    assert err.key == "s2s.stanza_size_limit"
    assert err.problem == "got true (a boolean)"


def test_bool_is_not_a_port():
    data = minimal()
    data["component"]["port"] = True
    assert reject(data).key == "component.port"


def test_bool_is_not_a_number_of_seconds():
    data = minimal()
    data["component"]["keepalive"] = True
    assert reject(data).key == "component.keepalive"


def test_float_is_not_an_integer():
    assert reject(minimal(queue_limit=10.0)).key == "s2s.queue_limit"


def test_seconds_may_be_floats():
    data = minimal(idle_timeout=0.5)
    data["component"]["keepalive"] = 2.5
    config = parse_config(data, "x.toml")
    assert (config.component.keepalive, config.s2s.idle_timeout) == (2.5, 0.5)


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan")])
def test_timeouts_must_be_positive_and_finite(value):
    err = reject(minimal(negotiation_timeout=value))
    assert err.key == "s2s.negotiation_timeout"
    assert err.allowed == "a number of seconds > 0"


def test_component_port_range():
    data = minimal()
    data["component"]["port"] = 70000
    err = reject(data)
    assert str(err) == "x.toml: component.port: got 70000; allowed: an integer from 1 to 65535"


def test_component_max_retry_delay_at_least_one():
    data = minimal()
    data["component"]["max_retry_delay"] = 0.5
    assert reject(data).allowed == "a number of seconds >= 1"


def test_buffer_limit_may_be_zero():
    data = minimal()
    data["component"]["buffer_limit"] = 0
    assert parse_config(data, "x.toml").component.buffer_limit == 0


def test_log_level_enumeration():
    data = minimal()
    data["log"] = {"level": "verbose"}
    err = reject(data)
    assert err.key == "log.level"
    assert err.allowed == '"debug", "info", "warn", "error"'


def test_log_format_enumeration():
    data = minimal()
    data["log"] = {"format": "xml"}
    assert reject(data).allowed == '"text" or "json"'


def test_wrong_type_for_table():
    data = minimal()
    data["s2s"] = "yes"
    err = reject(data)
    assert err.key == "s2s"
    assert err.problem == "got 'yes' (a string)"


def test_ip_versions():
    config = parse_config({**minimal(), "s2s": {"use_starttls": "false",
                                                "outgoing": {"ip_versions": [6, 4]}}},
                          "x.toml")
    assert config.s2s.outgoing.ip_versions == (6, 4)


@pytest.mark.parametrize("value", [[], [4, 4], [5], [True], "4"])
def test_ip_versions_rejected(value):
    err = reject(minimal(outgoing={"ip_versions": value}))
    assert err.key.startswith("s2s.outgoing.ip_versions")


@pytest.mark.parametrize("value", [0, 0.001, 2.5, "fast", True])
def test_connection_attempt_delay_rejected(value):
    err = reject(minimal(outgoing={"connection_attempt_delay": value}))
    assert err.key == "s2s.outgoing.connection_attempt_delay"


def test_multiplex_defaults():
    m = parse_config(minimal(), "x.toml").s2s.multiplex
    assert (m.enabled, m.answer_timeout, m.remember_peers, m.forget_after) == (True, 10, 1000, 86400)


@pytest.mark.parametrize("key, value, allowed", [
    ("enabled", "yes", "true or false"),
    ("answer_timeout", 0, "a number of seconds > 0"),
    ("answer_timeout", float("inf"), "a number of seconds > 0"),
    ("remember_peers", 0, "an integer >= 1"),
    ("remember_peers", 2.5, "an integer >= 1"),
    ("forget_after", -1, "a number of seconds > 0"),
])
def test_multiplex_keys_are_checked_with_one_line(key, value, allowed):
    err = reject(minimal(multiplex={key: value}))
    assert (err.key, err.allowed) == (f"s2s.multiplex.{key}", allowed)
    assert str(err).startswith(f"x.toml: s2s.multiplex.{key}: got ")


def test_dane_needs_a_configured_validating_resolver(pem):
    err = reject(minimal(dane="opportunistic"))
    assert err.key == "s2s.dane" and "validating resolver" in err.problem
    assert reject(minimal(dane_domains=["a.example"])).key == "s2s.dane_domains"
    err = reject(minimal(dane="required", dns={"nameservers": ["127.0.0.1"]}))
    assert "needs TLS" in err.problem
    ok = parse_config(minimal(dane="required", dns={"nameservers": ["127.0.0.1"]},
                              use_starttls="required", certfile=pem), "x.toml")
    assert (ok.s2s.dane, ok.s2s.dane_domains) == ("required", ())


def test_dane_mode_is_one_of_three():
    err = reject(minimal(dane="yes", dns={"nameservers": ["127.0.0.1"]}))
    assert err.key == "s2s.dane" and '"opportunistic"' in err.allowed


def test_dns_retries_may_be_zero():
    assert parse_config(minimal(dns={"retries": 0}), "x.toml").s2s.dns.retries == 0


def test_dns_retries_not_negative():
    assert reject(minimal(dns={"retries": -1})).key == "s2s.dns.retries"


# --- required keys ------------------------------------------------------------


def test_local_domains_required():
    data = minimal()
    del data["local_domains"]
    err = reject(data)
    assert (err.key, err.problem) == ("local_domains", "missing")


def test_local_domains_not_empty():
    data = minimal()
    data["local_domains"] = []
    assert reject(data).key == "local_domains"


def test_component_required():
    data = minimal()
    del data["component"]
    err = reject(data)
    assert (err.key, err.problem) == ("component", "missing")


def test_component_jid_required():
    data = minimal()
    del data["component"]["jid"]
    assert reject(data).key == "component.jid"


def test_s2s_table_optional():
    data = minimal()
    del data["s2s"]
    data["s2s"] = {"use_starttls": "false"}
    assert parse_config(data, "x.toml").s2s.listen == ("tcp:5269",)


# --- unknown keys ---------------------------------------------------------------


@pytest.mark.parametrize("table", [
    (), ("component",), ("s2s",), ("s2s", "outgoing"), ("s2s", "dns"),
    ("s2s", "multiplex"), ("admin",), ("log",),
])
def test_unknown_key_in_every_table(table):
    data = minimal()
    node = data
    for name in table:
        node = node.setdefault(name, {})
    node["frobnicate"] = 1
    err = reject(data)
    assert err.key == ".".join(table + ("frobnicate",))
    assert err.problem == "unknown key"


def test_unknown_key_lists_allowed_keys():
    err = reject(minimal(frobnicate=1))
    assert err.key == "s2s.frobnicate"
    assert "use_starttls" in err.allowed and "stanza_size_limit" in err.allowed


@pytest.mark.parametrize("name, entry", [
    ("host_policy", {"host": "a.example", "policy": "deny", "x": 1}),
    ("address", {"host": "a.example", "ip_address": "192.0.2.1", "x": 1}),
    ("domain_certfile", {"domain": "example.com", "certfile": "c", "x": 1}),
])
def test_unknown_key_in_array_entries(name, entry):
    err = reject(minimal(**{name: [entry]}))
    assert err.key == f"s2s.{name}[0].x"


# --- secrets ----------------------------------------------------------------------


def test_secret_not_in_repr():
    config = parse_config(minimal(shared="dialback-" + SECRET), "x.toml")
    assert SECRET not in repr(config)
    assert "secret='***'" in repr(config.component)
    assert "shared='***'" in repr(config.s2s)


def test_secret_not_in_error_when_wrong_type():
    data = minimal()
    data["component"]["secret"] = 123456789
    err = reject(data)
    assert "123456789" not in str(err)
    assert err.key == "component.secret"


def test_shared_not_in_error_when_wrong_type():
    err = reject(minimal(shared=987654321))
    assert "987654321" not in str(err)


def test_secret_not_in_any_error_when_other_keys_are_wrong():
    data = minimal(stanza_size_limit="no")
    assert SECRET not in str(reject(data))


def test_secret_and_secret_file_exclusive(tmp_path):
    data = minimal()
    data["component"]["secret_file"] = str(tmp_path / "s")
    err = reject(data)
    assert err.allowed == "exactly one of secret, secret_file"


def test_secret_or_secret_file_required():
    data = minimal()
    del data["component"]["secret"]
    err = reject(data)
    assert (err.key, err.problem) == ("component.secret", "missing")


def test_empty_secret_refused():
    data = minimal()
    data["component"]["secret"] = ""
    assert reject(data).key == "component.secret"


def test_secret_file_read_and_newline_stripped(tmp_path):
    (tmp_path / "secret").write_text(SECRET + "\n")
    data = minimal()
    del data["component"]["secret"]
    data["component"]["secret_file"] = "secret"
    config = parse_config(data, str(tmp_path / "s2sgate.toml"))
    assert config.component.secret == SECRET
    assert config.component.secret_file == str(tmp_path / "secret")
    assert SECRET not in repr(config)


def test_secret_file_empty(tmp_path):
    (tmp_path / "secret").write_text("\n")
    data = minimal()
    del data["component"]["secret"]
    data["component"]["secret_file"] = str(tmp_path / "secret")
    err = reject(data)
    assert err.key == "component.secret_file"
    assert "is empty" in err.problem


def test_secret_file_unreadable(tmp_path):
    data = minimal()
    del data["component"]["secret"]
    data["component"]["secret_file"] = str(tmp_path / "missing")
    err = reject(data)
    assert err.key == "component.secret_file"
    assert "No such file or directory" in err.problem


def test_shared_empty_means_random_per_start():
    assert parse_config(minimal(shared=""), "x.toml").s2s.shared is None


# --- domains ----------------------------------------------------------------------


def test_domains_are_normalised():
    data = minimal(host_policy=[{"host": "Spam.EXAMPLE", "policy": "deny"}],
                   insecure_domains=["Bücher.example"])
    data["local_domains"] = ["Example.COM", "faß.de"]
    data["component"]["jid"] = "S2S.Example.com"
    config = parse_config(data, "x.toml")
    assert config.local_domains == ("example.com", "xn--fa-hia.de")
    assert config.component.jid == "s2s.example.com"
    assert config.s2s.host_policy == (HostPolicy("spam.example", "deny"),)
    assert config.s2s.insecure_domains == ("xn--bcher-kva.example",)


def test_invalid_domain():
    data = minimal()
    data["local_domains"] = ["bad domain!"]
    err = reject(data)
    assert err.key == "local_domains[0]"
    assert err.problem == "'bad domain!' is not a valid IDNA domain"
    assert str(err).startswith(
        "x.toml: local_domains[0]: 'bad domain!' is not a valid IDNA domain; allowed: ")


def test_trailing_dot_refused():
    data = minimal()
    data["component"]["jid"] = "s2s.example.com."
    assert reject(data).key == "component.jid"


def test_duplicate_local_domains_after_normalising():
    data = minimal()
    data["local_domains"] = ["example.com", "EXAMPLE.com"]
    err = reject(data)
    assert err.key == "local_domains[1]"
    assert "local_domains[0]" in err.problem


def test_local_domain_not_a_string():
    data = minimal()
    data["local_domains"] = [5]
    assert reject(data).problem == "got 5 (an integer)"


@pytest.mark.parametrize("key", ["anonymous_domains", "disabled_domains"])
def test_subset_of_local_domains(key):
    err = reject(minimal(**{key: ["other.example"]}))
    assert err.key == f"s2s.{key}[0]"
    assert "not in local_domains" in err.problem


def test_domain_in_secure_and_insecure(pem):
    err = reject(minimal(secure_domains=["a.example"], insecure_domains=["A.example"],
                         use_starttls="optional", certfile=pem))
    assert err.key == "s2s.secure_domains[0]"
    assert "also in s2s.insecure_domains" in err.problem


def test_secure_domains_need_tls():
    assert reject(minimal(secure_domains=["a.example"])).key == "s2s.secure_domains"


# --- policy -------------------------------------------------------------------------


def test_host_policy_missing_policy():
    err = reject(minimal(host_policy=[{"host": "a.example", "policy": "deny"},
                                      {"host": "b.example"}]))
    assert str(err) == 'x.toml: s2s.host_policy[1].policy: missing; allowed: "allow" or "deny"'


def test_host_policy_bad_policy():
    err = reject(minimal(host_policy=[{"host": "a.example", "policy": "block"}]))
    assert err.key == "s2s.host_policy[0].policy"


def test_host_policy_duplicate_host():
    err = reject(minimal(host_policy=[{"host": "a.example", "policy": "deny"},
                                      {"host": "A.example", "policy": "allow"}]))
    assert err.key == "s2s.host_policy[1].host"


def test_host_policy_entry_not_a_table():
    assert reject(minimal(host_policy=["a.example"])).key == "s2s.host_policy[0]"


def test_policy_for():
    config = parse_config(minimal(default_policy="deny", host_policy=[
        {"host": "friend.example", "policy": "allow"}]), "x.toml")
    assert config.policy_for("friend.example") == "allow"
    assert config.policy_for("Friend.Example") == "allow"
    assert config.policy_for("other.example") == "deny"
    assert config.policy_for("sub.friend.example") == "deny"


def test_policy_for_default_allow():
    config = parse_config(minimal(host_policy=[{"host": "spam.example", "policy": "deny"}]),
                          "x.toml")
    assert config.policy_for("spam.example") == "deny"
    assert config.policy_for("ham.example") == "allow"
    assert config.policy_for("bad domain!") == "deny"


# --- address overrides, nameservers -------------------------------------------------


def test_address_override_port_defaults_to_outgoing_port():
    config = parse_config(minimal(
        outgoing={"port": 5299},
        address=[{"host": "Peer.example", "ip_address": "2001:0db8::7"},
                 {"host": "b.example", "ip_address": "192.0.2.8", "port": 1}]), "x.toml")
    assert config.s2s.address == (
        AddressOverride("peer.example", "2001:db8::7", 5299),
        AddressOverride("b.example", "192.0.2.8", 1))
    assert config.address_for("peer.example").ip_address == "2001:db8::7"
    assert config.address_for("none.example") is None


def test_address_override_bad_ip():
    err = reject(minimal(address=[{"host": "a.example", "ip_address": "a.example"}]))
    assert err.key == "s2s.address[0].ip_address"


def test_address_override_missing_ip():
    err = reject(minimal(address=[{"host": "a.example"}]))
    assert (err.key, err.problem) == ("s2s.address[0].ip_address", "missing")


def test_nameservers_parsed():
    config = parse_config(minimal(dns={"nameservers": [
        "127.0.0.53", "192.0.2.1:5353", "::1", "[2001:db8::1]:54", "[::1]"]}), "x.toml")
    assert config.s2s.dns.nameservers == (
        ("127.0.0.53", 53), ("192.0.2.1", 5353), ("::1", 53),
        ("2001:db8::1", 54), ("::1", 53))


@pytest.mark.parametrize("text", [
    "", "ns.example", "192.0.2.1:0", "192.0.2.1:70000", "192.0.2.1:x",
    "[192.0.2.1]:53", "2001:db8::1]:53", "[::1]:", 53,
])
def test_nameserver_rejected(text):
    assert parseNameserver(text) is None
    err = reject(minimal(dns={"nameservers": [text]}))
    assert err.key == "s2s.dns.nameservers[0]"


# --- endpoints --------------------------------------------------------------------------


def test_listen_endpoints():
    config = parse_config(minimal(listen=["tcp:5269:interface=10.0.0.5",
                                          "tcp6:5269:interface=\\:\\:", "unix:/tmp/s"]),
                          "x.toml")
    assert len(config.s2s.listen) == 3


def test_listen_may_be_empty():
    assert parse_config(minimal(listen=[]), "x.toml").s2s.listen == ()


@pytest.mark.parametrize("value", ["", "tcp:abc", "foo:1", "tcp:5269:bogus=1",
                                   "tcp:99999", 5269])
def test_listen_endpoint_rejected(value):
    err = reject(minimal(listen=[value]))
    assert err.key == "s2s.listen[0]"
    assert "Twisted endpoint string" in err.allowed


def test_admin_listen_checked():
    data = minimal()
    data["admin"] = {"listen": "nope"}
    assert reject(data).key == "admin.listen"


@pytest.mark.parametrize("listen", ["tcp:5281:interface=127.0.0.1", "tcp:5281:interface=127.0.0.9",
                                    r"tcp6:5281:interface=\:\:1", "unix:/run/s2sgate/admin.sock"])
def test_admin_on_loopback_needs_no_token(listen):
    data = minimal()
    data["admin"] = {"listen": listen}
    admin = parse_config(data, "x.toml").admin
    assert admin.listen == listen
    assert admin.token is None


@pytest.mark.parametrize("listen", ["tcp:5281", "tcp:5281:interface=0.0.0.0",
                                    "tcp:5281:interface=10.0.0.5", r"tcp6:5281:interface=\:\:"])
def test_admin_beyond_loopback_needs_a_token(listen):
    data = minimal()
    data["admin"] = {"listen": listen}
    err = reject(data)
    assert err.key == "admin.listen"
    assert "admin.token" in err.problem
    assert err.allowed == "a loopback interface, or set admin.token"
    data["admin"]["token"] = SECRET
    admin = parse_config(data, "x.toml").admin
    assert admin.listen == listen and admin.token == SECRET


def test_admin_token_never_shown():
    data = minimal()
    data["admin"] = {"token": SECRET}
    config = parse_config(data, "x.toml")
    assert config.admin.token == SECRET
    assert SECRET not in repr(config)
    assert SECRET not in repr(config.admin)


@pytest.mark.parametrize("token", ["", "two words", "tab\there", 12345, ["x"]])
def test_admin_token_checked(token):
    data = minimal()
    data["admin"] = {"token": token}
    err = reject(data)
    assert err.key == "admin.token"
    assert "printable ASCII" in err.allowed
    if isinstance(token, str) and token:
        assert token not in str(err)


# --- TLS keys and the cross-key rules -------------------------------------------------------


def test_starttls_required_needs_certfile():
    data = minimal()
    del data["s2s"]["use_starttls"]
    err = reject(data)
    assert err.key == "s2s.use_starttls"
    assert "needs s2s.certfile" in err.problem
    assert err.allowed == 'set s2s.certfile, or use_starttls = "false"'


@pytest.mark.parametrize("mode", ["optional", "required", "required_trusted"])
def test_every_tls_mode_needs_certfile(mode):
    assert reject(minimal(use_starttls=mode)).key == "s2s.use_starttls"


def test_certfile_satisfies_tls_rule(pem):
    config = parse_config(minimal(use_starttls="required_trusted", certfile=pem), "x.toml")
    assert config.s2s.certfile == pem


def test_domain_certfiles_for_every_local_domain_satisfy_tls_rule(pem):
    data = minimal(use_starttls="required", domain_certfile=[
        {"domain": "example.com", "certfile": pem},
        {"domain": "conference.example.com", "certfile": pem}])
    data["local_domains"] = ["example.com", "conference.example.com"]
    config = parse_config(data, "x.toml")
    assert config.s2s.domain_certfile[1] == DomainCert("conference.example.com", pem)


def test_domain_certfiles_for_some_local_domains_do_not(pem):
    data = minimal(use_starttls="required", domain_certfile=[
        {"domain": "example.com", "certfile": pem}])
    data["local_domains"] = ["example.com", "conference.example.com"]
    err = reject(data)
    assert err.key == "s2s.use_starttls"
    assert "conference.example.com" in err.problem


def test_domain_certfile_domain_must_be_local(pem):
    err = reject(minimal(domain_certfile=[{"domain": "other.example", "certfile": pem}]))
    assert err.key == "s2s.domain_certfile[0].domain"
    assert "not in local_domains" in err.problem


def test_certfile_unreadable():
    err = reject(minimal(certfile="/nope.pem"))
    assert str(err) == (
        "x.toml: s2s.certfile: cannot read '/nope.pem' (No such file or directory); "
        "allowed: a readable PEM file with key and chain")


def test_certfile_without_key(tmp_path):
    path = tmp_path / "c.pem"
    path.write_text(FAKE_PEM.split("-----BEGIN CERTIFICATE")[0].replace("PRIVATE KEY", "X"))
    assert reject(minimal(certfile=str(path))).key == "s2s.certfile"


def test_certfile_is_a_directory(tmp_path):
    err = reject(minimal(certfile=str(tmp_path)))
    assert "not a regular file" in err.problem


def test_certfile_relative_to_config_dir(tmp_path):
    (tmp_path / "cert.pem").write_text(FAKE_PEM)
    config = parse_config(minimal(certfile="cert.pem"), str(tmp_path / "s2sgate.toml"))
    assert config.s2s.certfile == str(tmp_path / "cert.pem")


def test_cafile_unreadable():
    assert reject(minimal(cafile="/nope-ca.pem")).key == "s2s.cafile"


def test_ciphers_checked():
    assert parse_config(minimal(ciphers="ECDHE+AESGCM"), "x.toml").s2s.ciphers == "ECDHE+AESGCM"
    assert reject(minimal(ciphers="NOT-A-CIPHER")).key == "s2s.ciphers"


def test_secure_auth_needs_tls():
    err = reject(minimal(secure_auth=True))
    assert err.key == "s2s.secure_auth"


def test_direct_tls_needs_certfile():
    assert reject(minimal(direct_tls_listen=["tcp:5270"])).key == "s2s.direct_tls_listen"


# --- anything else only ever raises ConfigError ------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
            | st.sampled_from(["example.com", "tcp:5269", "false", "deny", "127.0.0.1:53",
                               "", "required", "192.0.2.1"]))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=8) | st.sampled_from(["host", "policy", "domain", "certfile",
                                               "ip_address", "port"]),
        inner, max_size=4),
    max_leaves=12,
)
_paths = [("local_domains",), ("component",), ("component", "jid"), ("component", "port"),
          ("component", "secret"), ("component", "secret_file"), ("s2s",)] + [
    ("s2s", k) for k in ("listen", "host_policy", "use_starttls", "certfile", "domain_certfile",
                         "address", "stanza_size_limit", "anonymous_domains", "shared",
                         "secure_auth", "ciphers", "outgoing", "dns")] + [
    ("s2s", "outgoing", "ip_versions"), ("s2s", "dns", "nameservers"), ("admin",),
    ("admin", "listen"), ("admin", "token"), ("log", "level"), ("frob",)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_paths), _values), max_size=4))
def test_mutated_configs_only_raise_config_error(changes):
    data = minimal()
    for path, value in changes:
        node = data
        for name in path[:-1]:
            if not isinstance(node.get(name), dict):
                node[name] = {}
            node = node[name]
        node[path[-1]] = value
    try:
        config = parse_config(copy.deepcopy(data), "x.toml")
    except ConfigError as e:
        assert "\n" not in str(e)
        assert SECRET not in str(e)
    else:
        assert SECRET not in repr(config)


@settings(max_examples=200, deadline=None)
@given(_values)
def test_arbitrary_values_only_raise_config_error(data):
    try:
        parse_config(data, "x.toml")
    except ConfigError as e:
        assert "\n" not in str(e)


def test_toml_date_shown_in_toml_form():
    import datetime

    err = reject(minimal(idle_timeout=datetime.date(2020, 1, 2)))
    assert err.problem == "got 2020-01-02 (a date/time)"


# --- [s2s.limits]: bounds against misbehaving peers ---------------------------


def test_peer_limits_have_defaults():
    from s2sgate.config import PeerLimits

    assert parse_config(minimal(), "x.toml").s2s.limits == PeerLimits(
        verifies_per_stream=10, verifies_per_address=30, verifies_total=300,
        claims_per_stream=50, refused_claims=3, unauthenticated_per_address=32,
        unauthenticated_total=1000)


def test_example_file_names_every_peer_limit():
    from s2sgate.config import PeerLimits

    text = EXAMPLE.read_text()
    section = text.split("[s2s.limits]", 1)[1]
    for name in PeerLimits.__dataclass_fields__:
        assert re.search(rf"^{name} = {getattr(PeerLimits(), name)}\b", section, re.M), name


def test_a_peer_limit_below_one_is_refused_in_one_line():
    data = minimal()
    data["s2s"]["limits"] = {"verifies_total": 0}
    with pytest.raises(ConfigError) as e:
        parse_config(data, "x.toml")
    assert str(e.value) == "x.toml: s2s.limits.verifies_total: got 0; allowed: an integer >= 1"


def test_a_per_address_limit_above_the_total_is_refused():
    data = minimal()
    data["s2s"]["limits"] = {"unauthenticated_per_address": 50, "unauthenticated_total": 10}
    with pytest.raises(ConfigError) as e:
        parse_config(data, "x.toml")
    assert e.value.key == "s2s.limits.unauthenticated_per_address"


def test_an_unknown_peer_limit_is_refused():
    data = minimal()
    data["s2s"]["limits"] = {"verifies": 3}
    with pytest.raises(ConfigError) as e:
        parse_config(data, "x.toml")
    assert e.value.key == "s2s.limits.verifies"


def test_shutdown_timeout_defaults_to_10_and_is_checked():
    assert parse_config(minimal(), "x.toml").s2s.shutdown_timeout == 10
    assert parse_config(minimal(shutdown_timeout=0), "x.toml").s2s.shutdown_timeout == 0
    for value in (-1, "5", float("inf")):
        assert reject(minimal(shutdown_timeout=value)).key == "s2s.shutdown_timeout"


def test_several_processes_need_the_same_dialback_secret():
    data = minimal()
    data["admin"] = {"peers": ["http://127.0.0.1:5282"]}
    err = reject(data)
    assert err.key == "s2s.shared" and "admin.peers" in str(err)


def test_admin_peers_are_admin_urls_of_the_other_processes():
    data = minimal(shared="the same on every process")
    data["admin"] = {"peers": ["http://127.0.0.1:5282/", "unix:/run/s2sgate/2.sock"]}
    assert parse_config(data, "x.toml").admin.peers == ("http://127.0.0.1:5282",
                                                        "unix:/run/s2sgate/2.sock")
    assert parse_config(minimal(), "x.toml").admin.peers == ()


@pytest.mark.parametrize("peers, key", [
    ("http://127.0.0.1:5282", "admin.peers"),
    ([5282], "admin.peers[0]"),
    (["127.0.0.1:5282"], "admin.peers[0]"),
    (["http://127.0.0.1:5282/api/sessions"], "admin.peers[0]"),
    (["http://127.0.0.1:99999"], "admin.peers[0]"),
    (["unix:"], "admin.peers[0]"),
    (["http://a:1", "http://a:1/"], "admin.peers[1]"),
])
def test_admin_peers_checked(peers, key):
    data = minimal(shared="the same on every process")
    data["admin"] = {"peers": peers}
    assert reject(data).key == key


def test_bidi_is_a_boolean():
    assert str(reject(minimal(bidi="yes"))).startswith("x.toml: s2s.bidi: got ")
    assert parse_config(minimal(bidi=False), "x.toml").s2s.bidi is False
