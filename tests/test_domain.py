import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sgate.xmpp.domain import InvalidDomain, domainOf, normalize


def test_normalize_lowercases_ascii():
    assert normalize("Example.COM") == "example.com"


def test_normalize_uses_idna2008_not_2003():
    # IDNA 2003 maps ß to ss, which is another domain under IDNA 2008.
    assert normalize("faß.de") == "xn--fa-hia.de"


def test_normalize_refuses_trailing_dot():
    with pytest.raises(InvalidDomain):
        normalize("example.com.")


def test_normalize_refuses_garbage():
    with pytest.raises(InvalidDomain):
        normalize("bad domain!")


def test_domainOf_full_jid():
    assert domainOf("Alice@Example.COM/phone") == "example.com"


def test_domainOf_domain_only_with_resource():
    assert domainOf("example.com/res@x") == "example.com"


def test_domainOf_refuses_empty_localpart():
    with pytest.raises(InvalidDomain):
        domainOf("@example.com")


@settings(deadline=None)
@given(st.text(max_size=40))
def test_domainOf_never_raises_anything_but_InvalidDomain(text):
    try:
        domainOf(text)
    except InvalidDomain:
        pass


def test_domainOf_refuses_a_bad_address_every_time_it_is_asked():
    """Answers are cached; refusals are not, so a bad address never turns good."""
    for _ in range(2):
        with pytest.raises(InvalidDomain):
            domainOf("@example.com")
    assert domainOf("Alice@Example.COM/r") == domainOf("alice@example.com/r") == "example.com"


def test_domainOf_reads_a_long_address_without_caching_it():
    from s2sgate.xmpp.domain import _cachedDomainOf
    before = _cachedDomainOf.cache_info().currsize
    long = "a" * 1000 + "@example.com/" + "r" * 1000
    assert domainOf(long) == "example.com"
    assert _cachedDomainOf.cache_info().currsize == before
