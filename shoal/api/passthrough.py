"""The node socket is a drop-in for the Docker socket: every request outside the swarm subset
(/containers, /images, /exec, /volumes, /build, /plugins, /system/df, /auth, /commit, ...,
with or without /v1.NN) goes to the node's engine unchanged, so `docker ps`, `docker logs -f`,
`docker exec -it` and `docker run -it` work against a Shoal node.

Two ways through, because HTTP gives two kinds of exchange:

- An ordinary request (bodies and answers of any length, chunked streams such as `logs -f`,
  `stats` or pull progress) goes through an aiohttp client on the engine's unix socket: method,
  path, query, headers (Host rewritten) and the body are streamed to the engine, its status,
  headers and body are streamed back as they come. A client that goes away ends the engine
  request too (aiohttp does not cancel handlers on disconnect, so we watch the transport).
- A hijacked connection (`POST /containers/{id}/attach`, `POST /exec/{id}/start` with
  `Upgrade: tcp`, as the docker CLI and docker-py send them) cannot go through an HTTP client:
  after `101 Switching Protocols` the connection carries raw bytes both ways (stdin in, the
  multiplexed or tty stream out) until either side closes, and a client half-closes its side
  when its stdin ends while still reading the output. So we open a plain connection to the
  engine, write the request head ourselves, and once the engine answers 101 we send the same
  101 to the client and pipe the two sockets. aiohttp's server protocol closes the whole
  connection on a client's half-close, so the client's transport is handed to a small
  protocol of ours (which forwards the half-close to the engine and tells aiohttp when the
  connection is gone). Clients that hijack without `Upgrade` (none since Docker 1.12) are not
  supported: their answer would be re-chunked.

The version in the path: clients negotiate the API version with Shoal's /_ping, which may be
newer than the engine's (dockerd 20.10 speaks 1.41) and the engine refuses a version above its
own. Talking to the engine directly the client would have downgraded to the engine's version,
so a /vX.Y above it is lowered to it (asked once per engine with GET /_ping); everything else
of the request is passed as it came.

Paths Shoal serves itself (the swarm subset, /events, /info, ...) never reach the engine: a
method or sub-path Shoal does not know there gets Shoal's 404, not the engine's answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from shoal.api.context import node_of
from shoal.errors import NodeError
from worker.executor.docker.executor import DockerExecutor

log = logging.getLogger(__name__)

# The swarm subset and the node's own endpoints: answered by Shoal or by nobody.
SHOAL_PATHS = {"_ping", "version", "info", "events", "swarm", "nodes", "services", "tasks",
               "networks", "secrets", "configs", "distribution", "metrics"}
_VERSIONED = re.compile(r"^/v[0-9]+\.[0-9]+(?=/)")
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are not forwarded.
_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "host"}
CHUNK = 64 * 1024
HIGH_WATER = 1024 * 1024  # bytes of a client's stdin buffered for the engine before we wait
# The upgrades aiohttp's server lets go raw after the request (BuildKit's h2c is not one).
HIJACKS = ("tcp", "websocket")
GONE_POLL = 1.0  # seconds between checks that a streaming client is still there
HEAD_LIMIT = 64 * 1024



class EngineUnavailable(NodeError):
    status = 503


@dataclass
class EngineLink:
    """One per API: the client session to the engine, and the engine's API version."""
    session: aiohttp.ClientSession | None = None
    version: str | None = None

    def client(self, socket: str) -> aiohttp.ClientSession:
        if self.session is None:
            # No timeout: `logs -f`, `wait` and `stats` streams last as long as they last.
            self.session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=socket), auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None))
        return self.session

    async def close(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()


LINK = web.AppKey("engine_link", EngineLink)


def install(app: web.Application) -> None:
    """Add the catch-all route; call it after every route Shoal serves itself."""
    app[LINK] = link = EngineLink()
    app.router.add_route("*", "/{path:.*}", forward)
    app.on_cleanup.append(link.close)


def shoal_path(path: str) -> bool:
    first = _VERSIONED.sub("", path).lstrip("/").split("/", 1)[0]
    return first in SHOAL_PATHS


def engine_socket(request: web.Request) -> str:
    executor = node_of(request).executor
    if not isinstance(executor, DockerExecutor):
        raise EngineUnavailable(
            "this node runs no container engine (shoald --executor fake), so only the swarm "
            f"API is served here: {request.method} {request.path} needs an engine")
    return urllib.parse.urlparse(executor.engine).path


def _unreachable(socket: str, err: Exception) -> EngineUnavailable:
    if isinstance(err, aiohttp.ClientConnectorError):
        err = err.os_error  # "No such file or directory", not aiohttp's "ssl:default" words
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return EngineUnavailable(f"this node's container engine (unix://{socket}) is not "
                             f"reachable ({reason}): is dockerd running?")


async def forward(request: web.Request) -> web.StreamResponse:
    if shoal_path(request.path):
        raise web.HTTPNotFound()
    socket = engine_socket(request)
    path = await engine_path(request, socket)
    if request.headers.get("Upgrade", "").lower() in HIJACKS:
        return await _hijack(request, socket, path)
    return await _stream(request, socket, path)


async def engine_path(request: web.Request, socket: str) -> str:
    """The request's path and query, its API version lowered to the engine's if above it."""
    raw = request.raw_path
    if _VERSIONED.match(raw) is None:
        return raw
    return lower_version(raw, await _engine_version(request, socket))


def lower_version(raw: str, engine: str) -> str:
    asked = _VERSIONED.match(raw)
    if asked is None or _version_key(asked.group(0)[2:]) <= _version_key(engine):
        return raw
    return f"/v{engine}" + raw[asked.end():]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


async def _engine_version(request: web.Request, socket: str) -> str:
    link = request.app[LINK]
    if link.version is None:
        try:
            async with link.client(socket).get("http://docker/_ping") as ping:
                link.version = ping.headers.get("Api-Version", "1.24")
        except aiohttp.ClientConnectionError as err:
            raise _unreachable(socket, err) from err
    return link.version


def request_headers(request: web.Request) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
    return [("Host", "docker"), *headers]  # Host: what the docker CLI sends on a unix socket


def response_headers(headers: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k.lower() not in _HOP]


# ---- ordinary requests -------------------------------------------------------------------

async def _stream(request: web.Request, socket: str, path: str) -> web.StreamResponse:
    session = request.app[LINK].client(socket)
    data = request.content if request.body_exists else None
    try:
        upstream = await session.request(
            request.method, URL("http://docker" + path, encoded=True),
            headers=request_headers(request), data=data, allow_redirects=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))
    except aiohttp.ClientConnectionError as err:
        raise _unreachable(socket, err) from err
    async with upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in response_headers(upstream.headers):
            response.headers.add(key, value)
        try:
            await response.prepare(request)
            await _until_either(_copy_body(upstream, response), _client_gone(request))
            await response.write_eof()
        except ConnectionError:  # the client left: nobody to answer (aiohttp ignores it too)
            log.debug("%s %s: the client went away", request.method, request.path)
    return response


