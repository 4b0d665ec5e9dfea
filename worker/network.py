"""What the worker needs of the node's network data plane (netdriver/node implements it).

The worker hands it every assignment set's networks and peers, and around each task's
sandbox calls `attach` (before the task's own process starts: its interfaces, addresses,
routes, resolver and load-balancing rules must be in place by then) and `detach` (once the
task has ended, so its address can be given to another task).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from proto import cluster_pb2
from proto import objects_pb2 as pb


class NodeNetwork(Protocol):
    def update(self, message: cluster_pb2.AssignmentsMessage) -> None:
        """The desired state of every network this node is on (`message.networks`, `.peers`,
        `.data_path_port`; replaces the previous one)."""

    async def attach(self, key: str, netns_path: str,
                     attachments: Sequence[pb.NetworkAttachment]) -> None:
        """Plumb the namespace at `netns_path` into each attachment's network; return once
        in place. Idempotent (called again for a task adopted after a restart)."""

    async def detach(self, key: str) -> None:
        """Remove what `attach(key, ...)` made (nothing if it made nothing)."""
