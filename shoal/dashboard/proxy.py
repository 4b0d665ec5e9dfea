"""`shoal dashboard`: a browser cannot open a unix socket, so serve the dashboard on a local
TCP port by proxying to the node's API, as `kubectl proxy` does. The proxy is read-only and
forwards only what the page reads: GET/HEAD of the dashboard's files and of the cluster's
nodes, services, tasks, networks and events. The swarm object (its join tokens), secrets,
logs and the engine's own routes are never forwarded, and a Host header other than the
proxy's own address is refused (a web page of another site cannot reach it through DNS
rebinding)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from shoal.clienttls import ClientTLS

log = logging.getLogger(__name__)

_READ = re.compile(r"^/(?:v[0-9]+\.[0-9]+/)?(?:_ping|version|events|metrics"
                   r"|(?:nodes|services|tasks|networks)(?:/[A-Za-z0-9_.-]+)?)$")
_PAGE = re.compile(r"^/dashboard(?:/(?:[a-z][a-z0-9-]*\.[a-z]+)?)?$")
_HEADERS = ("Content-Type", "Content-Security-Policy", "X-Content-Type-Options",
            "X-Frame-Options", "Cache-Control", "Location", "Api-Version", "Swarm")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ProxyError(Exception):
    """The proxy cannot serve (bad daemon address, port in use); the message says why."""


def refusal(method: str, path: str) -> tuple[int, str] | None:
    """Why the proxy refuses a request (status, message), or None to forward it."""
    if method not in ("GET", "HEAD"):
        return 405, (f"the dashboard proxy is read-only: {method} {path} is not forwarded; "
                     "use the shoal or docker CLI on the node's socket to change the cluster")
    if _READ.match(path) or _PAGE.match(path):
        return None
    return 403, (f"the dashboard proxy does not forward {path}: it serves only the dashboard "
                 "and what it reads (nodes, services, tasks, networks, events)")


def host_allowed(host_header: str | None, address: str, port: int) -> bool:
    """Whether the request's Host names this proxy (its address, or localhost on loopback)."""
    if not host_header:
        return False
    if host_header.startswith("["):  # [::1]:8001
        name, _, rest = host_header[1:].partition("]")
        given = rest.removeprefix(":")
    else:
        name, _, given = host_header.rpartition(":")
    names = {address, *LOOPBACK} if address in LOOPBACK else {address}
    return name in names and given == str(port)


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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_proxy(up: Upstream, address: str, port: Callable[[], int]) -> web.Application:
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
        refused = refusal(request.method, request.path)
        if refused is not None:
            return _error(*refused)
        return await _relay(session["s"], up, request)

    app = web.Application()
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


async def _relay(session: aiohttp.ClientSession, up: Upstream,
                 request: web.Request) -> web.StreamResponse:
    url = up.base + request.path_qs
    try:
        upstream_resp = await session.request(request.method, url, allow_redirects=False)
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


async def serve(up: Upstream, address: str, port: int,
                ready: Callable[[str], None]) -> None:
    """Serve until cancelled; `ready` gets the dashboard's URL once the port is bound."""
    bound: dict[str, int] = {"port": port}
    runner = web.AppRunner(make_proxy(up, address, lambda: bound["port"]),
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
        shown = f"[{address}]" if ":" in address else address
        ready(f"http://{shown}:{bound['port']}/dashboard/")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    for addr in runner.addresses:
        return int(addr[1])
    raise ProxyError("the dashboard proxy has no listening socket")

