# -*- test-case-name: tests.test_security -*-
"""
What the configuration demands of a stream's security, per remote domain.

  use_starttls = "false"            never offer or use TLS
                 "optional"         offer it, use it when offered
                 "required"         no stanza and no authentication without TLS
                 "required_trusted" and the certificate must be valid for the peer
  secure_auth = true                certificates only: no dialback without a valid certificate
  secure_domains                    as secure_auth, for these domains whatever it says
  insecure_domains                  may always authenticate with dialback
  dane = "off"                      no DNSSEC, no TLSA
         "opportunistic"            DANE where SRV and TLSA are DNSSEC-authenticated
         "required"                 and refuse peers without such TLSA records
  dane_domains                      as dane = "required", for these domains
"""

from s2sgate.xmpp.namespaces import NS_SASL, NS_TLS  # noqa: F401 (re-exported)


class Requirements:
    """The one object that answers "what does policy demand of this peer"."""

    def __init__(self, s2sConfig):
        s = s2sConfig
        self.mode = s.use_starttls
        self.secureAuth = s.secure_auth
        self.secureDomains = frozenset(s.secure_domains)
        self.insecureDomains = frozenset(s.insecure_domains)
        self.dane = s.dane
        self.daneDomains = frozenset(s.dane_domains)

    @property
    def daneEnabled(self):
        """Whether SRV and TLSA are asked with DNSSEC at all."""
        return self.dane != "off" or bool(self.daneDomains)

    def daneRequired(self, remote):
        """Whether C{remote} must be authenticated by DANE (RFC 7673)."""
        return self.dane == "required" or remote in self.daneDomains

    @property
    def tlsEnabled(self):
        return self.mode != "false"

    def mustEncrypt(self, remote=None):
        """Whether a stream with C{remote} may carry nothing before TLS."""
        if self.mode in ("required", "required_trusted"):
            return True
        if remote is not None and (remote in self.secureDomains or self.daneRequired(remote)):
            return True
        return self.secureAuth and (remote is None or remote not in self.insecureDomains)

    def mustBeTrusted(self, remote):
        """Whether C{remote} must present a certificate valid for its domain."""
        if self.daneRequired(remote):
            return True
        if remote in self.insecureDomains:
            return False
        return (self.mode == "required_trusted" or self.secureAuth
                or remote in self.secureDomains)

    def dialbackAllowed(self, remote, certificate):
        """
        Whether dialback may authenticate C{remote}, given the verdict on its
        certificate (a L{PeerCertificate} or None): C{(ok, reason)}.
        """
        if not self.mustBeTrusted(remote):
            return True, None
        if certificate is not None and certificate.status == "valid":
            return True, None
        why = certificate.reason if certificate is not None else "no TLS"
        return False, f"{remote} must authenticate with a valid certificate ({why})"
