"""Errors of the node itself (not of the cluster state). shoal/api maps them to HTTP."""

import grpc


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


def leave_refusal(reachable: int, members: int) -> str:
    """Docker's words for `swarm leave` without --force on a manager (moby's Leave)."""
    msg = ("You are attempting to leave the swarm on a node that is participating as a "
           "manager. ")
    if members <= 1:
        return msg + ("Removing the last manager erases all current state of the swarm. Use "
                      "`--force` to ignore this message. ")
    msg += f"Removing this node leaves {reachable - 1} managers out of {members}. "
    if reachable - 1 <= members // 2:
        msg += ("Removing this node would make the swarm lose its quorum: without a Raft "
                "quorum your swarm will be inaccessible. The only way to restore a swarm that "
                "has lost consensus is to reinitialize it with `--force-new-cluster`. ")
    return msg + "Use `--force` to suppress this message. "


def rpc_message(err: Exception) -> str:
    """A failed call to a manager, as a user reads it inside a message of ours."""
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name.lower()}: {err.details()}"
    return str(err) or type(err).__name__
