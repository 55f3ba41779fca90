import pytest
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.words.xish import domish

from s2sgate.auth.dialback import NS_DB, dbElement
from s2sgate.xmpp.parser import NS_STREAMS
from s2sgate.xmpp.stream import NS_SERVER, XmlStream, newStreamId, parseStreamError, streamErrorXml

HEADER = (f"<stream:stream xmlns='jabber:server' xmlns:stream='{NS_STREAMS}' "
          f"xmlns:db='{NS_DB}' from='a.test' to='b.test' id='x' version='1.0'>").encode()


class Recorder(XmlStream):
    extraNamespaces = (("db", NS_DB),)

    def __init__(self, *a, **kw):
        XmlStream.__init__(self, *a, **kw)
        self.events = []

    def streamStarted(self, header):
        self.events.append(("started", header["from"]))

    def elementReceived(self, element):
        self.events.append(("element", element.name))

    def streamErrorReceived(self, condition, text):
        self.events.append(("error", condition, text))

    def streamClosed(self, reason):
        self.events.append(("closed",))


def make(**kw):
    clock = task.Clock()
    s = Recorder(clock, **kw)
    t = StringTransport()
    s.makeConnection(t)
    return clock, s, t


def test_whitespace_keepalive_is_sent_every_interval():
    clock, s, t = make(keepalive=30)
    clock.advance(29)
    assert t.value() == b""
    clock.advance(1)
    assert t.value() == b" "
    clock.advance(30)
    assert t.value() == b"  "


def test_no_keepalive_after_closing():
    clock, s, t = make(keepalive=30)
    s.closeStream()
    t.clear()
    clock.advance(30)
    assert t.value() == b""


def test_idle_timeout_closes_with_the_closing_tag():
    clock, s, t = make(idleTimeout=60)
    s.sendHeader({"from": "b.test"})
    clock.advance(60)
    assert t.value().endswith(b"</stream:stream>")
    assert s.closing


def test_received_data_resets_the_idle_timer():
    clock, s, t = make(idleTimeout=60)
    s.sendHeader({"from": "b.test"})
    clock.advance(50)
    s.dataReceived(HEADER)
    clock.advance(50)
    assert not s.closing
    clock.advance(10)
    assert s.closing


def test_closing_drops_the_connection_if_the_peer_does_not_answer():
    clock, s, t = make()
    s.closeStream(wait=5)
    assert not t.disconnecting
    clock.advance(5)
    assert t.disconnecting


def test_connection_lost_cancels_all_timers():
    clock, s, t = make(idleTimeout=60, keepalive=30)
    s.closeStream()
    s.connectionLost(Failure(Exception("gone")))
    assert clock.getDelayedCalls() == []
    assert ("closed",) in s.events


