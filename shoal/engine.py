"""A private Docker Engine (dockerd) for labs and tests, and the few Engine API calls they need.

`start_engine(root, name)` runs Debian's dockerd 20.10 in the machine's own network namespace
with everything under `root` (so it never touches /var/lib/docker or /var/run/docker.sock):

    root/docker.sock   the API socket (Engine.socket is "unix://" + this)
    root/data/         --data-root (images, containers, containerd's root)
    root/x/            --exec-root (containerd's sockets live here: keep `root` short)
    root/dockerd.pid   --pidfile
    root/dockerd.log   dockerd's and its containerd's output
    root/daemon.json   an empty config file, so /etc/docker/daemon.json is never read

It adds no bridge, iptables rule, route or sysctl (`--bridge=none --iptables=false
--ip6tables=false --ip-forward=false --ip-masq=false`); containers use network mode `none`
(or networks Shoal makes). The storage driver is overlay2, or vfs where overlay2 fails.
Engine API calls go over the unix socket with http.client (docker-py is for the executor).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal import procs

DOCKERD = "dockerd"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the NUL
SWARM_NODE_LABEL = "com.docker.swarm.node.id"
IMAGES_ENV = "SHOAL_IMAGES"  # a directory of `docker save` tarballs (default images/out)
DRIVER_ENV = "SHOAL_ENGINE_STORAGE_DRIVER"  # force a storage driver (overlay2, vfs, ...)
SHIM_SOCKETS = "/run/containerd/s"  # containerd 1.6 puts shim sockets here, hashed per task


class EngineError(Exception):
    """The engine could not be started, reached, loaded or stopped; the message says why."""


# ---- Engine API over a unix socket ------------------------------------------------------

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


def load_image(engine: Engine | str, tar_path: Path | str) -> list[str]:
    """POST a `docker save` tarball to /images/load; returns the image names it loaded."""
    url = engine.socket if isinstance(engine, Engine) else engine
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


# ---- processes -------------------------------------------------------------------------

def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # already gone: that is what killing it was for


def _shim_task(argv: list[str]) -> tuple[str, str, str] | None:
    """(containerd address, namespace, container id) of a containerd-shim command line."""
    opts = dict(zip(argv[1::2], argv[2::2], strict=False)) if argv else {}
    if "-id" in opts and "-address" in opts:
        return opts["-address"], opts.get("-namespace", "moby"), opts["-id"]
    return None


def _descendants(roots: list[int]) -> list[int]:
    """Every process below `roots` (children first found, deepest last)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process exited while we read /proc
            parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], list(roots)
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


# ---- the engine ------------------------------------------------------------------------

@dataclass
class Engine:
    """A dockerd started by `start_engine` (or found again by `attach_engine`)."""

    root: Path
    name: str
    pid: int
    storage_driver: str

    @property
    def socket_path(self) -> Path:
        return self.root / "docker.sock"

    @property
    def socket(self) -> str:
        return "unix://" + str(self.socket_path)

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def exec_root(self) -> Path:
        return self.root / "x"

    @property
    def pidfile(self) -> Path:
        return self.root / "dockerd.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "dockerd.log"

    def running(self) -> bool:
        """Is `pid` alive and still this engine's dockerd (its data root on the command line)?"""
        return procs.alive(self.pid) and str(self.data_root) in _cmdline(self.pid)

    def stop(self, timeout: float = STOP_TIMEOUT, keep_containers: bool = False) -> None:
        """Remove its containers (unless kept), SIGTERM dockerd, SIGKILL it after `timeout`.

        Whatever it leaves running (its containerd, shims and their containers) is killed.
        """
        if self.running():
            if not keep_containers and ping(self.socket):
                remove_containers(self.socket)
            _kill([self.pid], signal.SIGTERM)
            if not _wait_bool(lambda: not procs.alive(self.pid), timeout):
                _kill([self.pid], signal.SIGKILL)
                _wait_bool(lambda: not procs.alive(self.pid), 5.0)
        self._kill_leftovers()
        if procs.alive(self.pid) and self.running():
            raise EngineError(f"engine {self.name}: dockerd {self.pid} survived SIGKILL")

    def _kill_leftovers(self) -> None:
        """containerd and shims naming our exec root, and the containers below the shims."""
        mark = str(self.exec_root) + "/"
        ours = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                and any(arg.startswith(mark) for arg in _cmdline(int(p.name)))]
        if not ours:
            return
        shims = [_shim_task(_cmdline(pid)) for pid in ours]
        pids = _descendants(ours) + ours
        _kill(pids, signal.SIGKILL)
        _wait_bool(lambda: not any(procs.alive(pid) for pid in pids), 5.0)
        for task in filter(None, shims):  # what containerd would have cleaned up after them
            address, namespace, cid = task
            digest = hashlib.sha256(f"{address}/{namespace}/{cid}".encode()).hexdigest()
            Path(SHIM_SOCKETS, digest).unlink(missing_ok=True)
            for cgroup in Path("/sys/fs/cgroup").glob(f"*/docker/{cid}"):
                with contextlib.suppress(OSError):  # best effort: busy or gone already
                    cgroup.rmdir()

    def purge(self) -> None:
        """Stop it and delete `root` (unmounting what dockerd left mounted there first)."""
        self.stop()
        remove_root(self.root)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # \040 is a space
        if point == str(root) or point.startswith(prefix):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_root(root: Path) -> None:
    """Unmount everything under `root` (deepest first) and delete it; refuse if a mount stays."""
    for point in _mounts_under(root):
        subprocess.run(["umount", "-l", point], capture_output=True)
    if left := _mounts_under(root):
        raise EngineError(f"cannot remove {root}: still mounted there: {left}")
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        raise EngineError(f"cannot remove {root}; delete it by hand")


