"""The node's HTTP API: the Docker Engine API's swarm subset, on a unix socket (and TCP)."""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from manager import errors as merr
from manager.controlapi.limits import MAX_REQUEST_BYTES, MAX_SPEC_BYTES
from shoal.api import logs, networks, nodes, secrets, services, swarm, tasks
from shoal.api.context import NODE
from shoal.description import VERSION
from shoal.errors import NodeError
from shoal.node import Node

log = logging.getLogger(__name__)

API_VERSION = "1.44"
MIN_API_VERSION = "1.24"

# Status codes for cluster errors, as the Docker CLI expects them.
_STATUS: list[tuple[type[merr.ManagerError], int]] = [
    (merr.InvalidArgument, 400), (merr.NotFound, 404), (merr.AlreadyExists, 409),
    (merr.OutOfSequence, 409), (merr.FailedPrecondition, 400), (merr.PermissionDenied, 403),
    (merr.Unavailable, 503),
]

# aiohttp refuses a body over client_max_size while reading it (then drains the rest, so the
# client still reads this answer). A valid spec is far smaller (manager/controlapi/limits.py),
# so this is a bad spec like any other: 400, as every invalid spec gets.
_TOO_LARGE = (f"the request body is larger than the API's limit of "
              f"{MAX_REQUEST_BYTES // (1024 * 1024)} MiB: a service spec may be at most "
              f"{MAX_SPEC_BYTES // 1024} KiB serialized; keep large data (environment, "
              "configuration files) out of the spec")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_status(err: Exception) -> int:
    if isinstance(err, NodeError):
        return err.status
    for cls, status in _STATUS:
        if isinstance(err, cls):
            return status
    return 500


def _error(status: int, message: str) -> web.Response:
    # Exactly "application/json" (no charset): the docker CLI parses the message only then.
    return web.Response(body=json.dumps({"message": message}).encode(), status=status,
                        content_type="application/json")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return _error(400, _TOO_LARGE)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.reason if exc.status != 404 else
                          f"page not found: {request.method} {request.path}")
        raise
    except (NodeError, merr.ManagerError) as err:
        return _error(error_status(err), str(err))
    except Exception as err:  # the boundary: nothing escapes as a traceback to the user
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, f"internal error: {err}")
    return response


def swarm_header(node: Node) -> str:
    if node.state is None:
        return "inactive"
    return "active/manager" if node.manager_role is not None else "active/worker"


def headers_middleware(node: Node) -> Any:
    @web.middleware
    async def add_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers["Api-Version"] = API_VERSION
        response.headers["Ostype"] = "linux"
        response.headers["Docker-Experimental"] = "false"
        response.headers["Server"] = f"Shoal/{VERSION} (linux)"
        response.headers["Swarm"] = swarm_header(node)
        response.headers["Cache-Control"] = "no-cache, no-store, must-revalidate"
        response.headers["Pragma"] = "no-cache"
        return response

    return add_headers


async def ping(request: web.Request) -> web.Response:
    if request.method == "HEAD":
        return web.Response(status=200, content_type="text/plain")
    return web.Response(text="OK", content_type="text/plain")


async def version(request: web.Request) -> web.Response:
    return web.json_response({
        "Version": VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux", "Arch": _arch(), "KernelVersion": platform.release(),
        "Components": [{"Name": "Shoal", "Version": VERSION, "Details": {}}],
        "Platform": {"Name": "Shoal"},
    })


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def make_app(node: Node) -> web.Application:
    app = web.Application(middlewares=[headers_middleware(node), errors_middleware],
                          client_max_size=MAX_REQUEST_BYTES)
    app[NODE] = node
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/_ping", ping), ("HEAD", "/_ping", ping), ("GET", "/version", version),
        *swarm.ROUTES, *nodes.ROUTES, *networks.ROUTES, *logs.ROUTES, *services.ROUTES,
        *tasks.ROUTES, *secrets.ROUTES,
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, r"/v{api_version:[0-9]+\.[0-9]+}" + path, handler)
    return app
