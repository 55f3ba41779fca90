# -*- test-case-name: tests.test_plugin_feature -*-
"""
The negotiation features, one module each, and the lines that register them.

A new feature is a new module here plus its line below: a step class (the
initiating side, constructed per stream with the runtime) in the order of
preference, and/or an offer class (the receiving side, per stream).
"""

from s2sgate.features import (
    bidi,
    dialback,
    dialback_without_dialback,
    limits,
    sasl_external,
    starttls,
    stream_management,
)

# The initiating side, in order of preference: what an outbound stream runs.
STEPS = (
    starttls.DirectTLS,
    starttls.StartTLS,
    bidi.Bidi,
    sasl_external.SaslExternal,
    dialback.Dialback,
)

# Steps that run once the pair is authenticated, on the features then in
# force, before the stream carries stanzas (they must not end negotiation).
AFTER_AUTH_STEPS = (
    stream_management.StreamManagement,
)

# The dialback verify leg: secure the stream, then its own verify step.
VERIFY_STEPS = (
    starttls.DirectTLS,
    starttls.StartTLS,
)

# The receiving side, in the order they appear in <stream:features/>.
OFFERS = (
    starttls.StartTLSOffer,
    sasl_external.SaslExternalOffer,
    dialback.DialbackOffer,
    bidi.BidiOffer,
    limits.LimitsOffer,
    stream_management.StreamManagementOffer,
)

# Ways a <db:result/> is answered without a verify leg (XEP-0344).
DIALBACK_SHORTCUTS = (
    dialback_without_dialback.certificateProves,
)
