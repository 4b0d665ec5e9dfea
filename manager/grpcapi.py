"""The one boundary between gRPC and the manager: who may call, and errors → status codes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

import pki
from manager import errors
from manager.store.memory import MemoryStore
from proto import objects_pb2 as pb

_CODES: list[tuple[type[errors.ManagerError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.OutOfSequence, grpc.StatusCode.ABORTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
]

F = TypeVar("F", bound=Callable[..., Any])


def status_code(err: errors.ManagerError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.UNKNOWN


def caller(context: grpc.aio.ServicerContext, cluster_id: str, roles: tuple[int, ...],
           store: MemoryStore) -> pki.Identity:
    """The authenticated peer; refuses callers of another cluster, callers whose node is gone
    from the store, and callers whose certificate or current role (the store's, which a
    demotion changes before the old certificate expires) is not among `roles`."""
    ident = pki.peer_identity(context)
    if ident is None:
        raise errors.PermissionDenied("a client certificate of this swarm is required")
    refused = refusal(ident, cluster_id, roles, store.get(pb.Node, ident.node_id))
    if refused is not None:
        raise errors.PermissionDenied(refused)
    return ident


def refusal(ident: pki.Identity, cluster_id: str, roles: tuple[int, ...],
            node: pb.Node | None) -> str | None:
    """Why `ident` may not make a call open to `roles` (None: it may); pure."""
    if ident.cluster_id != cluster_id:
        return f"certificate of cluster {ident.cluster_id} is not valid in cluster {cluster_id}"
    wanted = " or ".join(role_name(r) for r in roles)
    if ident.role not in roles:
        return (f"node {ident.node_id} is a {role_name(ident.role)}; "
                f"this call is for {wanted} nodes only")
    if node is None:
        return (f"node {ident.node_id} is not a member of this swarm (it was removed); run "
                "`docker swarm leave --force` on it, then join again with a join token")
    current = current_role(node)
    if current not in roles:
        return (f"node {ident.node_id} is a {role_name(current)} now (demoted); its "
                f"{role_name(ident.role)} certificate is no longer valid for this call, "
                f"which is for {wanted} nodes only. The node renews its certificate by "
                "itself; `docker node promote` makes it a manager again")
    return None


def current_role(node: pb.Node) -> int:
    """The role the swarm gives the node now: a manager only while it both is one and is
    meant to stay one, so a demotion counts from the moment it is asked for."""
    if node.role == pb.MANAGER and node.spec.desired_role == pb.MANAGER:
        return pb.MANAGER
    return pb.WORKER


def unary(fn: F) -> F:
    """Wrap a unary servicer method: ManagerError → gRPC status with its message."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except errors.ManagerError as err:
            await context.abort(status_code(err), str(err))

    return wrapper  # type: ignore[return-value]


def streaming(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The same for a server-streaming method (an async generator)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in fn(self, request, context):
                yield item
        except errors.ManagerError as err:
            await context.abort(status_code(err), str(err))

    return wrapper


def role_name(role: int) -> str:
    return "manager" if role == pb.MANAGER else "worker"
