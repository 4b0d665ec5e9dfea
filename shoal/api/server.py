"""The node's HTTP API: the Docker Engine API's swarm subset, on a unix socket (and TCP)."""

from __future__ import annotations

import functools
import json
import logging
import platform
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from manager import errors as merr
from manager.controlapi.limits import MAX_REQUEST_BYTES, MAX_SPEC_BYTES
from shoal import apitls
from shoal.api import (
    ca,
    dashboard,
    events,
    fairness,
    logs,
    metrics,
    networks,
    nodes,
    passthrough,
    secrets,
    services,
    swarm,
    tasks,
)
from shoal.api.context import NODE
from shoal.description import VERSION
from shoal.errors import InvalidRequest, NodeError
from shoal.node import Node

log = logging.getLogger(__name__)

# Docker 28.2's API version, which the docker CLI negotiates down to (the CLI and docker-py
# gate flags on it: job modes need 1.41, --health-start-interval 1.44, --oom-score-adj 1.46).
API_VERSION = "1.50"
MIN_API_VERSION = "1.24"

# Status codes for cluster errors, as dockerd gives them. A stale version is 500 there:
# swarmkit returns "update out of sequence" as a plain error, which gRPC carries as Unknown.
_STATUS: list[tuple[type[merr.ManagerError], int]] = [
    (merr.InvalidArgument, 400), (merr.NotFound, 404), (merr.AlreadyExists, 409),
    (merr.OutOfSequence, 500), (merr.FailedPrecondition, 400), (merr.PermissionDenied, 403),
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


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def check_api_version(version: str | None) -> None:
    """Refuse a /vX.Y the API does not speak, in dockerd's words (its VersionMiddleware)."""
    if version is None:
        return
    if _version_tuple(version) < _version_tuple(MIN_API_VERSION):
        raise InvalidRequest(f"client version {version} is too old. Minimum supported API "
                             f"version is {MIN_API_VERSION}, please upgrade your client to a "
                             "newer version")
    if _version_tuple(version) > _version_tuple(API_VERSION):
        raise InvalidRequest(f"client version {version} is too new. Maximum supported API "
                             f"version is {API_VERSION}")


@web.middleware
async def version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    check_api_version(request.match_info.get("api_version"))
    return await handler(request)


def swarm_header(node: Node) -> str:
    if node.state is None:
        return "inactive"
    if node.locked:
        return "locked"
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
    return web.json_response(version_json())


def version_json() -> dict[str, Any]:
    """dockerd's /version: the CLI prints the Engine component's Details (`docker version`).
    Shoal runs on Python, so "GoVersion" names the Python that runs it."""
    commit, built = build_info()
    details = {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux",
               "Arch": _arch(), "KernelVersion": platform.release(), "Experimental": "false",
               "GitCommit": commit, "GoVersion": f"python{platform.python_version()}",
               "BuildTime": built}
    return {"Platform": {"Name": "Shoal"},
            "Components": [{"Name": "Engine", "Version": VERSION, "Details": details}],
            "Version": VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": commit, "GoVersion": details["GoVersion"], "Os": "linux",
            "Arch": _arch(), "KernelVersion": platform.release(), "BuildTime": built}


@functools.lru_cache(maxsize=1)
def build_info() -> tuple[str, str]:
    """The commit Shoal runs from and its time, as dockerd reports the commit it was built
    from: read once from the source's git repository ("unknown" outside one)."""
    source = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(source), "log", "-1", "--format=%h %cI"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        log.info("no git commit to report in /version: %s", err)
        return "unknown", ""
    commit, _, built = out.strip().partition(" ")
    return commit or "unknown", built


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def make_app(node: Node) -> web.Application:
    app = web.Application(middlewares=[metrics.metrics_middleware(node.metrics.api),
                                       headers_middleware(node), errors_middleware,
                                       apitls.peer_middleware, version_middleware,
                                       fairness.gate_middleware(fairness.ReadGate())],
                          client_max_size=MAX_REQUEST_BYTES)
    app[NODE] = node
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/_ping", ping), ("HEAD", "/_ping", ping), ("GET", "/version", version),
        *swarm.ROUTES, *nodes.ROUTES, *networks.ROUTES, *logs.ROUTES, *services.ROUTES,
        *tasks.ROUTES, *events.ROUTES, *secrets.ROUTES, *ca.ROUTES,
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, r"/v{api_version:[0-9]+\.[0-9]+}" + path, handler)
    for method, path, handler in [*metrics.ROUTES, *dashboard.ROUTES]:  # no /vX.Y prefix
        app.router.add_route(method, path, handler)
    passthrough.install(app)  # last: what no route above serves goes to the engine
    return app
