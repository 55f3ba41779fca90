from s2sgate.auth.dialback import NS_DB, DialbackKeys, dbElement, dbError, dbErrorReason


def test_key_is_deterministic_for_the_same_receiving_originating_and_id():
    keys = DialbackKeys("secret")
    assert keys.generate("a.test", "b.test", "id1") == keys.generate("a.test", "b.test", "id1")


def test_key_is_hex_sha256():
    key = DialbackKeys("secret").generate("a.test", "b.test", "id1")
    assert len(key) == 64 and int(key, 16) >= 0


def test_key_changes_when_receiving_originating_or_id_changes():
    keys = DialbackKeys("secret")
    base = keys.generate("a.test", "b.test", "id1")
    assert keys.generate("x.test", "b.test", "id1") != base
    assert keys.generate("a.test", "x.test", "id1") != base
    assert keys.generate("a.test", "b.test", "id2") != base
    assert keys.generate("b.test", "a.test", "id1") != base


def test_check_accepts_the_right_key():
    keys = DialbackKeys("secret")
    key = keys.generate("a.test", "b.test", "id1")
    assert keys.check("a.test", "b.test", "id1", key)


def test_check_accepts_the_right_key_with_surrounding_whitespace():
    keys = DialbackKeys("secret")
    key = keys.generate("a.test", "b.test", "id1")
    assert keys.check("a.test", "b.test", "id1", f"\n  {key}  \n")


def test_check_refuses_a_wrong_key():
    keys = DialbackKeys("secret")
    key = keys.generate("a.test", "b.test", "id1")
    assert not keys.check("a.test", "b.test", "id2", key)
    assert not keys.check("a.test", "b.test", "id1", key[:-1] + ("0" if key[-1] != "0" else "1"))


def test_check_refuses_an_empty_or_missing_key():
    keys = DialbackKeys("secret")
    assert not keys.check("a.test", "b.test", "id1", "")
    assert not keys.check("a.test", "b.test", "id1", None)


def test_check_refuses_a_non_ascii_key_without_raising():
    assert not DialbackKeys("secret").check("a.test", "b.test", "id1", "ключ")


def test_two_instances_with_the_same_secret_agree():
    key = DialbackKeys("secret").generate("a.test", "b.test", "id1")
    assert DialbackKeys("secret").check("a.test", "b.test", "id1", key)


def test_two_instances_with_different_secrets_disagree():
    key = DialbackKeys("secret").generate("a.test", "b.test", "id1")
    assert not DialbackKeys("other").check("a.test", "b.test", "id1", key)


def test_unset_secret_is_random_per_instance():
    for secret in (None, ""):
        one, two = DialbackKeys(secret), DialbackKeys(secret)
        key = one.generate("a.test", "b.test", "id1")
        assert one.check("a.test", "b.test", "id1", key)
        assert not two.check("a.test", "b.test", "id1", key)


# XEP-0185 §4 (version 1.0), "Example": originating and authoritative server
# example.org, receiving server xmpp.example.com, secret s3cr3tf0rd14lb4ck,
# stream id D60000229F.
XEP_0185_SECRET = "s3cr3tf0rd14lb4ck"
XEP_0185_KEY = "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"


def test_key_is_the_one_of_the_xep_0185_example():
    keys = DialbackKeys(XEP_0185_SECRET)
    assert keys.generate("xmpp.example.com", "example.org", "D60000229F") == XEP_0185_KEY


def test_the_authoritative_server_accepts_the_key_of_the_xep_0185_verify_example():
    # Step 8's <db:verify/> carries the key on a line of its own.
    keys = DialbackKeys(XEP_0185_SECRET)
    assert keys.check("xmpp.example.com", "example.org", "D60000229F", f"\n    {XEP_0185_KEY}\n")


def test_db_element_carries_from_to_id_type_and_key():
    e = dbElement("verify", "a.test", "b.test", key="abc", streamId="s1", kind="valid")
    assert (e.uri, e.name) == (NS_DB, "verify")
    assert (e["from"], e["to"], e["id"], e["type"], str(e)) == ("a.test", "b.test", "s1", "valid", "abc")


def test_db_error_carries_condition_and_text():
    e = dbError("result", "a.test", "b.test", "remote-server-timeout", "slow")
    assert e["type"] == "error"
    assert dbErrorReason(e) == "remote-server-timeout (slow)"
    assert e.firstChildElement()["type"] == "wait"
    assert dbError("result", "a.test", "b.test", "item-not-found").firstChildElement()["type"] == "cancel"


def test_db_error_carries_the_stanza_error_in_the_stream_namespace():
    # XEP-0220 §2.4: <error/> as in a stanza error, in jabber:server.
    error = dbError("result", "a.test", "b.test", "item-not-found").firstChildElement()
    assert (error.uri, error.name) == ("jabber:server", "error")


def test_db_error_reason_without_a_condition_is_undefined_condition():
    e = dbElement("result", "a.test", "b.test", kind="error")
    e.addElement(("jabber:server", "error"))["type"] = "cancel"
    assert dbErrorReason(e) == "undefined-condition"


def test_db_error_reason_is_read_from_the_error_after_other_children():
    e = dbElement("result", "a.test", "b.test", kind="error")
    e.addElement(("urn:example:extension", "note"))
    e.addElement(("jabber:server", "error")).addElement(
        ("urn:ietf:params:xml:ns:xmpp-stanzas", "remote-server-timeout"))
    assert dbErrorReason(e) == "remote-server-timeout"
