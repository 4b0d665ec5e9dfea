"""Pre-vote (manager/raft/prevote.py): a member whose election timer ran out while the
leader is alive does not depose it; when the leader is gone, the others still elect one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.test_raft_compaction import wait_for
from tests.integration.test_raft_prompt import cluster, create


async def test_a_member_behind_its_timer_does_not_depose_a_live_leader(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (leader, followers):
        members = [leader, *followers]
        term = leader.replica.term()
        behind = followers[0].replica._sync
        for i in range(5):
            # What a member finds after its process got no CPU for a while, or its tick
            # thread wrote a dump: its election timer has run out. pysyncobj stood at once
            # with a higher term, and the leader stepped down on seeing it.
            behind._SyncObj__raftElectionDeadline = 0.0
            await asyncio.sleep(0.3)
            await leader.replica.propose(create(f"n{i}"))
        assert leader.replica.is_leader()
        assert [m.replica.term() for m in members] == [term] * 3
        assert await wait_for(lambda: all(len(m.history) == 5 for m in members), 10)


async def test_with_the_leader_gone_the_others_elect_one(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (leader, followers):
        term = leader.replica.term()
        leader.replica.close()
        assert await wait_for(lambda: any(f.replica.is_leader() for f in followers), 10)
        new = next(f for f in followers if f.replica.is_leader())
        assert new.replica.term() > term
        await new.replica.propose(create("after"))
        assert await wait_for(lambda: all("after" in f.history for f in followers), 10)


async def test_a_transfer_the_leader_asks_for_needs_no_pre_vote(tmp_path: Path) -> None:
    """`node demote` of the leader and a crash-looping leader hand leadership over: the
    member told to stand does so at once, though the others still hear the old leader."""
    async with cluster(tmp_path) as (leader, followers):
        term = leader.replica.term()
        await leader.replica.propose(create("before"))
        assert await wait_for(lambda: all("before" in f.history for f in followers), 10)
        leader.replica.transfer_leadership()
        assert await wait_for(lambda: any(f.replica.is_leader() for f in followers), 10)
        new = next(f for f in followers if f.replica.is_leader())
        assert new.replica.term() == term + 1