def _argv(engine: Engine) -> list[str]:
    return [shutil.which(DOCKERD) or DOCKERD,
            "--config-file", str(engine.root / "daemon.json"),
            "--data-root", str(engine.data_root), "--exec-root", str(engine.exec_root),
            "--pidfile", str(engine.pidfile), "--host", engine.socket,
            "--storage-driver", engine.storage_driver,
            "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false",
            "--label", f"org.shoal.engine={engine.name}"]


def _drivers(root: Path, forced: str | None) -> list[str]:
    if forced:
        return [forced]
    for driver in ("overlay2", "vfs"):  # a data root keeps the driver it was made with
        if (root / "data" / "image" / driver).is_dir():
            return [driver]
    return ["overlay2", "vfs"]


def _log_errors(path: Path, lines: int = 4) -> str:
    """The last error lines of the latest run in dockerd's log (else its last lines)."""
    try:
        run = path.read_text(errors="replace").rsplit("---- ", 1)[-1].splitlines()
    except OSError:
        return ""
    errors = [line for line in run if "level=error" in line or "level=fatal" in line
              or line.startswith("failed to start daemon")]
    return "".join(f"\n    {line}" for line in (errors or run)[-lines:])


def _check_paths(root: Path) -> None:
    longest = root / "x" / "containerd" / "containerd.sock.ttrpc"
    if len(str(longest)) > MAX_SOCKET_PATH:
        raise EngineError(f"engine root {root} is too long for containerd's unix sockets "
                          f"({longest} is over {MAX_SOCKET_PATH} bytes); use a shorter one")
    if shutil.which(DOCKERD) is None:
        raise EngineError("dockerd not found on PATH; install Debian's docker.io "
                          "(`make sysdeps`, or `apt-get install docker.io containerd runc`)")


def _spawn(engine: Engine) -> subprocess.Popen[bytes]:
    engine.socket_path.unlink(missing_ok=True)
    with open(engine.log_file, "ab") as log:
        log.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} starting dockerd "
                  f"({engine.storage_driver})\n".encode())
        log.flush()
        proc = subprocess.Popen(_argv(engine), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    procs.track(proc)
    return proc


def _wait_ready(engine: Engine, timeout: float) -> bool:
    """Wait for GET /_ping to answer; False as soon as dockerd exits or after `timeout`."""
    _wait_bool(lambda: ping(engine.socket) or not procs.alive(engine.pid), timeout)
    return procs.alive(engine.pid) and ping(engine.socket)


def start_engine(root_dir: Path, name: str, *, storage_driver: str | None = None,
                 timeout: float = START_TIMEOUT) -> Engine:
    """Start a private dockerd under `root_dir` and wait until GET /_ping answers."""
    root = Path(root_dir).absolute()
    _check_paths(root)
    if (old := attach_engine(root, name)) is not None:
        raise EngineError(f"engine {name}: dockerd {old.pid} already runs on {root}; "
                          "stop it first")
    root.mkdir(parents=True, exist_ok=True)
    (root / "daemon.json").write_text("{}\n")
    errors = []
    for driver in _drivers(root, storage_driver or os.environ.get(DRIVER_ENV)):
        engine = Engine(root=root, name=name, pid=0, storage_driver=driver)
        proc = _spawn(engine)
        engine.pid = proc.pid
        if _wait_ready(engine, timeout):
            return engine
        how = "exited" if not procs.alive(engine.pid) else f"gave no answer in {timeout:.0f} s"
        engine.stop(timeout=5.0, keep_containers=True)
        errors.append(f"with --storage-driver {driver} it {how}:{_log_errors(engine.log_file)}")
    raise EngineError(f"engine {name}: dockerd did not start (log {engine.log_file}):\n  "
                      + "\n  ".join(errors))


def purge_engine(root_dir: Path, name: str = "", pid: int | None = None) -> None:
    """Stop the dockerd of `root_dir` (its pidfile's, or `pid`) and delete `root_dir`."""
    root = Path(root_dir).absolute()
    engine = attach_engine(root, name) or Engine(root, name or root.name, pid or 0, "")
    engine.purge()


def attach_engine(root_dir: Path, name: str = "") -> Engine | None:
    """The dockerd running on `root_dir` (from its pidfile), or None when none runs."""
    root = Path(root_dir).absolute()
    try:
        pid = int((root / "dockerd.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    driver = next((d for d in ("overlay2", "vfs")
                   if (root / "data" / "image" / d).is_dir()), "")
    engine = Engine(root=root, name=name or root.name, pid=pid, storage_driver=driver)
    return engine if engine.running() else None


def _wait_bool(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    return procs.wait_for(check, timeout, interval) is not None
