"""A replica never runs on damaged Raft files, and a failure in Raft's thread stops it once
instead of being logged and retried every tick."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from manager.raft.guarded import RaftFailed
from manager.raft.journal import RaftStateDamaged
from manager.raft.replica import RaftReplica
from manager.store.memory import Event, MemoryStore, wrap
from proto import objects_pb2 as pb
from proto import store_pb2
from tests.integration.test_raft_compaction import free_port, wait_for


def create(node_id: str) -> store_pb2.StoreBatch:
    return store_pb2.StoreBatch(actions=[store_pb2.StoreAction(
        kind=store_pb2.CREATE, object=wrap(pb.Node(id=node_id)))])


async def test_a_snapshot_cut_short_is_refused(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    replica = RaftReplica(MemoryStore(), addr, [addr], "secret", str(tmp_path))
    try:
        assert await wait_for(replica.is_leader, 10)
        for i in range(5):
            await replica.propose(create(f"n{i}"))
        replica._sync.forceLogCompaction()
        assert await wait_for(lambda: (tmp_path / "dump.bin").exists(), 10)
    finally:
        replica.close()
    dump = tmp_path / "dump.bin"
    os.truncate(dump, dump.stat().st_size - 7)
    with pytest.raises(RaftStateDamaged) as err:
        RaftReplica(MemoryStore(), addr, [addr], "secret", str(tmp_path))
    assert err.value.path == str(dump) and "gzip" in err.value.problem


async def test_a_failure_in_raft_thread_stops_the_replica_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    failures: list[RaftFailed] = []
    reported = threading.Event()

    def on_fatal(err: RaftFailed) -> None:
        failures.append(err)
        reported.set()

    def broken_watcher(events: list[Event]) -> None:
        raise RuntimeError("watcher broke")

    store = MemoryStore()
    store.watch(broken_watcher)
    addr = f"127.0.0.1:{free_port()}"
    replica = RaftReplica(store, addr, [addr], "secret", str(tmp_path), on_fatal=on_fatal)
    try:
        assert await wait_for(replica.is_leader, 10)
        replica._consumer.apply_batch(create("n1").SerializeToString())  # not awaited
        assert await wait_for(reported.is_set, 10)
        assert await wait_for(lambda: not replica._sync.tick_thread_alive(), 5)
    finally:
        replica.close()
    assert len(failures) == 1 and "watcher broke" in str(failures[0])
    retried = [r for r in caplog.records if "failed _onTick" in r.getMessage()]
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert retried == [] and len(critical) == 1
