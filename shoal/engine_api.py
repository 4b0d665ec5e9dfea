"""The few Engine API calls labs and tests need, over the engine's unix socket with
http.client (docker-py is for the executor), and the test images they load."""

from __future__ import annotations

import http.client
import json
import os
import socket
import tarfile
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

SWARM_NODE_LABEL = "com.docker.swarm.node.id"
IMAGES_ENV = "SHOAL_IMAGES"  # a directory of `docker save` tarballs (default images/out)


class EngineError(Exception):
    """The engine could not be started, reached, loaded or stopped; the message says why."""


def _socket_path(engine: str) -> str:
    parsed = urllib.parse.urlparse(engine)
    if parsed.scheme != "unix" or not parsed.path:
        raise EngineError(f"engine {engine!r}: use unix:///PATH (a Docker Engine API socket)")
    return parsed.path


def call(engine: str, method: str, path: str, body: bytes | None = None,
         content_type: str = "application/json", timeout: float = 30.0) -> tuple[int, bytes]:
    """One HTTP request to the engine at `engine` (unix:///PATH); returns (status, body)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    conn = http.client.HTTPConnection("localhost", timeout=timeout)
    try:
        sock.connect(_socket_path(engine))
        conn.sock = sock
        headers = {"Content-Type": content_type} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise EngineError(f"engine {engine}: {method} {path}: {exc or type(exc).__name__}; "
                          "is its dockerd running?") from exc
    finally:
        conn.close()
        sock.close()


def api(engine: str, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """A JSON request; returns the decoded answer (None when empty); raises on status ≥ 400."""
    data = None if body is None else json.dumps(body).encode()
    status, raw = call(engine, method, path, data, timeout=timeout)
    try:
        decoded = json.loads(raw) if raw.strip() else None
    except ValueError:
        decoded = raw.decode(errors="replace").strip()
    if status >= 400:
        message = decoded.get("message") if isinstance(decoded, dict) else decoded
        raise EngineError(f"engine {engine}: {method} {path}: {status} {message}")
    return decoded


def ping(engine: str, timeout: float = 2.0) -> bool:
    try:
        return call(engine, "GET", "/_ping", timeout=timeout) == (200, b"OK")
    except EngineError:
        return False


class Reachable(Protocol):
    """An engine by its socket (engine.Engine)."""

    @property
    def socket(self) -> str: ...


def load_image(engine: Reachable | str, tar_path: Path | str) -> list[str]:
    """POST a `docker save` tarball to /images/load; returns the image names it loaded."""
    url = engine if isinstance(engine, str) else engine.socket
    try:
        data = Path(tar_path).read_bytes()
    except OSError as exc:
        raise EngineError(f"cannot read image tarball {tar_path}: {exc.strerror}; "
                          "build it with `make images`") from exc
    status, raw = call(url, "POST", "/images/load?quiet=1", data,
                       content_type="application/x-tar", timeout=120.0)
    loaded = []
    for line in raw.decode(errors="replace").splitlines():
        try:
            message = json.loads(line) if line.strip() else {}
        except ValueError:
            message = {"error": line}
        if status >= 400 or "error" in message or "message" in message:
            reason = message.get("error") or message.get("message") or line
            raise EngineError(f"engine {url}: loading {tar_path} failed: {reason}")
        stream = str(message.get("stream", ""))
        if stream.startswith("Loaded image"):
            loaded.append(stream.split(":", 1)[1].strip())
    return loaded


def has_image(engine: str, ref: str) -> bool:
    try:
        api(engine, "GET", f"/images/{urllib.parse.quote(ref, safe='')}/json")
    except EngineError as exc:
        if " 404 " in str(exc):
            return False
        raise
    return True


def remove_containers(engine: str, label: str | None = None) -> list[str]:
    """Force-remove (with anonymous volumes) every container, or those with `label`."""
    filters = {"label": [label]} if label else {}
    query = urllib.parse.urlencode({"all": "1", "filters": json.dumps(filters)})
    removed = []
    for container in api(engine, "GET", f"/containers/json?{query}") or []:
        try:
            api(engine, "DELETE", f"/containers/{container['Id']}?force=1&v=1", timeout=60.0)
            removed.append(container["Id"])
        except EngineError as exc:
            if " 404 " not in str(exc):  # already gone is fine
                raise
    return removed


def images_dir() -> Path:
    """Where the test images' tarballs are: $SHOAL_IMAGES, else images/out of this checkout."""
    env = os.environ.get(IMAGES_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "images" / "out"


def image_tarballs() -> list[Path]:
    found = sorted(images_dir().glob("*.tar"))
    if not found:
        raise EngineError(f"no image tarballs (*.tar) in {images_dir()}; build them with "
                          f"`make images`, or set {IMAGES_ENV} to their directory")
    return found


def _tarball_tags(path: Path) -> list[str]:
    try:
        with tarfile.open(path) as tar:
            member = tar.extractfile("manifest.json")
            manifest = json.loads(member.read()) if member else []
    except (OSError, KeyError, ValueError, tarfile.TarError) as exc:
        raise EngineError(f"{path} is not a `docker save` tarball ({exc}); "
                          "rebuild it with `make images`") from exc
    return [tag for entry in manifest for tag in entry.get("RepoTags") or []]


def ensure_images(engine: str) -> list[str]:
    """Load each tarball of images_dir() that has a tag the engine lacks; returns those tags."""
    loaded = []
    for tarball in image_tarballs():
        if not all(has_image(engine, tag) for tag in _tarball_tags(tarball)):
            loaded += load_image(engine, tarball)
    return loaded
