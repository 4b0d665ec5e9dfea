"""Entries go out as they come: a commit does not wait for pysyncobj's append-entries timer,
and many writers at once through every replica lose nothing and agree on one order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from manager.raft.replica import RaftReplica, RaftTiming
from manager.store.memory import Event, MemoryStore, wrap
from proto import objects_pb2 as pb
from proto import store_pb2
from tests.integration.test_raft_compaction import free_port, wait_for

# A long timer, so that waiting for it would show: 30 writes one after the other would take
# at least 30 periods (9 s) on the timer, and a write through a follower two periods each.
SLOW_TIMER = RaftTiming(append_entries_period=0.3, election_min=1.0, election_max=1.2,
                        leader_fallback=3.0)


def create(node_id: str) -> store_pb2.StoreBatch:
    return store_pb2.StoreBatch(actions=[store_pb2.StoreAction(
        kind=store_pb2.CREATE, object=wrap(pb.Node(id=node_id)))])


class Member:
    """A replica and the IDs its store applied, in order."""

    def __init__(self, addr: str, peers: list[str], state_dir: Path,
                 timing: RaftTiming | None) -> None:
        self.store = MemoryStore()
        self.history: list[str] = []
        self.store.watch(self._record)
        self.replica = RaftReplica(self.store, addr, peers, "secret", str(state_dir),
                                   timing=timing)

    def _record(self, events: list[Event]) -> None:
        self.history.extend(e.new.id for e in events if e.new is not None)


@asynccontextmanager
async def cluster(tmp_path: Path, timing: RaftTiming | None = None
                  ) -> AsyncIterator[tuple[Member, list[Member]]]:
    """Three replicas on loopback; yields (leader, followers) once all are ready."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    members = [Member(a, addrs, tmp_path / f"r{i}", timing) for i, a in enumerate(addrs)]
    try:
        def settled() -> bool:
            leaders = [m for m in members if m.replica.is_leader()]
            return len(leaders) == 1 and all(
                m.replica.ready() and m.replica.has_quorum() for m in members)

        assert await wait_for(settled, 30)
        leader = next(m for m in members if m.replica.is_leader())
        yield leader, [m for m in members if m is not leader]
    finally:
        for m in members:
            m.replica.close()


async def test_commits_do_not_wait_for_the_append_entries_timer(tmp_path: Path) -> None:
    async with cluster(tmp_path, SLOW_TIMER) as (leader, followers):
        period = SLOW_TIMER.append_entries_period
        for member, name in ((leader, "leader"), (followers[0], "follower")):
            start = time.monotonic()
            for i in range(30):
                await member.replica.propose(create(f"{name}-{i}"))
            took = time.monotonic() - start
            # On the timer: >= 30 periods (leader) or 60 (follower); 3 is far from both.
            assert took < 3 * period, f"30 writes through the {name} took {took:.2f} s"


async def test_many_writers_through_every_replica_agree_and_lose_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pysyncobj")
    writers, each = 8, 40
    async with cluster(tmp_path) as (leader, followers):
        members = [leader, *followers]
        acked: dict[str, int] = {}  # node ID -> store version its write produced

        async def writer(member: Member, name: str) -> None:
            for i in range(each):
                node_id = f"{name}-{i:03d}"
                acked[node_id] = await member.replica.propose(create(node_id))

        async with asyncio.TaskGroup() as group:
            for m, member in enumerate(members):
                for w in range(writers):
                    group.create_task(writer(member, f"m{m}w{w}"))

        total = len(members) * writers * each
        assert len(acked) == total
        assert await wait_for(lambda: all(len(m.history) >= total for m in members), 10)
        first = leader.history
        for member in members:
            # One order on every replica, each write once, at the version it was answered.
            assert member.history == first
            assert member.store.version == len(first)
            assert {first[v - 1]: v for v in acked.values()} == acked
        for m, _ in enumerate(members):
            for w in range(writers):
                mine = [n for n in first if n.startswith(f"m{m}w{w}-")]
                assert mine == sorted(mine) and len(mine) == each
    truncated = [r for r in caplog.records if "truncating" in r.getMessage()]
    assert truncated == []


