"""Leader-only reconciliation of manager roles: promotions, demotions (Raft membership) and
each manager's leader flag and reachability as the nodes API shows them."""

from __future__ import annotations

import logging
from collections.abc import Callable

from manager.manager import Manager
from manager.runtime import Controller
from manager.store.memory import Event, StoreView
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

RAFT_RECHECK = 1.0  # seconds between looks at the managers' Raft connectivity


def sync_manager_status(node: pb.Node, leader_raft: str | None,
                        connected: Callable[[str], bool]) -> bool:
    """Set a member's leader flag and reachability from what Raft says now; True if changed."""
    if node.role != pb.MANAGER:
        # A worker has no manager status; one left by a stale write (a former manager's
        # late join) would show it as a manager, even as a second leader, in `node ls`.
        if node.HasField("manager_status"):
            node.ClearField("manager_status")
            return True
        return False
    status = node.manager_status
    if not status.raft_addr:
        return False
    leader = status.raft_addr == leader_raft
    reach = pb.REACHABLE if connected(status.raft_addr) else pb.UNREACHABLE
    if status.leader == leader and status.reachability == reach:
        return False
    status.leader = leader
    status.reachability = reach
    return True


def wants_promotion(node: pb.Node) -> bool:
    return node.spec.desired_role == pb.MANAGER and node.role == pb.WORKER


def promote(node: pb.Node) -> bool:
    """A promoted node gets the manager role; it then renews its certificate and joins Raft."""
    if wants_promotion(node):
        node.role = pb.MANAGER
        return True
    return False


def demotions(nodes: list[pb.Node]) -> list[pb.Node]:
    return [n for n in nodes if n.spec.desired_role == pb.WORKER and n.role == pb.MANAGER]


def concerns_roles(event: Event) -> bool:
    """A manager, or a node promoted or demoted: not the thousands of workers' own writes
    (each pass reads every node)."""
    if event.table != "node":
        return False
    return any(n.role == pb.MANAGER or n.spec.desired_role == pb.MANAGER or
               n.manager_status.raft_addr for n in (event.old, event.new) if n is not None)


class RoleController(Controller):
    name = "role manager"

    def __init__(self, manager: Manager) -> None:
        self.mgr = manager

    def relevant(self, event: Event) -> bool:
        return concerns_roles(event)

    async def run(self, view: StoreView) -> float | None:
        replica = self.mgr.replica
        leader = replica.leader_addr()
        for node in view.list(pb.Node):
            if not node.manager_status.raft_addr and not wants_promotion(node):
                continue
            await self.mgr.modify(
                pb.Node, node.id,
                lambda n: sync_manager_status(n, leader, replica.is_connected) | promote(n),
                fenced=True)
        for node in demotions(self.mgr.view().list(pb.Node)):
            await self._demote(node)
        return RAFT_RECHECK  # Raft connectivity changes without a store event

    async def _demote(self, node: pb.Node) -> None:
        raft_addr = node.manager_status.raft_addr
        if raft_addr and raft_addr == self.mgr.replica.self_addr:
            # The leader can't take itself out of Raft; hand over and let the next one do it.
            log.info("demoting the leader %s: transferring leadership first", node.id)
            self.mgr.replica.transfer_leadership()
            return
        if raft_addr and raft_addr in self.mgr.replica.members():
            await self.mgr.replica.remove_member(raft_addr)
        await self.mgr.modify(pb.Node, node.id, _drop_manager, fenced=True)


def _drop_manager(node: pb.Node) -> bool:
    node.role = pb.WORKER
    node.ClearField("manager_status")
    return True
