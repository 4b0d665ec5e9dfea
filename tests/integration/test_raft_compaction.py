"""Raft log compaction dumps the store in-thread (no fork: gRPC in the same process is not
fork-safe), and a manager restarted from the dump and journal has every object."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from manager.raft.replica import RaftReplica
from manager.store.memory import MemoryStore, wrap
from proto import objects_pb2 as pb
from proto import store_pb2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(check, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return bool(check())


async def test_compaction_without_fork_and_restart_from_the_dump(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork() -> int:
        raise AssertionError("Raft compaction forked the process")

    monkeypatch.setattr(os, "fork", no_fork)
    addr = f"127.0.0.1:{free_port()}"
    replica = RaftReplica(MemoryStore(), addr, [addr], "secret", str(tmp_path))
    try:
        assert await wait_for(replica.is_leader, 10)
        for i in range(20):
            batch = store_pb2.StoreBatch(actions=[store_pb2.StoreAction(
                kind=store_pb2.CREATE, object=wrap(pb.Node(id=f"n{i}")))])
            await replica.propose(batch)
        replica._sync.forceLogCompaction()
        assert await wait_for(lambda: (tmp_path / "dump.bin").exists(), 10)
    finally:
        replica.close()
    again = RaftReplica(MemoryStore(), addr, [addr], "secret", str(tmp_path))
    try:
        assert await wait_for(lambda: len(again.store.list(pb.Node)) == 20, 10)
    finally:
        again.close()
