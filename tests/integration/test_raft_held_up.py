"""A follower's tick thread held up for longer than the election timeout while the leader
went on heartbeating (on a busy manager: waiting for the interpreter while the event loop
runs) reads what arrived meanwhile before it decides the leader is gone: no election. And
the manager says its tick thread was held up."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.poller import POLL_EVENT_TYPE

from tests.integration.test_raft_compaction import wait_for
from tests.integration.test_raft_prompt import cluster, create

HOLD = 1.5  # seconds: over the election timeout's maximum (1.0 s)


def hold_up_after_a_poll(poller: Any, seconds: float = HOLD) -> Any:
    """A pipe in the tick thread's poller whose handler sleeps `seconds`: the thread is
    held after its poll returned, as when it waits for the interpreter, and what the leader
    sends meanwhile lies unread in its socket. Returns the function that triggers one."""
    read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def held(_fd: int, _event: int) -> None:
        os.read(read, 4096)
        time.sleep(seconds)

    poller.subscribe(read, held, POLL_EVENT_TYPE.READ)
    return lambda: os.write(write, b"x")


async def test_a_held_up_follower_reads_the_heartbeats_before_standing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="manager.raft.prompt")
    async with cluster(tmp_path) as (leader, followers):
        members = [leader, *followers]
        term = leader.replica.term()
        hold = hold_up_after_a_poll(followers[0].replica._sync._poller)
        for round_ in range(3):
            hold()
            for i in range(int(HOLD / 0.1) + 5):  # writing all along, through the leader
                await leader.replica.propose(create(f"r{round_}-{i}"))
                await asyncio.sleep(0.1)
        assert leader.replica.is_leader()
        assert [m.replica.term() for m in members] == [term] * 3
        total = 3 * (int(HOLD / 0.1) + 5)
        assert await wait_for(lambda: all(len(m.history) == total for m in members), 10)
        held = [r.getMessage() for r in caplog.records if "held up" in r.getMessage()]
        assert len(held) == 3, held
        assert all(" as follower, " in m and "short of CPU" in m for m in held), held


async def test_followers_wait_for_a_leader_that_said_it_is_short_of_cpu(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (first, others):
        members = [first, *others]
        # Control: a leader with no hold-ups behind it asks for nothing, and a 1.1 s
        # silence (over the 1.0 s maximum timeout) is an election.
        term = first.replica.term()
        hold_up_after_a_poll(first.replica._sync._poller, 1.1)()
        assert await wait_for(lambda: first.replica.term() > term, 10)
        assert await wait_for(lambda: sum(m.replica.is_leader() for m in members) == 1, 10)
        leader = next(m for m in members if m.replica.is_leader())
        hold = hold_up_after_a_poll(leader.replica._sync._poller, 0.4)
        hold()  # under the 0.5 s minimum: no election, but the leader has been late 0.4 s
        await asyncio.sleep(1.0)
        term = leader.replica.term()
        hold_up_after_a_poll(leader.replica._sync._poller, 1.1)()
        for i in range(20):
            await leader.replica.propose(create(f"after-{i}"))
            await asyncio.sleep(0.1)
        assert leader.replica.is_leader()
        assert [m.replica.term() for m in members] == [term] * 3
