"""Pure translations between a task and the Docker Engine API: the container to create, the
state an inspect reports, and timestamped log lines. No engine calls here."""

from __future__ import annotations

import calendar
import datetime
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

from docker.types import Healthcheck, Mount

from proto import objects_pb2 as pb
from worker.executor.base import (
    STDERR,
    STDOUT,
    ContainerState,
    stop_grace,
    swarm_labels,
    task_name,
)

_MOUNT_TYPES = {pb.Mount.BIND: "bind", pb.Mount.VOLUME: "volume", pb.Mount.TMPFS: "tmpfs"}


def mount(m: pb.Mount) -> Mount:
    kind = _MOUNT_TYPES[m.type]
    return Mount(target=m.target, source=None if kind == "tmpfs" else (m.source or None),
                 type=kind, read_only=m.read_only,
                 tmpfs_size=m.tmpfs_size_bytes or None, tmpfs_mode=m.tmpfs_mode or None,
                 labels=dict(m.volume_labels) or None, no_copy=m.volume_no_copy)


def healthcheck(hc: pb.HealthConfig) -> Healthcheck | None:
    """None inherits the image's health check; ["NONE"] disables it."""
    if not hc.test:
        return None
    return Healthcheck(test=list(hc.test), interval=hc.interval_ns or None,
                       timeout=hc.timeout_ns or None, retries=hc.retries or None,
                       start_period=hc.start_period_ns or None)


def extra_hosts(c: pb.ContainerSpec) -> list[str] | None:
    """Docker's "IP name [name...]" lines as the engine's "name:IP" entries."""
    out: list[str] = []
    for line in c.hosts:
        ip, *names = line.split()
        out.extend(f"{name}:{ip}" for name in names)
    return out or None


def resolv_params(c: pb.ContainerSpec, nameservers: Sequence[str] = ()) -> dict[str, Any]:
    """/etc/hosts and resolv.conf keywords of create_host_config. `nameservers` replaces the
    task's own (a sandbox keeps the node's resolver, which forwards to the task's)."""
    d = c.dns_config
    return {"extra_hosts": extra_hosts(c),
            "dns": list(nameservers or d.nameservers) or None,
            "dns_search": list(d.search) or None, "dns_opt": list(d.options) or None}


def host_config_params(task: pb.Task, sandbox_id: str = "",
                       files: Sequence[Mount] = ()) -> dict[str, Any]:
    """Keyword arguments of APIClient.create_host_config. A task on overlay networks joins
    its sandbox's namespace (and its /etc/hosts and resolv.conf); one on none has no network
    but its own resolv.conf. `files`: the bind mounts of its secrets and configs."""
    c, limits = task.spec.container, task.spec.resources.limits
    resolv = {} if sandbox_id else resolv_params(c)
    return resolv | {
        "network_mode": f"container:{sandbox_id}" if sandbox_id else "none",
        "mounts": [mount(m) for m in c.mounts] + list(files) or None,
        "init": True if c.init else None,
        "nano_cpus": limits.nano_cpus or None,
        "mem_limit": limits.memory_bytes or None,
    }


def create_params(task: pb.Task) -> dict[str, Any]:
    """Keyword arguments of APIClient.create_container (without host_config).

    Docker's semantics: ContainerSpec.command replaces the image's entrypoint, args its cmd.
    """
    c = task.spec.container
    return {
        "image": c.image,
        "name": task_name(task),
        "labels": swarm_labels(task),
        "entrypoint": list(c.command) or None,
        "command": list(c.args) or None,
        "environment": list(c.env) or None,
        "working_dir": c.dir or None,
        "user": c.user or None,
        "hostname": None if task.networks else (c.hostname or None),  # the sandbox's
        "tty": c.tty,
        "stop_signal": c.stop_signal or None,
        "stop_timeout": math.ceil(stop_grace(task)),
        "healthcheck": healthcheck(c.healthcheck),
        "use_config_proxy": False,
    }


def split_image(ref: str) -> tuple[str, str]:
    """(repository, tag or digest) to pull; the tag defaults to latest."""
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        return repo, digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:]
    return ref, "latest"


def state_of(info: dict[str, Any]) -> ContainerState:
    """A ContainerState from GET /containers/{id}/json."""
    state = info.get("State") or {}
    health = (state.get("Health") or {}).get("Status", "")
    error = state.get("Error") or ""
    if state.get("OOMKilled"):
        error = error or "out of memory (OOM killed)"
    return ContainerState(container_id=info.get("Id", ""), status=state.get("Status", ""),
                          exit_code=int(state.get("ExitCode") or 0), health=health,
                          pid=int(state.get("Pid") or 0), error=error)


def parse_timestamp(text: str) -> int:
    """RFC 3339 with nanoseconds (Docker's log timestamps) → ns since the epoch."""
    if text.endswith("Z"):
        base, _, frac = text[:-1].partition(".")
        seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
        return seconds * 1_000_000_000 + int((frac + "000000000")[:9])
    base, dot, rest = text.partition(".")
    if dot:  # offset zone: fromisoformat takes at most microseconds
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits):]
        text = f"{base}.{(digits + '000000')[:6]}{zone}"
    return int(datetime.datetime.fromisoformat(text).timestamp() * 1e9)


def split_log_line(line: bytes) -> tuple[int, bytes]:
    """A line of `logs?timestamps=1` → (timestamp_ns, the line without its timestamp)."""
    stamp, sep, rest = line.partition(b" ")
    try:
        return parse_timestamp(stamp.decode()), rest if sep else b""
    except ValueError:
        return time.time_ns(), line


class LineSplitter:
    """Frames of a stream → complete lines (a tty stream is not framed by line)."""

    def __init__(self) -> None:
        self._partial: dict[int, bytes] = {}

    def feed(self, stream: int, data: bytes) -> list[bytes]:
        buf = self._partial.get(stream, b"") + data
        *lines, self._partial[stream] = buf.split(b"\n")
        return [line + b"\n" for line in lines]

    def rest(self) -> list[tuple[int, bytes]]:
        left = [(s, b) for s, b in self._partial.items() if b]
        self._partial.clear()
        return left


Frame = tuple[int, bytes]  # (STDOUT or STDERR, data)


def frames(raw: Any, tty: bool) -> Iterator[Frame]:
    """(stream, data) from a logs response body: raw bytes with a tty, else frames of an
    8-byte header (stream, 0, 0, 0, big-endian length) and the data."""
    if tty:
        while chunk := raw.read1(65536):
            yield STDOUT, chunk
        return
    while len(header := raw.read(8)) == 8:
        length = int.from_bytes(header[4:8], "big")
        data = raw.read(length) if length else b""
        if len(data) < length:
            return
        yield (STDERR if header[0] == STDERR else STDOUT), data