def test_received_stream_error_is_reported_and_closes_our_side():
    clock, s, t = make()
    s.dataReceived(HEADER)
    s.dataReceived(b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                   b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>replaced</text></stream:error>")
    assert ("error", "conflict", "replaced") in s.events
    assert t.value().endswith(b"</stream:stream>")
    assert s.closing


def test_peer_closing_tag_closes_and_drops_the_connection():
    clock, s, t = make()
    s.dataReceived(HEADER + b"</stream:stream>")
    assert t.value().endswith(b"</stream:stream>")
    assert t.disconnecting


def test_stream_error_sends_header_first_if_none_was_sent():
    clock, s, t = make()
    s.streamError("not-authorized", "no")
    data = t.value()
    assert data.startswith(b"<stream:stream ")
    assert b"<stream:error><not-authorized" in data
    assert data.endswith(b"</stream:stream>")


def test_stream_error_is_sent_only_once():
    clock, s, t = make()
    s.streamError("not-authorized")
    s.streamError("conflict")
    assert t.value().count(b"<stream:error>") == 1


def test_not_well_formed_input_is_a_stream_error():
    clock, s, t = make()
    s.dataReceived(HEADER + b"<a></b>")
    assert b"<not-well-formed" in t.value()


def test_data_after_close_is_ignored():
    clock, s, t = make()
    s.connectionLost(Failure(Exception("gone")))
    s.dataReceived(HEADER)
    assert s.events == [("closed",)]


def test_send_does_not_repeat_the_default_namespace():
    clock, s, t = make()
    e = domish.Element((NS_SERVER, "message"))
    e["to"] = "x@b.test"
    e.addElement("body", content="hi")
    s.send(e)
    assert t.value() == b"<message to='x@b.test'><body>hi</body></message>"


def test_send_uses_the_db_prefix_for_dialback():
    clock, s, t = make()
    s.send(dbElement("result", "a.test", "b.test", key="k"))
    assert t.value() == b"<db:result from='a.test' to='b.test'>k</db:result>"


def test_send_uses_the_stream_prefix_for_features():
    clock, s, t = make()
    f = domish.Element((NS_STREAMS, "features"))
    f.addElement(("urn:xmpp:features:dialback", "dialback"))
    s.send(f)
    assert t.value() == (b"<stream:features><dialback xmlns='urn:xmpp:features:dialback'/>"
                         b"</stream:features>")


def test_send_keeps_payload_namespaces():
    clock, s, t = make()
    e = domish.Element((NS_SERVER, "iq"))
    e.addElement(("urn:xmpp:ping", "ping"))
    s.send(e)
    assert t.value() == b"<iq><ping xmlns='urn:xmpp:ping'/></iq>"


def test_send_counts_bytes_and_refuses_after_close():
    clock, s, t = make()
    assert s.send("abc")
    assert s.bytesOut == 3
    s.connectionLost(Failure(Exception("gone")))
    assert s.send(b"more") is False
    assert t.value() == b"abc"


def test_header_attributes_are_escaped():
    clock, s, t = make()
    s.sendHeader({"from": "a'b", "to": None})
    assert b"from=\"a'b\"" in t.value()
    assert b"to=" not in t.value()


def test_stream_error_xml_round_trips_condition_and_escaped_text():
    assert b"&lt;x&gt;" in streamErrorXml("conflict", "<x>")
    e = domish.Element((NS_STREAMS, "error"))
    e.addElement(("urn:ietf:params:xml:ns:xmpp-streams", "conflict"))
    assert parseStreamError(e) == ("conflict", None)
    assert parseStreamError(domish.Element((NS_STREAMS, "error"))) == ("undefined-condition", None)


def test_stream_ids_are_unique_and_long():
    ids = {newStreamId() for _ in range(1000)}
    assert len(ids) == 1000
    assert min(len(i) for i in ids) >= 22


def test_writes_inside_a_batch_become_one_write_per_stream():
    from twisted.internet import task
    from twisted.internet.testing import StringTransport

    from s2sgate.xmpp.stream import WriteBatch, XmlStream

    class Recording(StringTransport):
        def __init__(self):
            StringTransport.__init__(self)
            self.writes = 0

        def write(self, data):
            self.writes += 1
            StringTransport.write(self, data)

    batch = WriteBatch()
    streams = []
    for _ in range(2):
        stream = XmlStream(task.Clock())
        stream.batch = batch
        stream.makeConnection(Recording())
        streams.append(stream)
    batch.enter()
    for i in range(100):
        streams[i % 2].send(f"<message id='{i}'/>")
    assert [s.transport.writes for s in streams] == [0, 0]
    batch.exit()
    assert [s.transport.writes for s in streams] == [1, 1]
    assert streams[0].transport.value().startswith(b"<message id='0'/><message id='2'/>")


def sendNowTransport():
    """A StringTransport that records writes and sendNow() calls in order."""
    from twisted.internet.testing import StringTransport
    from zope.interface import implementer

    from s2sgate.interfaces import ISendNow

    @implementer(ISendNow)
    class SendNow(StringTransport):
        def __init__(self):
            StringTransport.__init__(self)
            self.events = []

        def write(self, data):
            self.events.append(("write", len(data)))
            StringTransport.write(self, data)

        def sendNow(self):
            self.events.append(("sendNow",))
    return SendNow()


def batchedStream():
    """A WriteBatch and one stream in it on a L{sendNowTransport}."""
    from twisted.internet import task

    from s2sgate.xmpp.stream import WriteBatch, XmlStream

    batch = WriteBatch()
    stream = XmlStream(task.Clock(), batch=batch)
    stream.makeConnection(sendNowTransport())
    return batch, stream


def test_a_batch_ends_with_one_send_now_per_stream_after_its_write():
    batch, stream = batchedStream()
    batch.enter()
    stream.send("<message/>")
    stream.send("<presence/>")
    assert stream.transport.events == []
    batch.exit()
    assert stream.transport.events == [("write", len("<message/><presence/>")), ("sendNow",)]


def test_a_batch_of_full_records_is_left_to_the_socket_s_writable_event():
    """A large chunk of input (a peer under load): no send now, so that the next turns'
    writes join it in fewer, larger sends; the next small batch sends at once again."""
    from s2sgate.xmpp.stream import FLUSH_BYTES

    batch, stream = batchedStream()
    batch.enter()
    stream.send(b"x" * FLUSH_BYTES)
    stream.send(b"<message/>")
    assert stream.transport.events == [("write", FLUSH_BYTES)]
    batch.exit()
    assert stream.transport.events == [("write", FLUSH_BYTES), ("write", 10)]
    batch.enter()
    stream.send(b"<message/>")
    batch.exit()
    assert stream.transport.events[2:] == [("write", 10), ("sendNow",)]


def test_a_transport_that_cannot_send_now_just_gets_the_write():
    from twisted.internet import task
    from twisted.internet.testing import StringTransport

    from s2sgate.xmpp.stream import WriteBatch, XmlStream

    batch = WriteBatch()
    stream = XmlStream(task.Clock(), batch=batch)
    stream.makeConnection(StringTransport())
    batch.enter()
    stream.send("<message/>")
    batch.exit()
    assert stream.transport.value() == b"<message/>"


def test_closing_inside_a_batch_writes_the_held_data_first():
    from twisted.internet import task
    from twisted.internet.testing import StringTransport

    from s2sgate.xmpp.stream import WriteBatch, XmlStream

    batch = WriteBatch()
    stream = XmlStream(task.Clock())
    stream.batch = batch
    stream.makeConnection(StringTransport())
    stream.sendHeader({"to": "a.test"})
    batch.enter()
    stream.send("<message/>")
    stream.closeStream()
    assert stream.transport.value().endswith(b"<message/></stream:stream>")
    batch.exit()
    assert stream.transport.value().count(b"<message/>") == 1


def test_a_peer_that_stops_reading_is_dropped_past_the_backlog_limit():
    from twisted.internet import task
    from twisted.internet.testing import StringTransport

    from s2sgate.xmpp.stream import XmlStream

    class Abortable(StringTransport):
        aborted = False

        def abortConnection(self):
            self.aborted = True

    stream = XmlStream(task.Clock())
    stream.maxBacklog = 10000
    transport = Abortable()
    stream.makeConnection(transport)
    assert transport.producer is stream
    stream.send("<message>" + "x" * 6000 + "</message>")
    stream.pauseProducing()          # the transport's buffer is full
    stream.send("<message>" + "x" * 6000 + "</message>")
    assert not transport.aborted
    stream.send("<message>" + "x" * 6000 + "</message>")
    assert transport.aborted


def test_a_slow_peer_that_catches_up_is_kept():
    from twisted.internet import task
    from twisted.internet.testing import StringTransport

    from s2sgate.xmpp.stream import XmlStream

    stream = XmlStream(task.Clock())
    stream.maxBacklog = 10000
    transport = StringTransport()
    transport.abortConnection = lambda: setattr(transport, "aborted", True)
    stream.makeConnection(transport)
    for _ in range(10):
        stream.pauseProducing()
        stream.send("<message>" + "x" * 6000 + "</message>")
        stream.resumeProducing()
    assert not getattr(transport, "aborted", False)


# stanza_size_limit at its boundary, through the stream: an element of exactly
# the limit is handled, one byte more is the stream error policy-violation.

LIMIT = 1000


def stanzaOf(size):
    head, tail = b"<message to='x@b.test'><body>", b"</body></message>"
    stanza = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(stanza) == size
    return stanza


def headerOf(size):
    head, tail = HEADER[:-1] + b" pad='", b"'>"
    header = head + b"p" * (size - len(head) - len(tail)) + tail
    assert len(header) == size
    return header


def inOnePiece(data):
    return [data]


def byteByByte(data):
    return [data[i:i + 1] for i in range(len(data))]


feedings = pytest.mark.parametrize("pieces", [inOnePiece, byteByByte])


@feedings
def test_stanza_of_exactly_the_size_limit_is_handled(pieces):
    _, s, t = make(maxStanzaBytes=LIMIT)
    s.dataReceived(HEADER)
    for piece in pieces(stanzaOf(LIMIT)):
        s.dataReceived(piece)
    assert s.events == [("started", "a.test"), ("element", "message")]
    assert t.value() == b""


@feedings
def test_stanza_one_byte_over_the_size_limit_is_a_policy_violation(pieces):
    _, s, t = make(maxStanzaBytes=LIMIT)
    s.dataReceived(HEADER)
    for piece in pieces(stanzaOf(LIMIT + 1)):
        s.dataReceived(piece)
    assert s.events == [("started", "a.test")]
    assert b"<stream:error><policy-violation " in t.value()
    assert b">stanza larger than the limit of 1000 bytes</text>" in t.value()
    assert s.closing


@feedings
def test_stream_header_of_exactly_the_size_limit_is_handled(pieces):
    _, s, t = make(maxStanzaBytes=LIMIT)
    for piece in pieces(headerOf(LIMIT)):
        s.dataReceived(piece)
    assert s.events == [("started", "a.test")]
    assert t.value() == b""


@feedings
def test_stream_header_one_byte_over_the_size_limit_is_a_policy_violation(pieces):
    _, s, t = make(maxStanzaBytes=LIMIT)
    for piece in pieces(headerOf(LIMIT + 1)):
        s.dataReceived(piece)
    assert s.events == []
    assert b"<stream:error><policy-violation " in t.value()
    assert b">stream header larger than the limit of 1000 bytes</text>" in t.value()
    assert s.closing


def test_a_large_chunk_of_input_leaves_its_output_to_the_socket_s_writable_event():
    """A chunk of a full TLS record or more (a peer sending faster than we read): the
    writes are made, but not sent now; a small chunk after it is sent at once again."""
    from s2sgate.xmpp.stream import FLUSH_BYTES

    batch, stream = batchedStream()
    batch.enter(FLUSH_BYTES)
    stream.send(b"<message/>")
    batch.exit()
    assert stream.transport.events == [("write", 10)]
    batch.enter(FLUSH_BYTES - 1)
    stream.send(b"<message/>")
    batch.exit()
    assert stream.transport.events[1:] == [("write", 10), ("sendNow",)]


def test_the_input_of_a_batch_is_counted_from_every_chunk_inside_it():
    from s2sgate.xmpp.stream import FLUSH_BYTES

    batch, stream = batchedStream()
    batch.enter(FLUSH_BYTES // 2)
    batch.enter(FLUSH_BYTES // 2)
    stream.send(b"<message/>")
    batch.exit()
    batch.exit()
    assert stream.transport.events == [("write", 10)]


def test_a_small_batch_after_a_large_input_chunk_that_flushed_full_records_sends_at_once():
    from s2sgate.xmpp.stream import FLUSH_BYTES

    batch, stream = batchedStream()
    batch.enter(FLUSH_BYTES)
    stream.send(b"x" * FLUSH_BYTES)
    batch.exit()
    assert ("sendNow",) not in stream.transport.events
    batch.enter(10)
    stream.send(b"<message/>")
    batch.exit()
    assert stream.transport.events[-2:] == [("write", 10), ("sendNow",)]
