"""GET /dashboard/: the web dashboard's static files, on managers (the page reads the
cluster through this same API: /nodes, /services, /tasks, /networks, /events)."""

from __future__ import annotations

from aiohttp import web

from shoal.api.context import manager_of
from shoal.dashboard.assets import CSP, asset


async def redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard/")


async def static(request: web.Request) -> web.Response:
    manager_of(request)  # a worker has no cluster to show: the 503 every swarm route gives
    found = asset(request.match_info.get("name", ""))
    if found is None:
        raise web.HTTPNotFound()
    return web.Response(body=found.body, content_type=found.content_type,
                        charset="utf-8" if found.content_type.startswith("text/") else None,
                        headers={"Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff",
                                 "X-Frame-Options": "DENY"})


# Without a /vX.Y prefix (a browser asks for a page, not an API version).
ROUTES = [("GET", "/dashboard", redirect), ("GET", "/dashboard/", static),
          ("GET", "/dashboard/{name}", static)]
