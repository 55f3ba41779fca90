# -*- test-case-name: tests.test_xmlparser -*-
"""
A restricted, bounded XML stream parser for XMPP streams.

Twisted's domish parser accepts DOCTYPEs (and expands entities), comments
and processing instructions, joins text quadratically, and only notices an
oversized stanza after it has been parsed.  One hostile peer could stall
every stream of the process.  This parser, built on expat directly:

 - refuses DOCTYPE, entity declarations, comments and processing
   instructions with the stream error C{restricted-xml} (RFC 6120 §11.1);
 - counts the bytes of the stream header and of every top-level element
   against the stanza size limit as they arrive, and feeds expat in slices
   that never take an unfinished one past the limit, so a huge attribute
   or text node is refused before it is held (C{policy-violation}).
   Counted are the element's own bytes, from its "<" to its last ">"
   (for the header: from the first byte of the stream); whitespace between
   elements (keepalives) counts for nothing, and a limit of N bytes accepts
   an element of exactly N;
 - caps nesting depth and elements per stanza;
 - turns on expat's C{buffer_text}.

Stanzas the stream only forwards (C{stanzaNames}) are not built into a DOM:
they are handed to C{onStanza} as a L{RawStanza} with their exact bytes,
after the same checks (size, depth, element count, restricted XML,
well-formedness).
"""

import pyexpat
import re
from xml.sax.saxutils import quoteattr

from twisted.words.xish.domish import Element

from s2sgate.xmpp.rawstanza import RawStanza

NS_STREAMS = "http://etherx.jabber.org/streams"

# Bytes handed to expat at once; bounds the work done before a limit check.
SLICE = 16384

# One tag from its "<" to its ">": a ">" inside a quoted attribute value
# does not end it.
_TAG = re.compile(rb"<[^'\">]*(?:(?:'[^']*'|\"[^\"]*\")[^'\">]*)*>")
_SPACE = re.compile(rb"[ \t\r\n]*")
_SPACE_BYTES = b" \t\r\n"
# Inside a tag: what ends it, or opens a quoted value.
_TAG_STOP = re.compile(rb"[>'\"]")
# An open tag this long is fed to expat in doubling steps (see feed).
TRICKLE_BYTES = 4096


class StreamError(Exception):
    """
    The peer broke the stream; C{condition} is an RFC 6120 §4.9.3 stream
    error condition and C{text} a short explanation for the peer and logs.
    """

    def __init__(self, condition, text=None):
        Exception.__init__(self, condition, text)
        self.condition = condition
        self.text = text

    def __str__(self):
        return f"{self.condition}: {self.text}" if self.text else self.condition


