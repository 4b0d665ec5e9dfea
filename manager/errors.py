"""The manager's errors. Translated once: to gRPC codes in servicers, to HTTP in shoal/api."""


class ManagerError(Exception):
    """Base: `str(err)` is the message a user sees."""


class InvalidArgument(ManagerError):
    pass


class NotFound(ManagerError):
    pass


class AlreadyExists(ManagerError):
    pass


class OutOfSequence(ManagerError):
    """An update carried a stale version: someone else changed the object first."""


class FailedPrecondition(ManagerError):
    pass


class Unavailable(ManagerError):
    """No leader, no quorum, or the node is not a manager."""


class PermissionDenied(ManagerError):
    pass


class Fenced(Unavailable):
    """A decision of a former leader, refused by the store: a newer leader took over."""
