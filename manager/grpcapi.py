"""The one boundary between gRPC and the manager: who may call, and errors → status codes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

import pki
from manager import errors
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


def caller(context: grpc.aio.ServicerContext, cluster_id: str,
           roles: tuple[int, ...]) -> pki.Identity:
    """The authenticated peer; refuses callers of another cluster or the wrong role."""
    ident = pki.peer_identity(context)
    if ident is None:
        raise errors.PermissionDenied("a client certificate of this swarm is required")
    if ident.cluster_id != cluster_id:
        raise errors.PermissionDenied(
            f"certificate of cluster {ident.cluster_id} is not valid in cluster {cluster_id}")
    if ident.role not in roles:
        wanted = " or ".join(role_name(r) for r in roles)
        raise errors.PermissionDenied(
            f"node {ident.node_id} is a {role_name(ident.role)}; "
            f"this call is for {wanted} nodes only")
    return ident


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
