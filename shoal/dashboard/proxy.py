"""`shoal dashboard`: a browser cannot open a unix socket, so serve the dashboard on a local
TCP port by proxying to the node's API, as `kubectl proxy` does. What it forwards is decided
in policy.py (read-only unless the operator allows actions)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from shoal.clienttls import ClientTLS
from shoal.dashboard.policy import PROXY_INFO, forged, host_allowed, refusal

log = logging.getLogger(__name__)

_HEADERS = ("Content-Type", "Content-Security-Policy", "X-Content-Type-Options",
            "X-Frame-Options", "Cache-Control", "Location", "Api-Version", "Swarm")


class ProxyError(Exception):
    """The proxy cannot serve (bad daemon address, port in use); the message says why."""


@dataclass(frozen=True)
class Upstream:
    """The node's API: how to connect and the URL prefix of its requests."""
    host: str
    base: str
    unix_path: str | None = None
    tls: ClientTLS | None = None

    def connector(self) -> aiohttp.BaseConnector:
        if self.unix_path is not None:
            return aiohttp.UnixConnector(path=self.unix_path)
        context: ssl.SSLContext | bool = self.tls.context() if self.tls else False
        return aiohttp.TCPConnector(ssl=context)


def upstream(host: str, tls: ClientTLS | None) -> Upstream:
    parsed = urllib.parse.urlparse(host)
    if parsed.scheme == "unix":
        return Upstream(host, "http://localhost", unix_path=parsed.path)
    if parsed.scheme in ("tcp", "http", "https"):
        scheme = "https" if tls is not None or parsed.scheme == "https" else "http"
        default = 2376 if scheme == "https" else 2375
        return Upstream(host, f"{scheme}://{parsed.hostname or '127.0.0.1'}:"
                              f"{parsed.port or default}", tls=tls)
    raise ProxyError(f"unsupported host {host!r}: use unix:///PATH or tcp://ADDR:PORT")


def _error(status: int, message: str) -> web.Response:
    return web.Response(body=json.dumps({"message": message}).encode(), status=status,
                        content_type="application/json")


def make_proxy(up: Upstream, address: str, port: Callable[[], int],
               actions: bool = False) -> web.Application:
    """The proxy's app; `port` gives the port it listens on (known once it is bound)."""
    session: dict[str, aiohttp.ClientSession] = {}

    async def open_session(app: web.Application) -> None:
        session["s"] = aiohttp.ClientSession(
            connector=up.connector(), timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))

    async def close_session(app: web.Application) -> None:
        await session["s"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        if not host_allowed(request.headers.get("Host"), address, port()):
            return _error(403, f"the dashboard proxy answers only to {address}:{port()}, "
                               f"not to Host {request.headers.get('Host')!r}")
        if request.path == PROXY_INFO:
            return web.json_response({"actions": actions, "daemon": up.host})
        refused = refusal(request.method, request.path, actions)
        if refused is None and request.method == "POST":
            refused = forged(request.headers, _origin(address, port()))
        if refused is not None:
            return _error(*refused)
        return await _relay(session["s"], up, request)

    app = web.Application()
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


def _origin(address: str, port: int) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


async def _relay(session: aiohttp.ClientSession, up: Upstream,
                 request: web.Request) -> web.StreamResponse:
    url = up.base + request.path_qs
    body = await request.read() if request.method == "POST" else None
    headers = {"Content-Type": "application/json"} if body is not None else None
    try:
        upstream_resp = await session.request(request.method, url, data=body, headers=headers,
                                              allow_redirects=False)
    except (aiohttp.ClientError, OSError, ssl.SSLError) as err:
        return _error(502, f"cannot reach the Shoal daemon at {up.host}: {err}")
    async with upstream_resp:
        response = web.StreamResponse(status=upstream_resp.status, headers={
            k: upstream_resp.headers[k] for k in _HEADERS if k in upstream_resp.headers})
        await response.prepare(request)
        try:
            async for chunk in upstream_resp.content.iter_any():
                await response.write(chunk)
        except (ConnectionResetError, aiohttp.ClientPayloadError) as err:
            log.debug("%s ended: %s", request.path, err)  # browser left or daemon stopped
            return response
        await response.write_eof()
    return response


async def serve(up: Upstream, address: str, port: int, ready: Callable[[str], None],
                actions: bool = False) -> None:
    """Serve until cancelled; `ready` gets the dashboard's URL once the port is bound."""
    bound: dict[str, int] = {"port": port}
    runner = web.AppRunner(make_proxy(up, address, lambda: bound["port"], actions),
                           handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, address, port)
        try:
            await site.start()
        except OSError as err:
            raise ProxyError(f"cannot listen on {address}:{port}: {err.strerror or err}") \
                from err
        bound["port"] = _bound_port(runner)
        ready(_origin(address, bound["port"]) + "/dashboard/")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    for addr in runner.addresses:
        return int(addr[1])
    raise ProxyError("the dashboard proxy has no listening socket")

