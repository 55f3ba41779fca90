"""
C{s2sgate demo}: the gateway doing its real job, in one process, on loopback.

  - L{s2sgate.demo.pki}: a throw-away CA and certificates with XMPP identities;
  - L{s2sgate.demo.c2s}: a c2s server stand-in (server side of XEP-0114,
    simulated local users);
  - L{s2sgate.demo.narrate}: the gateway's log events as a story, the session table;
  - L{s2sgate.demo.run}: two sites, messages both ways, a timed burst.
"""
