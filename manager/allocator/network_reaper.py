"""Removing a network whose tasks are still stopping, and the controller that finishes it.

Docker lets `docker network rm` remove a network as soon as every task on it is leaving
(its desired state is past RUNNING, or its service was removed); `docker stack rm` relies on
it: it removes a stack's services and then, at once, their networks. Shoal does the same
without handing the network's subnet and VNI out while a stopping task still uses them:
the API marks such a network `pending_delete` (gone from the API at once, its name free
for a new network) and the network reaper (leader only) deletes it from the store once no
task holds an address on it any more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from manager.allocator.networks import holds_address
from manager.manager import Manager
from manager.orchestrator.controller import write_groups
from manager.runtime import Controller
from manager.store.memory import Event, StoreView
from proto import objects_pb2 as pb
from proto import store_pb2

RETRY = 0.5  # seconds before a pass after a delete that lost a race


def on_network(task: pb.Task, network_id: str) -> bool:
    """The task holds an address on the network."""
    return holds_address(task) and any(a.network_id == network_id for a in task.networks)


def leaving(task: pb.Task, services: Mapping[str, pb.Service]) -> bool:
    """The task is on its way out: stopped by desire, or its service was removed (the task
    reaper marks those REMOVE soon after). A container's attachment has no service."""
    if task.desired_state > pb.RUNNING:
        return True
    if not task.service_id:
        return False
    service = services.get(task.service_id)
    return service is None or service.pending_delete


def staying_tasks(network_id: str, tasks: Iterable[pb.Task],
                  services: Mapping[str, pb.Service]) -> list[pb.Task]:
    """The tasks on the network that keep it in use (they block its removal)."""
    return [t for t in tasks if on_network(t, network_id) and not leaving(t, services)]


def unused(networks: Iterable[pb.Network], tasks: Sequence[pb.Task]) -> list[pb.Network]:
    """The removed networks no task holds an address on any more: to delete (pure)."""
    return [n for n in networks
            if n.pending_delete and not any(on_network(t, n.id) for t in tasks)]


def relevant(event: Event) -> bool:
    """A network was marked removed, or a task let go of its addresses."""
    if event.table == "network":
        return event.new is not None and event.new.pending_delete
    if event.table == "task":
        old, new = event.old, event.new
        return old is not None and holds_address(old) and \
            (new is None or not holds_address(new))
    return False


class NetworkReaper(Controller):
    name = "network reaper"

    def __init__(self, manager: Manager) -> None:
        self.mgr = manager

    def relevant(self, event: Event) -> bool:
        return relevant(event)

    async def run(self, view: StoreView) -> float | None:
        gone = unused(view.list(pb.Network), view.list(pb.Task))
        if gone and await write_groups(self.mgr, [[(store_pb2.DELETE, n)] for n in gone]):
            return RETRY
        return None
