"""Code as it was before a speed change, kept for before/after runs of the bench (never
imported by ``s2sgate/``): ``bench/forward.py`` and ``bench/oldscan_patch.py`` use it."""
from s2sgate.xmpp.parser import _TAG_STOP


def everyTagScan(self, data):
    """``StreamParser._scan`` before: every tag and quoted value of every chunk, followed."""
    i, end = 0, len(data)
    start = self._scanned
    while i < end:
        if self._tagStart is None:
            j = data.find(b"<", i)
            if j < 0:
                break
            self._tagStart, i = start + j, j + 1
        elif self._quote is not None:
            j = data.find(self._quote, i)
            if j < 0:
                break
            self._quote, i = None, j + 1
        else:
            m = _TAG_STOP.search(data, i)
            if m is None:
                break
            i = m.end()
            if m.group() == b">":
                self._tagStart = None
            else:
                self._quote = m.group()
    self._scanned = start + end
