"""What a peer's <stream:features/> offers, parsed once for the steps and for check."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.words.xish import domish

from s2sgate.xmpp.features import StreamFeatures
from s2sgate.xmpp.namespaces import NS_DB_FEATURE, NS_SASL, NS_STREAMS, NS_TLS


def features(*children):
    f = domish.Element((NS_STREAMS, "features"))
    for child in children:
        f.addChild(child)
    return f


def starttls(required=False):
    e = domish.Element((NS_TLS, "starttls"))
    if required:
        e.addElement("required")
    return e


def mechanisms(*names):
    e = domish.Element((NS_SASL, "mechanisms"))
    for name in names:
        e.addElement("mechanism", content=name)
    return e


def test_starttls_required_sasl_and_dialback_are_read():
    f = StreamFeatures.parse(features(starttls(True), mechanisms("EXTERNAL", "PLAIN"),
                                      domish.Element((NS_DB_FEATURE, "dialback"))))
    assert (f.starttls, f.starttlsRequired, f.dialback) == (True, True, True)
    assert f.offersMechanism("EXTERNAL") and f.mechanisms == ("EXTERNAL", "PLAIN")
    assert f.describe() == "STARTTLS (required), SASL EXTERNAL PLAIN, dialback"


def test_unknown_features_are_kept_by_name_and_found_as_children():
    f = StreamFeatures.parse(features(domish.Element(("urn:xmpp:sm:3", "sm"))))
    assert f.other == ("{urn:xmpp:sm:3}sm",)
    assert f.child("urn:xmpp:sm:3", "sm") is not None and f.child(NS_TLS, "starttls") is None


def test_a_pre_1_0_peer_offers_nothing():
    f = StreamFeatures.none()
    assert f.legacy and not f.starttls and f.describe() == "none" and f.child(NS_TLS, "x") is None


@settings(deadline=None)
@given(st.booleans(), st.booleans(), st.lists(st.sampled_from(["EXTERNAL", "PLAIN", "SCRAM"]),
                                             unique=True))
def test_json_says_what_was_offered(tls, db, mechs):
    children = ([starttls()] if tls else []) + ([mechanisms(*mechs)] if mechs else []) + (
        [domish.Element((NS_DB_FEATURE, "dialback"))] if db else [])
    j = StreamFeatures.parse(features(*children)).toJSON()
    assert j == {"starttls": tls, "starttls_required": False, "dialback": db,
                 "sasl_mechanisms": list(mechs), "other": []}
