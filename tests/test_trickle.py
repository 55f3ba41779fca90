"""
Trickled XML: a tag that arrives in tiny pieces must not cost quadratic CPU.
expat 2.5 scans an unfinished tag again from its start at every feed, so the
parser holds the bytes of a long open tag back and feeds them in doubling steps.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2sgate.xmpp.parser import TRICKLE_BYTES, StreamError, StreamParser

HEADER = (b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
          b" to='a.test' version='1.0'>")


class Counting:
    """A StreamParser whose calls into expat are counted."""

    def __init__(self, limit=524288):
        self.elements = []
        self.parser = StreamParser(lambda h: None, self.elements.append, lambda: None,
                                   maxStanzaBytes=limit)
        self.calls = 0
        real = self.parser._parser.Parse

        def parse(data, *a):
            self.calls += 1
            return real(data, *a)

        self.parser._parser.Parse = parse   # pyexpat objects take attributes? see fixture
        self.parser.feed(HEADER)


def bigTag(size, quoteGt=False):
    value = (b"a>" if quoteGt else b"aa") * (size // 2)
    return b"<message to='b@a.test' x='" + value + b"'><body>hi</body></message>"


def trickle(parser, data, segment):
    for i in range(0, len(data), segment):
        parser.feed(data[i:i + segment])


@pytest.fixture(autouse=True)
def _pyexpatTakesAttributes(monkeypatch):
    """pyexpat parsers refuse new attributes: count through a proxy instead."""
    import s2sgate.xmpp.parser as module

    real = module.pyexpat.ParserCreate

    class Proxy:
        def __init__(self, *a):
            object.__setattr__(self, "_p", real(*a))

        def __getattr__(self, name):
            return getattr(self._p, name)

        def __setattr__(self, name, value):
            if name == "Parse":
                object.__setattr__(self, name, value)
            else:
                setattr(self._p, name, value)

    monkeypatch.setattr(module.pyexpat, "ParserCreate", Proxy)


@pytest.mark.parametrize("quoteGt", [False, True], ids=["plain", "with-gt-in-the-value"])
def test_a_trickled_400_kb_attribute_reaches_expat_in_a_few_doubling_steps(quoteGt):
    c = Counting()
    data = bigTag(400_000, quoteGt)
    trickle(c.parser, data, 256)
    [message] = c.elements
    assert len(message["x"]) == 400_000 and str(message.body) == "hi"
    bulk = Counting()
    bulk.parser.feed(data)           # expat takes at most 16 KiB per call either way
    # 256-byte pieces up to TRICKLE_BYTES, then doubling steps: not the 1 500 calls a
    # piece each would cost, and within twice what the same bytes cost at once.
    assert c.calls <= 2 * bulk.calls + TRICKLE_BYTES // 256


def test_a_small_stanza_in_small_pieces_is_handled_as_soon_as_it_is_whole():
    c = Counting()
    stanza = b"<message to='b@a.test'><body>" + b"x" * 3000 + b"</body></message>"
    trickle(c.parser, stanza, 7)
    assert len(c.elements) == 1      # nothing held back once the last piece arrived


def test_a_complete_long_tag_is_never_held_back():
    c = Counting()
    data = bigTag(100_000)
    c.parser.feed(data[:-30])
    c.parser.feed(data[-30:])        # closes the tag and the stanza
    assert len(c.elements) == 1


def test_a_trickled_tag_over_the_limit_is_refused_at_the_limit():
    c = Counting(limit=20_000)
    data = bigTag(40_000)
    fed = 0
    with pytest.raises(StreamError) as e:
        for i in range(0, len(data), 100):
            c.parser.feed(data[i:i + 100])
            fed = i + 100
    assert e.value.condition == "policy-violation"
    assert fed == 20_000             # refused by the piece that holds byte 20 001


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 600), st.text(alphabet="ab >/=\"é", max_size=40))
def test_holding_back_never_changes_what_is_parsed(segment, junk):
    value = (junk.encode("utf-8") or b"v") * 300
    data = (b"<iq to='b@a.test' type='get' id='" + value + b"'><q xmlns='u'/></iq>"
            b"<message to='c@a.test'><body>ok</body></message>")
    c = Counting()
    trickle(c.parser, data, segment)
    assert [e.name for e in c.elements] == ["iq", "message"]
    assert c.elements[0]["id"].encode("utf-8") == value


def test_a_long_tag_after_complete_stanzas_in_the_same_chunk_is_still_held_back():
    # Only the last tag of a chunk is followed: the complete stanzas before it
    # (and the ">" in a quoted value of the open tag) do not hide it.
    c = Counting()
    head = b"<message to='b@a.test'><body>a &gt; b</body></message>" * 50
    data = head + bigTag(400_000, quoteGt=True)
    trickle(c.parser, data, 256)
    assert len(c.elements) == 51
    bulk = Counting()
    bulk.parser.feed(data)
    assert c.calls <= 2 * bulk.calls + (len(head) + TRICKLE_BYTES) // 256 + 2


# Holding back never delays what is complete: the header, or a stanza, is
# handled as soon as its last byte arrives, however the bytes are cut.  The
# tags here are longer than TRICKLE_BYTES, so they are followed and held.

def longHeader(value=b"i" * 6000):
    return HEADER[:-1] + b" id='" + value + b"'>"


def longEmptyStanza(value=b"e" * 6000):
    return b"<message to='b@a.test' x='" + value + b"'/>"


class Recorder:
    def __init__(self):
        self.headers, self.elements = [], []
        self.parser = StreamParser(self.headers.append, self.elements.append, lambda: None)


def test_a_long_header_fed_byte_by_byte_is_reported_at_its_last_byte():
    r = Recorder()
    header = longHeader()
    for i in range(len(header) - 1):
        r.parser.feed(header[i:i + 1])
    assert r.headers == []
    r.parser.feed(header[-1:])
    assert len(r.headers) == 1


@pytest.mark.parametrize("last", [b">", b"'>", b"i'>"])
def test_a_long_header_is_reported_when_a_piece_without_a_tag_closes_it(last):
    r = Recorder()
    header = longHeader()
    trickle(r.parser, header[:-len(last)], 100)
    assert r.headers == []
    r.parser.feed(last)
    assert len(r.headers) == 1


def test_a_long_empty_element_stanza_fed_byte_by_byte_is_handled_at_its_last_byte():
    r = Recorder()
    r.parser.feed(HEADER)
    stanza = longEmptyStanza()
    for i in range(len(stanza) - 1):
        r.parser.feed(stanza[i:i + 1])
    assert r.elements == []
    r.parser.feed(stanza[-1:])
    assert len(r.elements) == 1


@pytest.mark.parametrize("last", [b">", b"/>", b"'/>", b"e'/>"])
def test_a_long_empty_element_stanza_is_handled_when_a_piece_without_a_tag_closes_it(last):
    r = Recorder()
    r.parser.feed(HEADER)
    stanza = longEmptyStanza()
    trickle(r.parser, stanza[:-len(last)], 100)
    assert r.elements == []
    r.parser.feed(last)
    assert len(r.elements) == 1


_VALUE = st.text(alphabet="ab>/='\"é", min_size=1, max_size=8).map(
    lambda t: t.encode("utf-8"))


@st.composite
def longTags(draw):
    """A header and two stanzas whose tags are over TRICKLE_BYTES, values quoted either way."""
    def value(quote):
        other = b'"' if quote == b"'" else b"'"
        v = draw(_VALUE).replace(quote, other)
        return quote + v * (TRICKLE_BYTES // len(v) + 1) + quote
    q1, q2, q3 = (draw(st.sampled_from([b"'", b'"'])) for _ in range(3))
    header = HEADER[:-1] + b" id=" + value(q1) + b">"
    first = b"<message to='b@a.test' x=" + value(q2) + b"/>"
    second = b"<iq type='get' id=" + value(q3) + b"><q xmlns='u'/></iq>"
    return header, [first, second]


@settings(deadline=None, max_examples=40)
@given(longTags(), st.lists(st.integers(1, 700), min_size=1, max_size=40))
def test_whatever_the_pieces_each_long_tag_is_handled_when_its_last_byte_arrives(tags, cuts):
    header, stanzas = tags
    data = header + b"".join(stanzas)
    ends = [len(header)]
    for s in stanzas:
        ends.append(ends[-1] + len(s))
    r = Recorder()
    fed = 0
    while fed < len(data):
        n = cuts[fed % len(cuts)]
        r.parser.feed(data[fed:fed + n])
        fed = min(fed + n, len(data))
        assert len(r.headers) == (fed >= ends[0])
        assert len(r.elements) == sum(fed >= end for end in ends[1:])


def test_a_broken_byte_in_a_short_tag_after_stanzas_in_the_same_chunk_is_refused_at_once():
    # Only tags over TRICKLE_BYTES are held back, measured from their own "<":
    # the stanzas before it in the chunk do not count.
    r = Recorder()
    r.parser.feed(HEADER)
    head = b"<message to='b@a.test'><body>a &gt; b</body></message>" * 60
    r.parser.feed(head + b"<message to='b@a.test' x='")
    assert len(r.elements) == 60
    with pytest.raises(StreamError) as e:
        r.parser.feed(b"\x00")
    assert e.value.condition == "not-well-formed"
