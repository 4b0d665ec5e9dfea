"""What a node reports about itself: hostname, platform, resources, engine."""

from __future__ import annotations

import ipaddress
import logging
import os
import platform
import socket
import struct

from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

VERSION = "0.1.0"


def _memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError as err:  # the node still works; the scheduler then sees no memory here
        log.warning("cannot read the node's memory from /proc/meminfo, reporting 0: %s", err)
    return 0


def host_routes(path: str = "/proc/net/route") -> list[pb.HostRoute]:
    """The host's IPv4 routes but the default one: a manager refuses an overlay subnet that
    overlaps one (traffic to it would leave through the overlay or never reach it)."""
    routes = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()[1:]
    except OSError as err:
        log.warning("cannot read the host's routes from %s: %s", path, err)
        return []
    for line in lines:
        cols = line.split()
        if len(cols) < 8:
            continue
        dst, mask = (socket.inet_ntoa(struct.pack("<I", int(c, 16))) for c in (cols[1], cols[7]))
        net = ipaddress.IPv4Network(f"{dst}/{mask}", strict=False)
        if net.prefixlen:
            routes.append(pb.HostRoute(dst=str(net), dev=cols[0]))
    return routes


def describe(hostname: str, engine_version: str = "", engine_labels: dict[str, str] | None = None
             ) -> pb.NodeDescription:
    desc = pb.NodeDescription(hostname=hostname)
    desc.platform.architecture = platform.machine()
    desc.platform.os = platform.system().lower()
    desc.resources.nano_cpus = (os.cpu_count() or 1) * 1_000_000_000
    desc.resources.memory_bytes = _memory_bytes()
    desc.engine.engine_version = engine_version or VERSION
    desc.engine.labels.update(engine_labels or {})
    desc.routes.extend(host_routes())
    return desc
