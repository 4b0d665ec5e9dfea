"""Leader-only reconciliation of manager roles: promotions, demotions (Raft membership) and
each manager's leader flag and reachability as the nodes API shows them."""

from __future__ import annotations

import logging
import threading
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


def has_role_work(node: pb.Node) -> bool:
    """A manager, or a node to promote or demote: what the role manager looks after."""
    return bool(node.role == pb.MANAGER or node.spec.desired_role == pb.MANAGER or
                node.manager_status.raft_addr)


def concerns_roles(event: Event) -> bool:
    """A change to a node with role work: not the thousands of workers' own writes (each
    pass reads every node)."""
    if event.table != "node":
        return False
    return any(has_role_work(n) for n in (event.old, event.new) if n is not None)


class RoleController(Controller):
    """Each pass looks at the managers and the nodes whose role is to change: every node on
    a term's first pass, then those it found concerned and those changed since (scanning
    every node each second was 5 % of a 5,000-node leader)."""

    name = "role manager"

    def __init__(self, manager: Manager) -> None:
        self.mgr = manager
        self._lock = threading.Lock()  # relevant() marks on the Raft thread
        self._marked: set[str] | None = None  # None: every node
        self._watched: set[str] = set()

    def relevant(self, event: Event) -> bool:
        if not concerns_roles(event):
            return False
        with self._lock:
            if self._marked is not None:
                self._marked.update(n.id for n in (event.old, event.new) if n is not None)
        return True

    def begin(self) -> None:
        with self._lock:
            self._marked = None

    def concerned(self, view: StoreView, marked: set[str] | None) -> list[pb.Node]:
        """The nodes a pass looks at (and remembers for the next ones)."""
        if marked is None:
            nodes = view.list(pb.Node)
        else:
            found = (view.get(pb.Node, i) for i in sorted(self._watched | marked))
            nodes = [n for n in found if n is not None]
        nodes = [n for n in nodes if has_role_work(n)]
        self._watched = {n.id for n in nodes}
        return nodes

    async def run(self, view: StoreView) -> float | None:
        with self._lock:
            marked, self._marked = self._marked, set()
        # The view after the marks: every change marked so far is in it.
        nodes = self.concerned(self.mgr.view(), marked)
        replica = self.mgr.replica
        leader = replica.leader_addr()
        for node in nodes:
            if not node.manager_status.raft_addr and not wants_promotion(node):
                continue
            await self.mgr.modify(
                pb.Node, node.id,
                lambda n: sync_manager_status(n, leader, replica.is_connected) | promote(n),
                fenced=True)
        fresh = self.mgr.view()
        for node in demotions([n for n in (fresh.get(pb.Node, x.id) for x in nodes)
                               if n is not None]):
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
