"""A full dump is written beside Raft's tick thread (manager/raft/dumps.py): while one is
being written, for longer than the followers' election timeout, the leader goes on
committing and heartbeating, and no election takes place."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from tests.integration.test_raft_compaction import wait_for
from tests.integration.test_raft_prompt import cluster, create


async def test_a_dump_being_written_silences_nobody(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (leader, followers):
        members = [leader, *followers]
        term = leader.replica.term()
        gate, encoding = threading.Event(), threading.Event()
        dumps = leader.replica._dumps
        take = dumps.take

        def slow_take() -> Any:
            encode = take()  # on the tick thread, as it is

            def slow_encode() -> bytes:  # a store so large that encoding takes seconds
                encoding.set()
                gate.wait(10)
                return encode()
            return slow_encode

        dumps.take = slow_take
        for i in range(5):
            await leader.replica.propose(create(f"n{i}"))
        leader.replica._sync.forceLogCompaction()
        assert await wait_for(encoding.is_set, 10)
        # 1.5 s of dump, over the election timeout's maximum (1.0 s), writing all along
        for i in range(15):
            await leader.replica.propose(create(f"during{i}"))
            await asyncio.sleep(0.1)
        gate.set()
        dump = Path(dumps.path)
        assert await wait_for(dump.exists, 10)
        assert leader.replica.is_leader()
        assert [m.replica.term() for m in members] == [term] * 3
        assert await wait_for(lambda: all(len(m.history) == 20 for m in members), 10)
