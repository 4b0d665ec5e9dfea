"""A private Docker Engine (dockerd) for labs and tests (the few Engine API calls they need
are in engine_api.py).

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
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shoal import procs
from shoal.engine_api import EngineError, ping, remove_containers

DOCKERD = "dockerd"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the NUL
DRIVER_ENV = "SHOAL_ENGINE_STORAGE_DRIVER"  # force a storage driver (overlay2, vfs, ...)
SHIM_SOCKETS = "/run/containerd/s"  # containerd 1.6 puts shim sockets here, hashed per task


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
