"""s2sgate.xmpp.serialize: a prefix is bound only inside the element that declares it."""
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.words.xish import domish

from s2sgate.xmpp.parser import parseElement
from s2sgate.xmpp.serialize import toXml

NS = "jabber:server"
DB = "jabber:server:dialback"
# As an s2s stream serialises: its header declared db (ejabberd reads only db:result).
HEADER = {"db": DB}


def reparsed(xml):
    """Parsed in a stream, serialised in a stream of the same header, parsed again."""
    sent = toXml(parseElement(xml.encode(), NS, HEADER), prefixes={DB: "db"}, defaultUri=NS,
                 prefixesInScope=["db"])
    return parseElement(sent.encode(), NS, HEADER)


def test_an_attribute_keeps_its_namespace_after_a_sibling_rebound_its_prefix():
    """Found by tests/test_rawstanza.py: domish alone wrote ``q:k2`` for ``p:k2`` here."""
    xml = ("<iq><p:a xmlns:p='urn:p'><a><q:a xmlns:q='urn:p'/></a>"
           "<q:a xmlns:q='urn:q' p:k2='v'/></p:a></iq>")
    last = reparsed(xml).firstChildElement().children[-1]
    assert last.uri == "urn:q"
    assert last.attributes == {("urn:p", "k2"): "v"}


def test_an_element_keeps_its_namespace_after_a_sibling_rebound_its_prefix():
    xml = ("<iq><p:a xmlns:p='urn:p'><x><p:b xmlns:p='urn:other'/></x><p:c/></p:a></iq>")
    a = reparsed(xml).firstChildElement()
    x, c = a.children
    assert (x.firstChildElement().uri, c.uri) == ("urn:other", "urn:p")


def test_a_peer_s_own_db_prefix_for_another_namespace_does_not_capture_dialback():
    xml = "<iq><db:x xmlns:db='urn:evil'><db:result/></db:x><db:result/></iq>"
    x, result = reparsed(xml).children
    assert (x.uri, x.firstChildElement().uri, result.uri) == ("urn:evil", "urn:evil", DB)


def test_a_peer_s_prefix_named_like_domish_s_own_does_not_capture_an_undeclared_one():
    e = parseElement(b"<iq><xn0:a xmlns:xn0='urn:evil'/></iq>", NS)
    e.firstChildElement().addChild(domish.Element(("urn:mine", "b"), NS))
    back = parseElement(toXml(e, defaultUri=NS).encode(), NS)
    assert back.firstChildElement().firstChildElement().uri == "urn:mine"


def test_elements_without_declared_prefixes_serialise_as_domish_does():
    e = domish.Element((NS, "message"), NS, {"to": "a@b.test"})
    e.addElement(("urn:x", "x")).addContent("<&>")
    assert toXml(e, defaultUri=NS) == e.toXml(defaultUri=NS)


URIS = st.sampled_from(["urn:p", "urn:q", "urn:r", DB])
PREFIXES = st.sampled_from(["p", "q", "db", "xn0", "ns0"])


@st.composite
def trees(draw, depth=3, scope=()):
    """Elements that each declare and use a prefix (rebinding one an ancestor
    declared, or not), with a prefixed attribute that uses a prefix in scope."""
    prefix, uri = draw(PREFIXES), draw(URIS)
    inScope = sorted(set(scope) | {prefix})
    children = draw(st.lists(trees(depth - 1, inScope), max_size=3)) if depth else []
    attr = draw(st.sampled_from([""] + [f" {p}:k='v'" for p in inScope]))
    return f"<{prefix}:e xmlns:{prefix}='{uri}'{attr}>{''.join(children)}</{prefix}:e>"


def canonical(element):
    return (element.uri, element.name, sorted(
        (k if isinstance(k, str) else "|".join(k), v) for k, v in element.attributes.items()),
        [canonical(c) for c in element.children if isinstance(c, domish.Element)])


@settings(deadline=None, max_examples=200)
@given(trees())
def test_any_tree_of_rebound_prefixes_reads_back_as_the_same_tree(tree):
    xml = f"<iq>{tree}<db:result/></iq>"
    assert canonical(reparsed(xml)) == canonical(parseElement(xml.encode(), NS, HEADER))
