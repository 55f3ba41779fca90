import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sgate.xmpp.parser import StreamError, StreamParser

HEADER = (b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
          b" xmlns:db='jabber:server:dialback' to='a.test' version='1.0'>")


class Recorder:
    def __init__(self, **kw):
        self.headers, self.elements, self.ended = [], [], 0
        self.parser = StreamParser(self.headers.append, self.elements.append, self.end, **kw)

    def end(self):
        self.ended += 1


def test_header_and_stanza_are_reported():
    r = Recorder()
    r.parser.feed(HEADER + b"<message to='x@a.test'><body>hi</body></message>")
    assert r.headers[0]["to"] == "a.test"
    assert r.headers[0].defaultUri == "jabber:server"
    assert r.elements[0].name == "message"
    assert r.elements[0].uri == "jabber:server"
    assert str(r.elements[0].body) == "hi"


def test_stanza_split_over_many_chunks():
    r = Recorder()
    data = HEADER + b"<message><body>hello world</body></message></stream:stream>"
    for i in range(len(data)):
        r.parser.feed(data[i:i + 1])
    assert str(r.elements[0].body) == "hello world"
    assert r.ended == 1


def test_prefixed_dialback_element_keeps_its_namespace():
    r = Recorder()
    r.parser.feed(HEADER + b"<db:result from='b.test' to='a.test'>key</db:result>")
    e = r.elements[0]
    assert (e.uri, e.name) == ("jabber:server:dialback", "result")
    assert str(e) == "key"


def test_payload_namespace_does_not_leak_to_next_stanza():
    r = Recorder()
    r.parser.feed(HEADER + b"<iq><query xmlns='urn:x'/></iq><message/>")
    assert r.elements[1].uri == "jabber:server"
    assert r.elements[0].firstChildElement().uri == "urn:x"


@pytest.mark.parametrize("evil", [
    b"<!DOCTYPE x [<!ENTITY a 'b'>]>",
    b"<?xml-stylesheet href='x'?>",
])
def test_doctype_and_processing_instruction_are_restricted(evil):
    r = Recorder()
    with pytest.raises(StreamError) as e:
        r.parser.feed(evil + HEADER)
    assert e.value.condition == "restricted-xml"


def test_comment_inside_stanza_is_restricted():
    r = Recorder()
    with pytest.raises(StreamError) as e:
        r.parser.feed(HEADER + b"<message><!-- hi --></message>")
    assert e.value.condition == "restricted-xml"


def test_oversized_body_is_refused_before_it_is_complete():
    r = Recorder(maxStanzaBytes=10000)
    r.parser.feed(HEADER + b"<message><body>")
    with pytest.raises(StreamError) as e:
        for _ in range(100):
            r.parser.feed(b"x" * 1000)
    assert e.value.condition == "policy-violation"
    assert r.elements == []


def test_oversized_attribute_is_refused():
    r = Recorder(maxStanzaBytes=10000)
    with pytest.raises(StreamError) as e:
        r.parser.feed(HEADER + b"<message to='" + b"a" * 50000)
    assert e.value.condition == "policy-violation"


def test_many_small_stanzas_do_not_add_up_to_the_limit():
    r = Recorder(maxStanzaBytes=10000)
    r.parser.feed(HEADER)
    for _ in range(200):
        r.parser.feed(b"<message><body>" + b"y" * 100 + b"</body></message>")
    assert len(r.elements) == 200


def test_whitespace_keepalives_do_not_add_up_to_the_limit():
    r = Recorder(maxStanzaBytes=10000)
    r.parser.feed(HEADER)
    for _ in range(20000):
        r.parser.feed(b" ")
    r.parser.feed(b"<message/>")
    assert len(r.elements) == 1


def test_deep_nesting_is_refused():
    r = Recorder()
    with pytest.raises(StreamError) as e:
        r.parser.feed(HEADER + b"<a>" * 200)
    assert e.value.condition == "policy-violation"


def test_broken_xml_is_not_well_formed():
    r = Recorder()
    with pytest.raises(StreamError) as e:
        r.parser.feed(HEADER + b"<message></iq>")
    assert e.value.condition == "not-well-formed"


def test_reset_starts_a_new_document():
    r = Recorder()
    r.parser.feed(HEADER + b"<proceed/>")
    r.parser.reset()
    r.parser.feed(b"")
    r.parser.feed(HEADER)
    assert len(r.headers) == 2


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_stream_errors(data):
    r = Recorder(maxStanzaBytes=10000)
    try:
        r.parser.feed(HEADER + data)
    except StreamError:
        pass
