"""The manager role of a node: the replicated store, the servicers, and the controllers that
run only on the Raft leader."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from manager.changes import ChangeLog
from manager.errors import (
    NO_LEADER,
    Fenced,
    ManagerError,
    NotFound,
    OutOfSequence,
    Unavailable,
)
from manager.metrics import ManagerInstruments
from manager.raft.replica import RaftReplica
from manager.store.memory import MemoryStore, StoreView, wrap
from proto import objects_pb2 as pb
from proto import store_pb2

log = logging.getLogger(__name__)

MODIFY_ATTEMPTS = 20
# Batches one writer keeps waiting for their commits at once: commits in flight go out
# together in Raft's sends (one after another, 50,000 tasks' status reports waited 16 s at
# p50 for their turn).
IN_FLIGHT = 8


@dataclass(frozen=True)
class ManagerAddrs:
    addr: str  # cluster gRPC address (mTLS), IP:PORT
    raft_addr: str


class Manager:
    def __init__(self, node_id: str, addrs: ManagerAddrs, store: MemoryStore,
                 replica: RaftReplica, metrics: ManagerInstruments | None = None) -> None:
        self.node_id = node_id
        self.metrics = metrics or ManagerInstruments.create()
        self.addrs = addrs
        self.store = store
        self.replica = replica
        # The leadership epoch this manager decides in while it leads (0: not leading);
        # set by the leader runtime once the epoch is committed.
        self.epoch = 0
        # The latest changes, for the API's event stream (`docker events`).
        self.changes = ChangeLog(store)

    # -- reads --

    def cluster(self) -> pb.Cluster:
        clusters = self.store.list(pb.Cluster)
        if not clusters:
            raise Unavailable("the cluster object is not replicated to this manager yet; retry")
        return clusters[0]  # type: ignore[no-any-return]

    def node(self, node_id: str) -> pb.Node:
        node = self.store.get(pb.Node, node_id)
        if node is None:
            raise NotFound(f"node {node_id} not found")
        return node  # type: ignore[no-any-return]

    def is_leader(self) -> bool:
        return self.replica.is_leader()

    def leader_addr(self) -> str | None:
        """Cluster (gRPC) address of the leader, from its Raft address."""
        raft = self.replica.leader_addr()
        for node in self.view().list(pb.Node):
            if node.manager_status.raft_addr == raft and raft:
                return str(node.manager_status.addr)
        return None

    def view(self) -> StoreView:
        return self.store.view()

    def require_quorum(self) -> None:
        """Refuse at once on a manager cut off from the majority: its state may be stale
        and nothing it proposes can commit."""
        if not self.replica.ready():
            raise Unavailable(f"manager {self.node_id} is still catching up with the "
                              "managers' log; retry in a moment")
        if not self.replica.has_quorum():
            leader = self.leader_addr()
            where = f"the last known leader is {leader}" if leader else "no leader is known"
            raise Unavailable(f"{NO_LEADER} Manager {self.node_id} is not connected to a "
                              "majority of the "
                              f"managers ({where}); retry, or use another manager. If most "
                              "managers are lost for good, recover with `docker swarm init "
                              "--force-new-cluster` on a surviving one")

    # -- writes: the one helper, and one retry rule (version races, in `modify`) --

    async def write(self, *actions: tuple[int, object], fenced: bool = False) -> int:
        """Commit the actions in one batch. `fenced`: a decision of this leadership term,
        which the store refuses once another leader took over."""
        batch = store_pb2.StoreBatch()
        if fenced:
            if not self.epoch:
                raise Fenced(f"manager {self.node_id} is not leading: its decision is dropped")
            batch.epoch = self.epoch
        for kind, obj in actions:
            batch.actions.append(store_pb2.StoreAction(kind=kind, object=wrap(obj)))  # type: ignore[arg-type]
        return await self._propose(batch)

    async def _propose(self, batch: store_pb2.StoreBatch) -> int:
        """Propose through Raft, timing it (shoal_store_write_duration_seconds): committed,
        refused by the store's rules (versions, names, the epoch) or failed (no quorum)."""
        start, outcome = time.monotonic(), "failed"
        try:
            version = await self.replica.propose(batch)
            outcome = "committed"
            return version
        except Unavailable:
            raise
        except ManagerError:
            outcome = "refused"
            raise
        finally:
            self.metrics.store_write_seconds.labels(outcome).observe(time.monotonic() - start)

    async def put(self, *objs: object) -> int:
        return await self.write(*[(store_pb2.PUT, o) for o in objs])

    async def update(self, obj: object, fenced: bool = False) -> int:
        return await self.write((store_pb2.UPDATE, obj), fenced=fenced)

    async def modify(self, cls: type, obj_id: str, change: Callable[[Any], bool],
                     fenced: bool = False) -> bool:
        """Read-modify-write one object with a version check, retrying when another writer
        got there first. `change` mutates the object and says whether there is anything to
        write. Returns False if the object is gone or unchanged."""
        for _ in range(MODIFY_ATTEMPTS):
            obj = self.store.get(cls, obj_id)
            if obj is None or not change(obj):
                return False
            try:
                await self.update(obj, fenced=fenced)
                return True
            except OutOfSequence:
                continue
        raise Unavailable(f"{cls.__name__} {obj_id} keeps changing; the write gave up")

    async def open_term(self) -> int:
        """As the new leader, commit a new leadership epoch (the Raft term): decisions of
        any earlier leader are refused from then on. Returns the epoch."""
        term = self.replica.term()
        await self._propose(store_pb2.StoreBatch(new_epoch=term))
        self.epoch = term
        return term
