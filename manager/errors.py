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


# dockerd's words when the managers have no leader (moby daemon/cluster/errors.go), first in
# our messages so a docker user recognises the error; ours then say what this manager saw.
NO_LEADER = ("The swarm does not have a leader. It's possible that too few managers are "
             "online. Make sure more than half of the managers are online.")


class PermissionDenied(ManagerError):
    pass


class Fenced(Unavailable):
    """A decision of a former leader, refused by the store: a newer leader took over."""
