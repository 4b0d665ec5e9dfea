"""Errors of the node itself (not of the cluster state). shoal/api maps them to HTTP."""


class NodeError(Exception):
    status = 500


class InvalidRequest(NodeError):
    status = 400


class NotInSwarm(NodeError):
    status = 503

    def __init__(self) -> None:
        super().__init__(
            'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" '
            "to connect this node to swarm and try again.")


class AlreadyInSwarm(NodeError):
    status = 503

    def __init__(self) -> None:
        super().__init__(
            'This node is already part of a swarm. Use "docker swarm leave" to leave this '
            "swarm and join another one.")


class NotAManager(NodeError):
    status = 503

    def __init__(self, managers: list[str]) -> None:
        where = ", ".join(managers) if managers else "unknown"
        super().__init__(
            "This node is not a swarm manager. Worker nodes can't be used to view or modify "
            "cluster state. Please run this command on a manager node or promote the current "
            f"node to a manager. Managers of this swarm: {where}")


class JoinFailed(NodeError):
    status = 400


class LeaveRefused(NodeError):
    status = 503


class SwarmLocked(NodeError):
    status = 503

    def __init__(self) -> None:
        super().__init__(
            "Swarm is encrypted and needs to be unlocked before it can be used. Please use "
            '"docker swarm unlock" to unlock it.')


class NotLocked(NodeError):
    status = 409

    def __init__(self) -> None:
        super().__init__("swarm is not locked")


class InvalidUnlockKey(NodeError):
    status = 401

    def __init__(self) -> None:
        super().__init__("swarm could not be unlocked: invalid key provided")