async def test_a_lone_manager_commits_without_waiting_for_its_tick(tmp_path: Path) -> None:
    """One manager commits at the start of a tick: what a tick appended waits for the next,
    unless the tick thread is woken again (a long tick period shows the difference)."""
    timing = RaftTiming(auto_tick_period=0.2)
    addr = f"127.0.0.1:{free_port()}"
    member = Member(addr, [addr], tmp_path / "lone", timing)
    try:
        assert await wait_for(lambda: member.replica.is_leader() and member.replica.ready(), 30)
        start = time.monotonic()
        for i in range(20):
            await member.replica.propose(create(f"lone-{i}"))
        took = time.monotonic() - start
        # On the tick: >= 20 periods (4 s); 5 periods is far from that.
        assert took < 5 * timing.auto_tick_period, f"20 writes took {took:.2f} s"
        assert member.history == [f"lone-{i}" for i in range(20)]
    finally:
        member.replica.close()


async def test_a_member_that_answers_late_is_added(tmp_path: Path) -> None:
    """Going from 1 manager to 2, the new member counts in the majority before it answered:
    adding it waits for the change to commit instead of giving up on a quorum check."""
    first, second = (f"127.0.0.1:{free_port()}" for _ in range(2))
    lone = Member(first, [first], tmp_path / "first", None)
    members = [lone]
    try:
        assert await wait_for(lambda: lone.replica.is_leader() and lone.replica.ready(), 30)

        async def start_later() -> Member:
            await asyncio.sleep(1.0)  # well past the 0.2 s quorum checks
            members.append(Member(second, [first, second], tmp_path / "second", None))
            return members[-1]

        late = asyncio.create_task(start_later())
        await lone.replica.add_member(second, timeout=30.0)
        joined = await late
        assert lone.replica.members() == sorted([first, second])
        await lone.replica.propose(create("after-join"))
        assert await wait_for(lambda: "after-join" in joined.history, 10)
    finally:
        for member in members:
            member.replica.close()


async def test_a_write_waits_out_followers_that_answer_late(tmp_path: Path) -> None:
    """Both followers' Raft threads busy for 0.8 s (a slow watcher here; under load a long
    apply or the GIL): a write proposed meanwhile commits once they answer, instead of being
    reported lost after half a second of silence."""
    async with cluster(tmp_path) as (leader, followers):
        def stall(events: list[Event]) -> None:  # on a follower's Raft thread
            if any(e.new is not None and e.new.id == "stall" for e in events):
                time.sleep(0.8)

        for follower in followers:
            follower.store.watch(stall)
        await leader.replica.propose(create("stall"))
        await asyncio.sleep(0.1)  # the followers apply it (and stall) about now
        await leader.replica.propose(create("during"))
        assert await wait_for(lambda: all("during" in f.history for f in followers), 10)


async def test_a_stopped_member_keeps_what_it_knew_was_committed(tmp_path: Path) -> None:
    """Closed right after its writes (pysyncobj writes the commit index once a second) and
    started again alone, its peers gone: it applies what it had committed by itself."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    members = [Member(a, addrs, tmp_path / f"r{i}", None) for i, a in enumerate(addrs)]
    try:
        assert await wait_for(lambda: any(m.replica.is_leader() for m in members)
                              and all(m.replica.ready() for m in members), 30)
        leader = next(m for m in members if m.replica.is_leader())
        for i in range(5):
            await leader.replica.propose(create(f"kept-{i}"))
    finally:
        for m in members:
            m.replica.close()
    index = members.index(leader)
    alone = Member(addrs[index], addrs, tmp_path / f"r{index}", None)
    try:
        assert await wait_for(lambda: alone.history[-5:] == [f"kept-{i}" for i in range(5)],
                              10), alone.history
    finally:
        alone.replica.close()
