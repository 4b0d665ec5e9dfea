"""GET /metrics: the node's metrics in Prometheus' text format (shoal/metrics/), and the
middleware that counts and times every API request by its route pattern (never the raw
path: IDs and names would make a series per object)."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from shoal.api.context import node_of
from shoal.metrics.registry import ApiInstruments

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_VERSION_PREFIX = re.compile(r"^/v\{api_version[^}]*\}")
PASSTHROUGH = "/{path}"  # the catch-all that forwards to the engine (passthrough.py)


def route_pattern(request: web.Request) -> str:
    """The pattern the request matched, without the /vX.Y prefix: "/services/{id}"."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    canonical = resource.canonical
    if canonical.startswith("/{path"):
        return PASSTHROUGH
    return _VERSION_PREFIX.sub("", canonical) or "/"


def metrics_middleware(api: ApiInstruments) -> Any:
    """Outermost: sees the status the client gets, after errors were turned into answers."""
    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.monotonic()
        code = 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        finally:
            api.observe(request.method, route_pattern(request), code,
                        time.monotonic() - start)

    return count


async def metrics(request: web.Request) -> web.Response:
    body, content_type = await node_of(request).metrics.scrape(
        request.headers.get("Accept", ""))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


ROUTES = [("GET", "/metrics", metrics)]
