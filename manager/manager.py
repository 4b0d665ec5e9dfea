"""The manager role of a node: the replicated store, the servicers, and the controllers that
run only on the Raft leader."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from manager.errors import NotFound, OutOfSequence, Unavailable
from manager.raft.replica import RaftReplica
from manager.store.memory import MemoryStore, wrap
from proto import objects_pb2 as pb
from proto import store_pb2

log = logging.getLogger(__name__)

LEADER_TICK = 0.25


@dataclass(frozen=True)
class ManagerAddrs:
    addr: str  # cluster gRPC address (mTLS), IP:PORT
    raft_addr: str


class Manager:
    def __init__(self, node_id: str, addrs: ManagerAddrs, store: MemoryStore,
                 replica: RaftReplica) -> None:
        self.node_id = node_id
        self.addrs = addrs
        self.store = store
        self.replica = replica
        self._leader_ticks: list[Callable[[bool], object]] = []

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
        for node in self.store.list(pb.Node):
            if node.manager_status.raft_addr == raft and raft:
                return str(node.manager_status.addr)
        return None

    # -- writes --

    async def write(self, *actions: tuple[int, object]) -> int:
        batch = store_pb2.StoreBatch()
        for kind, obj in actions:
            batch.actions.append(store_pb2.StoreAction(kind=kind, object=wrap(obj)))  # type: ignore[arg-type]
        return await self.replica.propose(batch)

    async def put(self, *objs: object) -> int:
        return await self.write(*[(store_pb2.PUT, o) for o in objs])

    async def update(self, obj: object) -> int:
        return await self.write((store_pb2.UPDATE, obj))

    async def modify(self, cls: type, obj_id: str, change: Callable[[Any], bool]) -> bool:
        """Read-modify-write one object with a version check, retrying when another writer
        got there first. `change` mutates the object and says whether there is anything to
        write. Returns False if the object is gone or unchanged."""
        for _ in range(20):
            obj = self.store.get(cls, obj_id)
            if obj is None or not change(obj):
                return False
            try:
                await self.update(obj)
                return True
            except OutOfSequence:
                continue
        raise Unavailable(f"{cls.__name__} {obj_id} keeps changing; the write gave up")

    # -- leader-only controllers --

    def on_leader_tick(self, tick: Callable[[bool], object]) -> None:
        """Register `tick(became_leader)`; called every LEADER_TICK seconds on the leader."""
        self._leader_ticks.append(tick)

    async def run(self) -> None:
        was_leader = False
        while True:
            # Controllers start once the cluster object exists (swarm init writes it just
            # after this node became the leader).
            leader = self.replica.is_leader() and bool(self.store.list_view(pb.Cluster))
            if leader:
                for tick in self._leader_ticks:
                    try:
                        result = tick(not was_leader)
                        if asyncio.iscoroutine(result):
                            await result
                    except Exception:  # a failing controller must not stop the others
                        log.exception("leader controller failed")
            was_leader = leader
            await asyncio.sleep(LEADER_TICK)
