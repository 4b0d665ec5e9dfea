"""What a node reports about itself: hostname, platform, resources, engine."""

from __future__ import annotations

import logging
import os
import platform

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


def describe(hostname: str, engine_version: str = "", engine_labels: dict[str, str] | None = None
             ) -> pb.NodeDescription:
    desc = pb.NodeDescription(hostname=hostname)
    desc.platform.architecture = platform.machine()
    desc.platform.os = platform.system().lower()
    desc.resources.nano_cpus = (os.cpu_count() or 1) * 1_000_000_000
    desc.resources.memory_bytes = _memory_bytes()
    desc.engine.engine_version = engine_version or VERSION
    desc.engine.labels.update(engine_labels or {})
    return desc
