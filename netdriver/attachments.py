"""Containers started outside services that join an attachable network (Docker's
`docker network connect`).

Each is a task without a service, fixed to the node whose engine runs the container and
labelled with the container's ID: the allocator gives it an address, the dispatcher sends
it to its node like any task (so other nodes learn where the address lives), and the
node's data plane plumbs the container's own namespace instead of starting anything.
"""

from __future__ import annotations

from proto import objects_pb2 as pb

CONTAINER_LABEL = "com.shoal.network.attachment.container"


def is_attachment(task: pb.Task) -> bool:
    return not task.service_id and CONTAINER_LABEL in task.annotations.labels


def container_of(task: pb.Task) -> str:
    return str(task.annotations.labels.get(CONTAINER_LABEL, ""))
