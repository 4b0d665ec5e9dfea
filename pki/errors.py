"""Errors of the cluster PKI: an unusable key, certificate, TLS peer or join token."""


class PKIError(Exception):
    """A key, certificate or TLS peer is unusable."""


class TokenError(PKIError):
    """A join token is not of the SWMTKN-1 form."""