async def _copy_body(upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> None:
    async for chunk in upstream.content.iter_any():
        await response.write(chunk)


async def _client_gone(request: web.Request) -> None:
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(GONE_POLL)


async def _until_either(first: Awaitable[None], second: Awaitable[None]) -> None:
    """Run both until one ends; cancel the other. A connection dropped by either side (the
    client's or the engine's) ends the exchange: the status line has been sent already."""
    tasks = {asyncio.ensure_future(first), asyncio.ensure_future(second)}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        err = task.exception()
        if isinstance(err, ConnectionError | aiohttp.ClientError):
            log.debug("stream ended: %s", err)
        elif err is not None:
            raise err


# ---- hijacked connections ----------------------------------------------------------------

async def _hijack(request: web.Request, socket: str, path: str) -> web.StreamResponse:
    body = await request.read()
    try:
        reader, writer = await asyncio.open_unix_connection(socket, limit=HEAD_LIMIT)
    except OSError as err:
        raise _unreachable(socket, err) from err
    try:
        writer.write(_request_head(request, path, len(body)) + body)
        status, reason, headers = await _read_head(reader)
        if status != 101:  # refused before hijacking (no such container, ...): a plain answer
            return _plain_answer(status, reason, headers, await _read_body(reader, headers))
        response = web.StreamResponse(status=101, reason=reason)
        for key, value in headers:
            if key.lower() not in ("content-length", "transfer-encoding"):
                response.headers.add(key, value)
        await response.prepare(request)
        await _pipe(request, reader, writer)
        return response
    finally:
        writer.close()


def _request_head(request: web.Request, path: str, length: int) -> bytes:
    lines = [f"{request.method} {path} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in request_headers(request) if k.lower() != "content-length"]
    lines += ["Connection: Upgrade", f"Upgrade: {request.headers['Upgrade']}"]
    if length or request.body_exists:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, list[tuple[str, str]]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    _, code, *reason = status_line.split(" ", 2)
    headers = [(k.strip(), v.strip()) for k, _, v in
               (line.partition(":") for line in lines if line)]
    return int(code), (reason[0] if reason else ""), headers


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    names = {k.lower(): v for k, v in headers}
    if "content-length" in names:
        return await reader.readexactly(int(names["content-length"]))
    if names.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readline()
        return body
    return await reader.read()


def _plain_answer(status: int, reason: str, headers: list[tuple[str, str]],
                  body: bytes) -> web.Response:
    response = web.Response(status=status, reason=reason, body=body)
    for key, value in headers:
        if key.lower() not in _HOP and key.lower() != "content-length":
            response.headers.add(key, value)
    return response


async def _pipe(request: web.Request, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    """Raw bytes both ways until the engine ends the stream or the client goes away."""
    transport, protocol = request.transport, request.protocol
    assert transport is not None
    hijacked = _Hijacked(protocol, transport, writer)
    protocol.set_parser(hijacked)  # type: ignore[arg-type]  # takes what aiohttp buffered
    transport.set_protocol(hijacked)
    try:
        await _until_either(_engine_to_client(reader, transport, protocol), hijacked.gone)
    finally:
        transport.close()


async def _engine_to_client(reader: asyncio.StreamReader, transport: asyncio.BaseTransport,
                            protocol: Any) -> None:
    assert isinstance(transport, asyncio.WriteTransport)
    while data := await reader.read(CHUNK):
        transport.write(data)
        await protocol._drain_helper()  # aiohttp's flow control: wait while the client lags


class _Hijacked(asyncio.Protocol):
    """The client's side of a hijacked connection: bytes to the engine, a half-close passed
    on (the output still flows back), the connection's end told to aiohttp's protocol.
    While the engine takes stdin slower than the client sends it, the client is not read."""

    def __init__(self, aiohttp_protocol: Any, client: asyncio.BaseTransport,
                 engine: asyncio.StreamWriter) -> None:
        assert isinstance(client, asyncio.ReadTransport)
        self.aiohttp_protocol = aiohttp_protocol
        self.client = client
        self.engine = engine
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.draining: asyncio.Task[None] | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:  # aiohttp's parser interface
        self.data_received(data)
        return False, b""

    def feed_eof(self) -> None:
        self.eof_received()

    def data_received(self, data: bytes) -> None:
        if self.engine.is_closing():
            return
        self.engine.write(data)
        if self.engine.transport.get_write_buffer_size() > HIGH_WATER and not self.draining:
            self.client.pause_reading()
            self.draining = asyncio.ensure_future(self._resume_when_drained())

    async def _resume_when_drained(self) -> None:
        try:
            await self.engine.drain()
        except ConnectionError:
            return  # the engine is gone; the pipe ends
        finally:
            self.draining = None
        if not self.client.is_closing():
            self.client.resume_reading()

    def eof_received(self) -> bool:
        if not self.engine.is_closing() and self.engine.can_write_eof():
            self.engine.write_eof()
        return True  # keep our sending side open: the engine's answer is still coming

    def pause_writing(self) -> None:
        self.aiohttp_protocol.pause_writing()

    def resume_writing(self) -> None:
        self.aiohttp_protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)
        self.aiohttp_protocol.connection_lost(exc)