class StreamParser:
    """
    Parse one XML stream, calling C{onHeader(element)} for the stream
    header, C{onElement(element)} for each top-level child and
    C{onEnd()} for the closing tag.  L{feed} raises L{StreamError}.

    @param onStanza: called with a L{RawStanza} for each top-level element
        whose C{(namespace, name)} is in C{stanzaNames}, instead of
        C{onElement}.
    """

    # One parser per stream, thousands of idle streams: without slots its
    # 35 fields outgrow CPython's shared-key instance dict (1.6 KiB a stream).
    __slots__ = (
        "_buf", "_bufStart", "_current", "_defaultNs", "_depth", "_elements", "_error", "_fed",
        "_feeding", "_headerPrefixes", "_held", "_heldStart", "_outerDefault", "_parser",
        "_portable", "_prefixes", "_quote", "_raw", "_resetPending", "_scanned", "_scoped",
        "_stack", "_tagStart", "_text", "_textOwner", "_trickle", "_unitStart", "maxDepth",
        "maxElements", "maxStanzaBytes", "onElement", "onEnd", "onHeader", "onStanza",
        "stanzaNames",
    )

    def __init__(self, onHeader, onElement, onEnd, maxStanzaBytes=524288,
                 maxDepth=64, maxElements=50000, onStanza=None, stanzaNames=frozenset()):
        self.onHeader = onHeader
        self.onElement = onElement
        self.onEnd = onEnd
        self.onStanza = onStanza
        self.stanzaNames = stanzaNames if onStanza is not None else frozenset()
        self.maxStanzaBytes = maxStanzaBytes
        self.maxDepth = maxDepth
        self.maxElements = maxElements
        self._new()

    def _new(self):
        p = pyexpat.ParserCreate("UTF-8", " ")
        p.namespace_prefixes = True   # names are "uri local prefix" when prefixed
        p.buffer_text = True
        p.buffer_size = 4096   # per stream: memory matters with thousands of idle streams
        if hasattr(p, "SetReparseDeferralEnabled"):
            # expat >= 2.6 may hold a complete tag back until more bytes
            # arrive; a stream must see each stanza as soon as it is whole.
            p.SetReparseDeferralEnabled(False)
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._cdata
        p.StartNamespaceDeclHandler = self._nsStart
        p.EndNamespaceDeclHandler = self._nsEnd
        p.StartDoctypeDeclHandler = self._restricted("a DOCTYPE")
        p.EntityDeclHandler = self._restricted("an entity declaration")
        p.CommentHandler = self._restricted("a comment")
        p.ProcessingInstructionHandler = self._restricted("a processing instruction")
        p.ExternalEntityRefHandler = self._restricted("an external entity")
        self._parser = p
        self._current = None
        self._text = []
        self._textOwner = None
        self._stack = []          # open ancestors of _current within a stanza
        self._depth = 0
        self._elements = 0
        self._defaultNs = [""]
        self._prefixes = {}
        self._headerPrefixes = {}   # what a non-portable raw stanza needs to be read
        self._scoped = {}      # prefix -> declarations open inside the current stanza
        self._raw = None       # (name, uri, attrs, declaresDefault) of a raw stanza
        self._portable = True
        self._outerDefault = False
        self._fed = 0          # bytes handed to this parser
        self._unitStart = 0    # where the header or element being received began
        self._held = bytearray()   # bytes from _heldStart while no element is open
        self._heldStart = 0
        self._buf = b""        # what the handlers see: the bytes from _bufStart on
        self._bufStart = 0
        self._error = None
        self._resetPending = False
        self._feeding = False
        # Trickled tags (see feed): where the tag still open in the bytes
        # received began (None: no tag open), the quote it is inside of,
        # how far the bytes are scanned, and what is held back from expat.
        self._tagStart = None
        self._quote = None
        self._scanned = 0
        self._trickle = b""

    def reset(self):
        """
        Start a fresh document (stream restart after STARTTLS or SASL).
        Takes effect once the current L{feed} call returns.
        """
        if self._feeding:
            self._resetPending = True
        else:
            self._new()

    def _restricted(self, what):
        def handler(*args):
            raise StreamError("restricted-xml", f"{what} is not allowed in XMPP")
        return handler

    def feed(self, data):
        """
        Parse C{data}.  The bytes of a tag that is still open (a start tag
        with a huge attribute, say) may be held back: expat 2.5 scans an
        unfinished tag again from its start at every call, so a tag that
        arrives in tiny pieces would cost quadratic time.  Once a tag is over
        TRICKLE_BYTES, its bytes go to expat only when they at least double
        what expat has seen of it, or close it, or reach the size limit.
        """
        self._scan(data)
        if self._tagStart is not None and not self._feeding:
            held = len(self._trickle) + len(data)
            seen = self._fed - self._tagStart       # of the open tag, fed to expat
            total = self._fed + held
            if (total - self._tagStart > TRICKLE_BYTES and held < seen
                    and total - self._unitStart <= self.maxStanzaBytes):
                self._trickle += data
                return
        if self._trickle:
            data, self._trickle = self._trickle + data, b""
        self._feeding = True
        try:
            self._feed(data)
        finally:
            self._feeding = False

    def _scan(self, data):
        """
        Whether a tag is still open at the end of C{data}, and where it began.

        Only the last tag matters, and it starts at the last C{<}: XML allows
        no C{<} inside a tag, not even in an attribute value, so whatever was
        open before it ended before it (in a stream that breaks that rule,
        expat refuses the C{<} once it sees it).  Following every tag of every
        chunk instead cost a third of the CPU of forwarding a stanza.
        """
        start = self._scanned
        self._scanned = start + len(data)
        i = data.rfind(b"<")
        if i >= 0:
            self._tagStart, self._quote = start + i, None
            i += 1
        elif self._tagStart is None:
            return
        else:
            i = 0
        # Follow the last tag (or the one still open) to the end of data:
        # a ">" outside quoted values closes it, and no "<" follows.
        end = len(data)
        while i < end:
            if self._quote is not None:
                j = data.find(self._quote, i)
                if j < 0:
                    return
                self._quote, i = None, j + 1
            else:
                m = _TAG_STOP.search(data, i)
                if m is None:
                    return
                i = m.end()
                if m.group() == b">":
                    self._tagStart = None
                    return
                self._quote = m.group()

    def _feed(self, data):
        i, size, limit = 0, len(data), self.maxStanzaBytes
        while i < size:
            fed = self._fed
            if self._unitStart == fed and data[i] in _SPACE_BYTES:
                # Nothing of the next element yet: whitespace before it
                # (a keepalive) is no part of it.
                self._unitStart += _SPACE.match(data, i, i + SLICE).end() - i
            # Never take an unfinished element past the limit by more than
            # the one byte that shows it is over.
            n = min(SLICE, limit + 1 - (fed - self._unitStart))
            piece = data[i:i + n] if i or n < size else data
            i += len(piece)
            self._fed = fed + len(piece)
            if self._held:
                self._held += piece
                self._buf, self._bufStart = self._held, self._heldStart
            else:
                self._buf, self._bufStart = piece, fed
            try:
                self._parser.Parse(piece)
            except pyexpat.ExpatError as e:
                raise StreamError("not-well-formed", str(e)) from None
            except RecursionError:
                raise StreamError("policy-violation", "stanza nested too deeply") from None
            if self._resetPending:
                # Bytes after the element that triggered the restart belong
                # to the new stream (or to TLS); none are expected.
                self._new()
                return
            pending = self._fed - self._unitStart
            if pending > limit:
                raise StreamError("policy-violation",
                                  self._tooLarge("stream header" if self._depth == 0 else "stanza"))
            if self._current is None and pending:
                self._hold()
            elif self._held:
                self._held = bytearray()
        self._buf = b""

    def _hold(self):
        # Keep the bytes of an element whose start tag has not been parsed
        # yet: its end is found in them once expat reports it.
        buf, bufStart = self._buf, self._bufStart
        if buf is self._held:
            del self._held[:self._unitStart - bufStart]
        else:
            self._held = bytearray(buf[self._unitStart - bufStart:])
        self._heldStart = self._unitStart

    def _tooLarge(self, what):
        return f"{what} larger than the limit of {self.maxStanzaBytes} bytes"

    def _completed(self, end, what):
        """The header or a top-level element ended at byte index C{end}."""
        if end - self._unitStart > self.maxStanzaBytes:
            raise StreamError("policy-violation", self._tooLarge(what))
        buf, bufStart = self._buf, self._bufStart
        if end - bufStart < len(buf) and buf[end - bufStart] in _SPACE_BYTES:
            end = bufStart + _SPACE.match(buf, end - bufStart).end()
        self._unitStart = end

    def _tagEnd(self, index):
        """Byte index after the C{>} of the tag that starts at C{index}."""
        m = _TAG.match(self._buf, index - self._bufStart) if index >= self._bufStart else None
        return self._bufStart + m.end() if m else self._fed

    # expat handlers

    def _nsStart(self, prefix, uri):
        if self._resetPending:
            return   # after <starttls/>/<success/>: nothing more of this document counts
        if prefix is None:
            self._defaultNs.append(uri)
            if self._depth == 1:
                self._outerDefault = True
        else:
            self._prefixes[prefix] = uri
            if self._depth:
                self._scoped[prefix] = self._scoped.get(prefix, 0) + 1

    def _nsEnd(self, prefix):
        if self._resetPending:
            return   # after <starttls/>/<success/>: nothing more of this document counts
        if prefix is None:
            self._defaultNs.pop()
        elif self._depth:
            n = self._scoped[prefix] - 1
            if n:
                self._scoped[prefix] = n
            else:
                del self._scoped[prefix]

    def _start(self, name, attrs):
        if self._resetPending:
            return   # after <starttls/>/<success/>: nothing more of this document counts
        depth = self._depth
        if depth >= self.maxDepth:
            raise StreamError("policy-violation", f"elements nested deeper than {self.maxDepth}")
        uri, local, prefix = _split(name)
        if depth == 1 and (uri, local) in self.stanzaNames:
            self._rawStart(uri, local, prefix, attrs)
            return
        if any(" " in k for k in attrs):
            attrs = {_split(k)[:2] if " " in k else k: v for k, v in attrs.items()}
        e = Element((uri, local), self._defaultNs[-1], attrs, self._prefixes or None)
        self._depth = depth + 1
        if depth == 0:
            self._headerPrefixes = self._prefixes
            self._prefixes = {}
            self._completed(self._tagEnd(self._parser.CurrentByteIndex), "stream header")
            self.onHeader(e)
            return
        self._prefixes = {}
        self._outerDefault = False
        self._elements += 1
        if self._elements > self.maxElements:
            raise StreamError("policy-violation", f"more than {self.maxElements} elements in a stanza")
        if self._current is not None:
            self._flushText()
            # No e.parent back-reference: without reference cycles a
            # forwarded stanza is freed at once instead of waiting for the
            # cyclic garbage collector, whose full passes show up as
            # latency spikes under load.
            self._current.children.append(e)
            self._stack.append(self._current)
        self._current = e

    # raw stanzas: counted and checked like any element, never built.  While
    # one is open, expat calls lean handlers of their own (no text handler).

    def _rawStart(self, uri, local, prefix, attrs):
        self._depth = 2
        self._elements = 1
        self._prefixes = {}
        # An outer prefix is the source stream's business; rebuild it elsewhere.
        self._portable = prefix is None
        if any(" " in k for k in attrs):
            self._checkPrefixes(attrs)
            attrs = {k: v for k, v in attrs.items() if " " not in k}
        self._raw = (local, uri, attrs, self._outerDefault)
        self._outerDefault = False
        p = self._parser
        p.StartElementHandler = self._rawChild
        p.EndElementHandler = self._rawChildEnd
        p.CharacterDataHandler = None

    def _rawChild(self, name, attrs):
        depth = self._depth
        if depth >= self.maxDepth:
            raise StreamError("policy-violation", f"elements nested deeper than {self.maxDepth}")
        self._depth = depth + 1
        self._elements += 1
        if self._elements > self.maxElements:
            raise StreamError("policy-violation", f"more than {self.maxElements} elements in a stanza")
        if self._portable:
            if name.count(" ") == 2:
                self._checkPrefixes(attrs, name)
            elif attrs:
                for k in attrs:
                    if " " in k:
                        self._checkPrefixes(attrs)
                        break

    def _checkPrefixes(self, attrs, name=""):
        """Not portable when a prefix used here was declared by the stream header."""
        scoped = self._scoped
        for qname in (name, *attrs):
            if qname.count(" ") == 2:
                prefix = qname.rpartition(" ")[2]
                if prefix != "xml" and prefix not in scoped:
                    self._portable = False
                    return

    def _rawChildEnd(self, name):
        self._depth -= 1
        if self._depth == 1:
            self._rawEnd()

    def _rawEnd(self):
        p = self._parser
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._cdata
        index = p.CurrentByteIndex
        buf, bufStart = self._buf, self._bufStart
        start = self._unitStart
        i = index - bufStart
        if self._elements == 1 and buf[i - 2:i] == b"/>" and self._tagEnd(start) == index:
            end = index   # <message .../>: expat points after it
        else:
            # expat points at "</"; its ">" arrived in this slice, and
            # nothing before it in the tag is one.
            close = buf.find(b">", max(0, i))
            end = bufStart + close + 1 if close >= 0 else self._fed
        data = buf[start - bufStart:end - bufStart]
        self._completed(end, "stanza")
        name, uri, attrs, declaresDefault = self._raw
        self._raw = None
        self._elements = 0
        self._prefixes = {}
        self.onStanza(RawStanza(name, uri, attrs, data, portable=self._portable,
                                declaresDefault=declaresDefault,
                                context=self._headerPrefixes))

    def _end(self, name):
        if self._resetPending:
            return   # after <starttls/>/<success/>: nothing more of this document counts
        self._depth -= 1
        if self._depth == 0:
            self.onEnd()
            return
        e = self._current
        self._flushText()
        if not self._stack:
            index = self._parser.CurrentByteIndex
            buf, bufStart = self._buf, self._bufStart
            i = index - bufStart
            if not e.children and i >= 2 and buf[i - 2:i] == b"/>":
                end = index   # <message .../>: expat points after it
            else:
                # expat points at "</"; its ">" arrived in this slice (the
                # tag is reported at once), and nothing before it in the tag
                # is one.
                close = buf.find(b">", max(0, i))
                end = bufStart + close + 1 if close >= 0 else self._fed
            self._completed(end, "stanza")
            self._current = None
            self._elements = 0
            self.onElement(e)
        else:
            self._current = self._stack.pop()

    def _flushText(self):
        # Text arrives in buffer_size pieces; join once instead of
        # concatenating piece by piece (quadratic for a big body).
        if self._text:
            self._textOwner.addContent("".join(self._text))
            self._text = []

    def _cdata(self, data):
        if self._resetPending:
            return   # after <starttls/>/<success/>: nothing more of this document counts
        if self._current is not None:
            if self._textOwner is not self._current:
                self._flushText()
                self._textOwner = self._current
            self._text.append(data)


def _split(name):
    """expat's "uri local" or "uri local prefix" as (uri, local, prefix or None)."""
    parts = name.split(" ")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1], None
    return "", name, None


def parseElement(data, namespace, prefixes=None):
    """
    Parse the bytes of one element as it stood in a stream whose default
    namespace is C{namespace} and whose header declared C{prefixes}.
    """
    elements = []
    declarations = "".join(f" xmlns:{p}={quoteattr(u)}" for p, u in (prefixes or {}).items())
    header = f"<wrapper xmlns={quoteattr(namespace)}{declarations}>".encode("utf-8")
    parser = StreamParser(lambda header: None, elements.append, lambda: None,
                          maxStanzaBytes=max(len(data), len(header)))
    parser.feed(header)
    parser.feed(data)
    if len(elements) != 1:
        raise StreamError("not-well-formed", "not one complete element")
    return elements[0]
