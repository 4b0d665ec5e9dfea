"""Raft traffic is encrypted and authenticated with the cluster secret: a process without it
can neither join the group nor learn its state (real pysyncobj over loopback TCP)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from manager.raft.replica import RaftReplica
from manager.store.memory import MemoryStore, wrap
from proto import objects_pb2 as pb
from proto import store_pb2


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def wait_for(check, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return bool(check())


async def test_a_process_without_the_secret_cannot_join_or_read(tmp_path: Path) -> None:
    addrs = [f"127.0.0.1:{p}" for p in free_ports(4)]
    members, intruder_addr = addrs[:3], addrs[3]
    replicas = [RaftReplica(MemoryStore(), a, members, "right-secret", str(tmp_path / str(i)))
                for i, a in enumerate(members)]
    # The intruder knows every address and claims membership, but has the wrong secret.
    intruder = RaftReplica(MemoryStore(), intruder_addr, addrs, "wrong-secret",
                           str(tmp_path / "intruder"))
    try:
        assert await wait_for(lambda: any(r.is_leader() for r in replicas), 10)
        node = pb.Node(id="secret-node")
        node.spec.annotations.labels["password"] = "hunter2"
        batch = store_pb2.StoreBatch(
            actions=[store_pb2.StoreAction(kind=store_pb2.CREATE, object=wrap(node))])
        await replicas[0].propose(batch)
        assert await wait_for(lambda: all(r.store.get(pb.Node, "secret-node")
                                          for r in replicas), 5)
        await asyncio.sleep(2.0)  # several election timeouts for the intruder to try
        assert intruder.store.get(pb.Node, "secret-node") is None
        assert intruder.store.version == 0
        assert not intruder.is_leader()
        assert all(not r.is_connected(intruder_addr) for r in replicas)
        assert all(r.members() == sorted(members) for r in replicas)
        leaders = {r.leader_addr() for r in replicas}
        assert len(leaders) == 1 and intruder_addr not in leaders
    finally:
        for r in [*replicas, intruder]:
            r.close()
