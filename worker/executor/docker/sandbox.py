"""The sandbox of a task on overlay networks (pure parts: the pause image, create params).

dockerd creates a container's network namespace when it starts the container, so the
task's own container can't be plumbed before its process runs. A sandbox container (a
process that only sleeps, network `none`) is started first; the node's data plane plumbs
its namespace (`/proc/<pid>/ns/net`); then the task's container joins it with network mode
`container:<sandbox>`, so its process starts with the interfaces, routes and resolver
already there (Kubernetes' pause container).

The pause image is made here from the host's static busybox (Debian's busybox-static) and
imported into the engine when it is missing, so no registry is needed.
"""

from __future__ import annotations

import io
import os
import tarfile
from typing import Any

from proto import objects_pb2 as pb
from worker.executor.base import LABEL_NODE_ID, PermanentError, task_name
from worker.executor.docker.container import resolv_params

PAUSE_REPO = "shoal/pause"
PAUSE_TAG = "1"
PAUSE_IMAGE = f"{PAUSE_REPO}:{PAUSE_TAG}"
PAUSE_CMD = ["/bin/sleep", "2147483647"]
BUSYBOX = os.environ.get("SHOAL_BUSYBOX", "/bin/busybox")
LABEL_SANDBOX = "com.shoal.sandbox.task.id"
RESOLVER = "127.0.0.11"


def pause_image_tar(busybox: str = BUSYBOX) -> bytes:
    """A rootfs tarball with a static busybox and `sleep` (for `docker import`)."""
    try:
        with open(busybox, "rb") as f:
            binary = f.read()
    except OSError as err:
        raise PermanentError(f"cannot make the sandbox image {PAUSE_IMAGE}: {busybox}: "
                             f"{err.strerror}; install Debian's busybox-static") from err
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in ("bin", "etc", "tmp"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(binary), 0o755
        tar.addfile(info, io.BytesIO(binary))
        link = tarfile.TarInfo("bin/sleep")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
    return out.getvalue()


def sandbox_name(task: pb.Task) -> str:
    return f"{task_name(task)}.sandbox"


def sandbox_params(task: pb.Task) -> dict[str, Any]:
    """Keyword arguments of create_container (without host_config). The task's hostname
    goes here: a container joining another's network can't set one."""
    return {
        "image": PAUSE_IMAGE,
        "name": sandbox_name(task),
        "command": PAUSE_CMD,
        "hostname": task.spec.container.hostname or task.id[:12],
        "labels": {LABEL_SANDBOX: task.id, LABEL_NODE_ID: task.node_id},
        "stop_signal": "SIGKILL",  # sleep ignores SIGTERM as PID 1
        "use_config_proxy": False,
    }


def sandbox_host_config(task: pb.Task) -> dict[str, Any]:
    """The task's /etc/hosts lines and resolv.conf search and options go here (its
    container shares the sandbox's files); the nameserver is the node's resolver."""
    return resolv_params(task.spec.container, [RESOLVER]) | {"network_mode": "none"}
