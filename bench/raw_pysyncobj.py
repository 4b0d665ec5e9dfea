"""Replica processes for the store benchmark: raw pysyncobj, and our RaftReplica + MemoryStore.

Each replica runs in an OS process of its own (multiprocessing, spawn) with its own pysyncobj
tick thread, and obeys commands from the benchmark over a pipe: `status`, `run` (a writer
workload, executed only on the leader) and `stop`.

This is the one module outside `manager/raft/` that imports pysyncobj: the raw baseline has to
drive a plain `SyncObj`. Its `SyncObjConf` mirrors the one `RaftReplica` builds (same timings
from `RaftTiming`, password, journal and dump files, dynamic membership); `conf_summary` lets
the benchmark check that the two really match.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

from manager.raft.replica import DEFAULT_SNAPSHOT_INTERVAL, RaftReplica, RaftTiming
from manager.store.memory import MemoryStore, wrap
from proto import objects_pb2 as pb
from proto import store_pb2

WAIT = 10.0  # longest wait for one commit, seconds
_COMPARED = ("appendEntriesPeriod", "autoTickPeriod", "raftMinTimeout", "raftMaxTimeout",
             "connectionRetryTime", "connectionTimeout", "dynamicMembershipChange",
             "appendEntriesUseBatch", "commandsQueueSize", "logCompactionMinEntries")


def raw_conf(state_dir: str, secret: str, timing: RaftTiming | None = None,
             batch: bool = True) -> SyncObjConf:
    """The SyncObjConf RaftReplica uses, for a plain SyncObj (`batch`: pysyncobj's
    appendEntriesUseBatch, which RaftReplica leaves on)."""
    t = timing or RaftTiming()
    return SyncObjConf(
        password=secret, dynamicMembershipChange=True, appendEntriesUseBatch=batch,
        journalFile=os.path.join(state_dir, "journal.bin"),
        fullDumpFile=os.path.join(state_dir, "dump.bin"),
        appendEntriesPeriod=t.append_entries_period, autoTickPeriod=t.auto_tick_period,
        raftMinTimeout=t.election_min, raftMaxTimeout=t.election_max,
        connectionRetryTime=t.connection_retry, connectionTimeout=t.connection_timeout,
        logCompactionMinEntries=DEFAULT_SNAPSHOT_INTERVAL)


def conf_summary(conf: SyncObjConf) -> dict[str, Any]:
    out = {name: getattr(conf, name) for name in _COMPARED}
    for name in ("password", "journalFile", "fullDumpFile"):
        out[name] = getattr(conf, name) is not None
    return out


def bench_node(node_id: str = "n" * 25) -> pb.Node:
    """A manager node as the store holds it (the object a status or spec update rewrites)."""
    node = pb.Node(id=node_id, role=pb.MANAGER, cert_not_after_ns=1_900_000_000_000_000_000)
    node.spec.annotations.name = "m1"
    node.spec.annotations.labels.update({"zone": "lab-a", "bench": "0"})
    node.spec.desired_role = pb.MANAGER
    desc = node.description
    desc.hostname = "m1"
    desc.platform.architecture, desc.platform.os = "x86_64", "linux"
    desc.resources.nano_cpus, desc.resources.memory_bytes = 2_000_000_000, 25_275_809_792
    desc.engine.engine_version = "20.10.24+dfsg1"
    desc.engine.labels["com.example.storage"] = "ssd"
    node.status.state, node.status.addr = pb.NODE_READY, "198.18.83.2"
    node.manager_status.addr, node.manager_status.raft_addr = "198.18.83.2:2377", "198.18.83.2:4242"
    node.manager_status.leader, node.manager_status.reachability = True, pb.REACHABLE
    node.meta.version.index = 12345
    return node


def node_batch(node: pb.Node, i: int) -> store_pb2.StoreBatch:
    node.spec.annotations.labels["bench"] = str(i)
    batch = store_pb2.StoreBatch(request_id=f"bench-{i:08d}")
    batch.actions.append(store_pb2.StoreAction(kind=store_pb2.PUT, object=wrap(node)))
    return batch


def node_update_size() -> int:
    """Bytes of one serialized Node update, as RaftReplica proposes it (timestamp set)."""
    batch = node_batch(bench_node(), 99_999)
    batch.timestamp_ns = time.time_ns()
    return len(batch.SerializeToString())


Stats = dict[str, Any]  # {"latencies": [seconds], "elapsed": seconds}


class _RawStore(SyncObj):  # type: ignore[misc]
    def __init__(self, self_addr: str, others: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_addr, others, conf)
        self._count = 0
        self._last = b""

    @replicated  # type: ignore[misc]
    def put(self, payload: bytes) -> int:
        self._count += 1
        self._last = payload
        return self._count


class RawReplica:
    """A plain SyncObj; the writer waits for callbacks with threading primitives."""

    batch = True

    def __init__(self, self_addr: str, peers: list[str], secret: str, state_dir: str) -> None:
        os.makedirs(state_dir, exist_ok=True)
        others = [p for p in peers if p != self_addr]
        self._sync = _RawStore(self_addr, others,
                               raw_conf(state_dir, secret, batch=self.batch))
        self._payload = os.urandom(node_update_size())

    def status(self) -> dict[str, Any]:
        return {"leader": bool(self._sync._isLeader()), "ready": bool(self._sync.isReady()),
                "conf": conf_summary(self._sync._getConf())}

    def sequential(self, n: int) -> Stats:
        latencies: list[float] = []
        start = time.perf_counter()
        for _ in range(n):
            done, outcome = threading.Event(), list[int]()

            def callback(_result: Any, err: int, done: threading.Event = done,
                         outcome: list[int] = outcome) -> None:
                outcome.append(err)
                done.set()

            t0 = time.perf_counter()
            self._sync.put(self._payload, callback=callback)
            if not done.wait(WAIT):
                raise TimeoutError(f"raw pysyncobj: no commit within {WAIT} s")
            latencies.append(time.perf_counter() - t0)
            _check(outcome[0])
        return {"latencies": latencies, "elapsed": time.perf_counter() - start}

    def concurrent(self, n: int, k: int) -> Stats:
        slots, lock, finished = threading.BoundedSemaphore(k), threading.Lock(), threading.Event()
        latencies: list[float] = []
        errors: list[int] = []

        def callback_for(t0: float) -> Callable[[Any, int], None]:
            def done(_result: Any, err: int) -> None:
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if err != FAIL_REASON.SUCCESS:
                        errors.append(err)
                    if len(latencies) == n:
                        finished.set()
                slots.release()
            return done

        start = time.perf_counter()
        for _ in range(n):
            if not slots.acquire(timeout=WAIT):
                raise TimeoutError(f"raw pysyncobj: no commit within {WAIT} s")
            self._sync.put(self._payload, callback=callback_for(time.perf_counter()))
        if not finished.wait(WAIT):
            raise TimeoutError(f"raw pysyncobj: {n - len(latencies)} writes never committed")
        elapsed = time.perf_counter() - start
        if errors:
            _check(errors[0])
        return {"latencies": latencies, "elapsed": elapsed}

    def close(self) -> None:
        self._sync.destroy_synchronous()


class RawUnbatchedReplica(RawReplica):
    """Raw pysyncobj with appendEntriesUseBatch=False: an AppendEntries per command."""

    batch = False


class StoreReplica:
    """Our RaftReplica + MemoryStore; the writer awaits `propose` on an asyncio loop."""

    def __init__(self, self_addr: str, peers: list[str], secret: str, state_dir: str) -> None:
        self._replica = RaftReplica(MemoryStore(), self_addr, peers, secret, state_dir)
        self._node = bench_node()

    def status(self) -> dict[str, Any]:
        conf = self._replica._sync._getConf()
        return {"leader": self._replica.is_leader(), "ready": self._replica.ready(),
                "conf": conf_summary(conf)}

    def sequential(self, n: int) -> Stats:
        return asyncio.run(self._run(n, 1))

    def concurrent(self, n: int, k: int) -> Stats:
        return asyncio.run(self._run(n, k))

    async def _run(self, n: int, k: int) -> Stats:
        latencies: list[float] = []
        counter = itertools.count()

        async def writer() -> None:
            while (i := next(counter)) < n:
                t0 = time.perf_counter()
                await self._replica.propose(node_batch(self._node, i), timeout=WAIT)
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        async with asyncio.timeout(WAIT + n * 0.5):
            async with asyncio.TaskGroup() as group:
                for _ in range(k):
                    group.create_task(writer())
        return {"latencies": latencies, "elapsed": time.perf_counter() - start}

    def close(self) -> None:
        self._replica.close()


def _check(err: int) -> None:
    if err != FAIL_REASON.SUCCESS:
        names = {v: k for k, v in vars(FAIL_REASON).items() if isinstance(v, int)}
        raise RuntimeError(f"raw pysyncobj write failed: {names.get(err, err)}")


KINDS: dict[str, type[RawReplica] | type[StoreReplica]] = {
    "raw": RawReplica, "raw_nobatch": RawUnbatchedReplica, "store": StoreReplica}


def replica_main(kind: str, self_addr: str, peers: list[str], secret: str, state_dir: str,
                 conn: Connection) -> None:
    """A replica process: obey ("status",), ("run", mode, n, k) and ("stop",) until stopped."""
    replica = KINDS[kind](self_addr, peers, secret, state_dir)
    try:
        while True:
            try:
                command = conn.recv()
            except EOFError:  # the benchmark went away
                return
            if command[0] == "stop":
                return
            try:
                if command[0] == "status":
                    conn.send(("ok", replica.status()))
                else:
                    _, mode, n, k = command
                    stats = replica.sequential(n) if mode == "sequential" else \
                        replica.concurrent(n, k)
                    conn.send(("ok", stats))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        replica.close()
