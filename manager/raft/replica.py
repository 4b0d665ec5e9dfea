"""The Raft-replicated store: pysyncobj carries serialized StoreBatch entries between managers.

pysyncobj is imported only in this package. Its tick thread applies entries; the asyncio side
proposes through `propose()` and learns the outcome through a future.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

from manager.errors import ManagerError, Unavailable
from manager.store.memory import ApplyResult, MemoryStore
from proto import store_pb2

log = logging.getLogger(__name__)

# Failures after which the same batch may be proposed again: nothing was applied.
_RETRYABLE = {FAIL_REASON.QUEUE_FULL, FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER,
              FAIL_REASON.LEADER_CHANGED, FAIL_REASON.DISCARDED}


@dataclass(frozen=True)
class RaftTiming:
    """pysyncobj sends entries on its append-entries timer (batching on), so a lone commit
    waits ~one period (22 ms p50 measured, bench/store_bench.py). Batching off gives 0.6 ms
    but pysyncobj 0.3.17 then logs log-divergence warnings under concurrent writes, so it
    stays on.

    A follower stands for election 0.5-1.0 s after the leader's last append-entries (25-50
    periods, so a busy leader is not deposed by a late tick): a SIGKILLed leader's
    successor acknowledges a write 0.6-0.9 s after the kill (bench/failover.py; 0.8-1.6 s
    gave p50 1.1-1.4 s, and 2.8 s when the two followers split the vote)."""

    append_entries_period: float = 0.02
    auto_tick_period: float = 0.005
    election_min: float = 0.5
    election_max: float = 1.0
    connection_retry: float = 0.5
    connection_timeout: float = 2.0


class _StoreConsumer(SyncObjConsumer):  # type: ignore[misc]
    """Binds the store to pysyncobj: the one replicated method, and protobuf dumps."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self._store = store

    @replicated  # type: ignore[misc]
    def apply_batch(self, data: bytes) -> ApplyResult:
        return self._store.apply(store_pb2.StoreBatch.FromString(data))

    def _serialize(self) -> bytes:
        return self._store.snapshot()

    def _deserialize(self, data: bytes) -> None:
        self._store.restore(data)


class RaftReplica:
    def __init__(self, store: MemoryStore, self_addr: str, peers: list[str], secret: str,
                 state_dir: str, timing: RaftTiming | None = None,
                 on_leader_change: Callable[[], None] | None = None) -> None:
        self.store = store
        self.self_addr = self_addr
        os.makedirs(state_dir, exist_ok=True)
        t = timing or RaftTiming()
        conf = SyncObjConf(
            password=secret,
            dynamicMembershipChange=True,
            journalFile=os.path.join(state_dir, "journal.bin"),
            fullDumpFile=os.path.join(state_dir, "dump.bin"),
            appendEntriesPeriod=t.append_entries_period,
            autoTickPeriod=t.auto_tick_period,
            raftMinTimeout=t.election_min,
            raftMaxTimeout=t.election_max,
            connectionRetryTime=t.connection_retry,
            connectionTimeout=t.connection_timeout,
            # Log compaction in a forked child froze the gRPC process for up to a minute and
            # sometimes aborted the child (gRPC is not fork-safe); dump in-thread instead.
            useFork=False,
            onStateChanged=(lambda _old, _new: on_leader_change()) if on_leader_change else None,
        )
        self._consumer = _StoreConsumer(store)
        others = [p for p in peers if p != self_addr]
        self._sync = SyncObj(self_addr, others, conf, consumers=[self._consumer])

    # -- state --

    def is_leader(self) -> bool:
        return bool(self._sync._isLeader())

    def leader_addr(self) -> str | None:
        leader = self._sync._getLeader()
        return None if leader is None else str(leader.address)

    def members(self) -> list[str]:
        others = [str(n.address) for n in self._sync.otherNodes]
        return sorted([self.self_addr, *others])

    def is_connected(self, addr: str) -> bool:
        if addr == self.self_addr:
            return True
        for node in self._sync.otherNodes:
            if node.address == addr:
                return bool(self._sync.isNodeConnected(node))
        return False

    def status(self) -> dict[str, Any]:
        return dict(self._sync.getStatus())

    def ready(self) -> bool:
        return bool(self._sync.isReady())

    # -- writes --

    async def propose(self, batch: store_pb2.StoreBatch, timeout: float = 10.0) -> int:
        """Commit `batch` through Raft (forwarded to the leader from a follower).

        Returns the store version it produced; raises the store's error when a check failed.
        """
        if not batch.timestamp_ns:
            batch.timestamp_ns = time.time_ns()
        data = batch.SerializeToString()
        deadline = time.monotonic() + timeout
        while True:
            result, reason = await self._submit(
                lambda cb: self._consumer.apply_batch(data, callback=cb))
            if reason == FAIL_REASON.SUCCESS:
                assert isinstance(result, ApplyResult)
                if result.error is not None:
                    raise result.error
                return result.version
            if reason not in _RETRYABLE or time.monotonic() > deadline:
                raise Unavailable(_no_commit_message(reason))
            await asyncio.sleep(0.05)

    async def add_member(self, addr: str, timeout: float = 10.0) -> None:
        await self._membership(self._sync.addNodeToCluster, addr, timeout)

    async def remove_member(self, addr: str, timeout: float = 10.0) -> None:
        await self._membership(self._sync.removeNodeFromCluster, addr, timeout)

    async def _membership(self, change: Callable[..., None], addr: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            _, reason = await self._submit(lambda cb: change(addr, callback=cb))
            if reason == FAIL_REASON.SUCCESS:
                return
            # REQUEST_DENIED: another membership change is still being committed.
            if time.monotonic() > deadline:
                raise Unavailable(f"Raft membership change for {addr} failed: "
                                  f"{_no_commit_message(reason)}")
            await asyncio.sleep(0.1)

    async def _submit(self, start: Callable[[Callable[[Any, int], None]], None]) -> tuple[Any, int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, int]] = loop.create_future()

        def done(result: Any, reason: int) -> None:
            loop.call_soon_threadsafe(_settle, future, (result, reason))

        start(done)
        return await future

    def transfer_leadership(self) -> None:
        self._sync.transferLeadership()

    def close(self) -> None:
        self._sync.destroy_synchronous()


def _settle(future: asyncio.Future[tuple[Any, int]], value: tuple[Any, int]) -> None:
    if not future.done():
        future.set_result(value)


def _no_commit_message(reason: int) -> str:
    names = {v: k for k, v in vars(FAIL_REASON).items() if isinstance(v, int)}
    return (f"the change was not committed ({names.get(reason, reason)}): the managers have "
            "no leader or no quorum; check `shoal node ls` on a manager")


__all__ = ["RaftReplica", "RaftTiming", "ManagerError"]
