"""A small synchronous client for the node's HTTP API (the Docker Engine API's swarm subset).

Used by the CLI, the lab and the tests. Speaks HTTP/1.1 over a unix socket or TCP.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import urllib.parse
from collections.abc import Iterator
from typing import Any

from shoal.clienttls import ClientTLS, ClientTLSError

DEFAULT_HOST = "unix:///run/shoal/shoal.sock"


class APIError(Exception):
    """The daemon answered with an error status; `message` is its `{"message": ...}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ConnectionFailed(APIError):
    def __init__(self, host: str, reason: str) -> None:
        super().__init__(
            0,
            f"cannot connect to the Shoal daemon at {host}: {reason}. "
            "Is shoald running? Pass -H or set SHOAL_HOST to its socket.",
        )


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the API's own; also the benchmarks' and tests' raw client)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def resolve_host(host: str | None) -> str:
    return host or os.environ.get("SHOAL_HOST") or DEFAULT_HOST


class Client:
    def __init__(self, host: str | None = None, timeout: float = 60.0,
                 tls: ClientTLS | None = None) -> None:
        self.host = resolve_host(host)
        self.timeout = timeout
        self.tls = tls
        self._ssl: ssl.SSLContext | None = None

    def _connection(self) -> http.client.HTTPConnection:
        parsed = urllib.parse.urlparse(self.host)
        if parsed.scheme == "unix":
            return UnixConnection(parsed.path, self.timeout)
        if parsed.scheme == "tcp" and self.tls is not None:
            if self._ssl is None:
                try:
                    self._ssl = self.tls.context()
                except ClientTLSError as err:
                    raise APIError(0, str(err)) from err
            return http.client.HTTPSConnection(parsed.hostname or "127.0.0.1", parsed.port or 2376,
                                               timeout=self.timeout, context=self._ssl)
        if parsed.scheme in ("tcp", "http"):
            return http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 2375,
                                              timeout=self.timeout)
        raise APIError(0, f"unsupported host {self.host!r}: use unix:///PATH or tcp://ADDR:PORT")

    def request(self, method: str, path: str, body: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        """Send one request; return the decoded JSON body (or None); raise APIError."""
        return _decode(self.raw(method, path, body, params))

    def raw(self, method: str, path: str, body: Any = None,
            params: dict[str, Any] | None = None) -> bytes:
        """Send one request; return the body as sent (a backup file); raise APIError."""
        query = ""
        if params:
            query = "?" + urllib.parse.urlencode(
                {k: _param(v) for k, v in params.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn = self._connection()
        try:
            conn.request(method, path + query, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionFailed(self.host, str(exc) or type(exc).__name__) from exc
        finally:
            conn.close()
        if resp.status >= 400:
            decoded = _decode(raw)
            message = decoded.get("message") if isinstance(decoded, dict) else None
            raise APIError(resp.status, str(message or raw.decode(errors="replace")))
        return raw

    def stream(self, path: str, **params: Any) -> Iterator[bytes]:
        """GET a streaming response (logs, events); yield its body as it arrives."""
        query = "?" + urllib.parse.urlencode(
            {k: _param(v) for k, v in params.items() if v is not None}) if params else ""
        conn = self._connection()
        try:
            conn.request("GET", path + query)
            resp = conn.getresponse()
            if resp.status >= 400:
                decoded = _decode(resp.read())
                message = decoded.get("message") if isinstance(decoded, dict) else decoded
                raise APIError(resp.status, str(message))
            while chunk := resp.read1(65536):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionFailed(self.host, str(exc) or type(exc).__name__) from exc
        finally:
            conn.close()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any = None, **params: Any) -> Any:
        return self.request("POST", path, body=body, params=params or None)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params=params or None)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
