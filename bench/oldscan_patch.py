"""Before/after only (bench/run.py's gateway section): the gateway with the parser's trickle
scan as it was before (every tag of every chunk followed, ``bench/before.py``).  Patches the
class at start-up in that gateway's process; s2sgate's own code is unchanged."""
from before import everyTagScan

from s2sgate.xmpp.parser import StreamParser

StreamParser._scan = everyTagScan
