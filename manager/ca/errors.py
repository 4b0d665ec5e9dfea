"""Errors of the cluster certificate authority."""


class CAError(Exception):
    """The CA cannot load its material or sign a request."""


class JoinRefused(CAError):
    """A node's join token does not admit it; the message says why and what to do."""
