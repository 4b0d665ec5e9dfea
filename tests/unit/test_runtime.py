"""The leader runtime: one term per leadership with a committed epoch, controllers woken by
relevant store events, a crash restarted with backoff and logged, repeated crashes making the
manager step down, lost leadership cancelling every controller of the term."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from manager import runtime
from manager.errors import Unavailable
from manager.manager import Manager, ManagerAddrs
from manager.runtime import Controller, LeaderRuntime, Pacer
from manager.store.memory import Event, MemoryStore, StoreView
from proto import objects_pb2 as pb
from proto import store_pb2


class FakeRaft:
    """A one-manager Raft: leads while `leading`, applies proposals straight away."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.leading = True
        self.current_term = 1
        self.transfers = 0

    def is_leader(self) -> bool:
        return self.leading

    def term(self) -> int:
        return self.current_term

    def transfer_leadership(self) -> None:
        self.transfers += 1
        self.leading = False

    async def propose(self, batch: store_pb2.StoreBatch, timeout: float = 10.0) -> int:
        batch.timestamp_ns = batch.timestamp_ns or time.time_ns()
        result = self.store.apply(batch)
        if result.error is not None:
            raise result.error
        return result.version


class Recorder(Controller):
    name = "recorder"

    def __init__(self, crashes: int = 0) -> None:
        self.crashes = crashes
        self.passes: list[int] = []
        self.cancelled = 0

    def relevant(self, event: Event) -> bool:
        return event.table == "node"

    async def run(self, view: StoreView) -> float | None:
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("boom")
        self.passes.append(view.version)
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return None


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in [("COALESCE", 0.001), ("LEADERSHIP_CHECK", 0.005),
                        ("BACKOFF_MIN", 0.001), ("BACKOFF_MAX", 0.01)]:
        monkeypatch.setattr(runtime, name, value)


def cluster() -> tuple[Manager, FakeRaft]:
    store = MemoryStore()
    raft = FakeRaft(store)
    mgr = Manager("m1", ManagerAddrs("a:1", "a:2"), store, raft)  # type: ignore[arg-type]
    store.apply(store_pb2.StoreBatch(timestamp_ns=1, actions=[store_pb2.StoreAction(
        kind=store_pb2.CREATE, object=store_pb2.StoreObject(cluster=pb.Cluster(id="c")))]))
    return mgr, raft


async def until(check: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.005)


@asynccontextmanager
async def running(rt: LeaderRuntime) -> AsyncIterator[None]:
    """The runtime runs for the body, as for a manager's whole life; then it is stopped."""
    async with asyncio.TaskGroup() as group:
        task = group.create_task(rt.run())
        yield
        task.cancel()


async def test_a_term_commits_its_epoch_and_passes_follow_relevant_events() -> None:
    mgr, raft = cluster()
    rec = Recorder()
    rt = LeaderRuntime(mgr, [rec])
    async with running(rt):
        await until(lambda: rec.passes)
        assert mgr.store.epoch == 1 and mgr.epoch == 1
        await mgr.write((store_pb2.CREATE, pb.Node(id="n1")), fenced=True)
        await until(lambda: len(rec.passes) == 2)
        await mgr.write((store_pb2.CREATE, pb.Service(id="s1")))  # not relevant: no pass
        await asyncio.sleep(0.05)
        assert len(rec.passes) == 2


async def test_a_crash_is_logged_and_the_controller_restarted(
        caplog: pytest.LogCaptureFixture) -> None:
    mgr, raft = cluster()
    rec = Recorder(crashes=2)
    rt = LeaderRuntime(mgr, [rec])
    with caplog.at_level(logging.ERROR, logger="manager.runtime"):
        async with running(rt):
            await until(lambda: rec.passes)
    crashes = [r for r in caplog.records if "recorder crashed" in r.getMessage()]
    assert len(crashes) == 2 and crashes[0].exc_info is not None
    assert raft.transfers == 0


async def test_repeated_crashes_make_the_manager_step_down() -> None:
    mgr, raft = cluster()
    steady, broken = Recorder(), Recorder(crashes=1_000)
    rt = LeaderRuntime(mgr, [steady, broken])
    async with running(rt):
        await until(lambda: raft.transfers == 1)
        await until(lambda: mgr.epoch == 0)  # the term ended: its controllers stopped
        assert rt.terms == 1


async def test_lost_leadership_cancels_the_term_and_a_new_one_opens_a_new_epoch() -> None:
    mgr, raft = cluster()
    rec = Recorder()
    rt = LeaderRuntime(mgr, [rec])
    async with running(rt):
        await until(lambda: rec.passes)
        raft.leading = False
        await until(lambda: mgr.epoch == 0)
        raft.current_term, raft.leading = 4, True
        await until(lambda: mgr.epoch == 4)
        assert rt.terms == 2 and mgr.store.epoch == 4


async def test_a_fenced_decision_ends_the_term() -> None:
    mgr, raft = cluster()

    class Stale(Recorder):
        async def run(self, view: StoreView) -> float | None:
            self.passes.append(view.version)
            if len(self.passes) == 1:
                # Another leader took over meanwhile (its epoch is newer).
                mgr.store.apply(store_pb2.StoreBatch(new_epoch=9, timestamp_ns=1))
            await mgr.write((store_pb2.CREATE, pb.Node(id=f"n{len(self.passes)}")),
                            fenced=True)
            return None

    stale = Stale()
    rt = LeaderRuntime(mgr, [stale])
    async with running(rt):
        await until(lambda: rt.terms == 1 and mgr.epoch == 0)
        assert mgr.store.get(pb.Node, "n1") is None


async def test_a_pass_that_swallowed_its_cancellation_still_ends_the_term() -> None:
    mgr, raft = cluster()

    async def refused_when_cancelled() -> None:
        try:
            await asyncio.sleep(3600)  # a write in flight
        except asyncio.CancelledError:
            raise Unavailable("no quorum") from None  # as a write can end when the term does

    class Gathering(Recorder):
        name = "gathering"

        async def run(self, view: StoreView) -> float | None:
            self.passes.append(view.version)
            if len(self.passes) == 1:
                # asyncio.gather gives this pass the child's Unavailable, not CancelledError.
                await asyncio.gather(refused_when_cancelled(), asyncio.sleep(3600))
            return 0.01

    gathering = Gathering()
    rt = LeaderRuntime(mgr, [gathering])
    async with running(rt):
        await until(lambda: gathering.passes)
        raft.leading = False
        await until(lambda: mgr.epoch == 0, timeout=2.0)  # the term ended
        assert len(gathering.passes) == 1


async def test_a_task_that_will_not_stop_after_the_term_is_named(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runtime, "STUCK_AFTER", 0.2)
    mgr, raft = cluster()
    release = asyncio.Event()

    class Stubborn(Recorder):
        name = "stubborn"

        async def run(self, view: StoreView) -> float | None:
            self.passes.append(view.version)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:  # held up: the term cannot end meanwhile
                await release.wait()
                raise
            return None

    stubborn = Stubborn()
    rt = LeaderRuntime(mgr, [Recorder(), stubborn])
    with caplog.at_level(logging.ERROR, logger="manager.runtime"):
        async with running(rt):
            try:
                await until(lambda: stubborn.passes)
                raft.leading = False
                await until(lambda: "have not stopped" in caplog.text)
                assert mgr.epoch == 1  # the term has not ended
            finally:
                release.set()
            await until(lambda: mgr.epoch == 0)
    stuck = [r.getMessage() for r in caplog.records if "have not stopped" in r.getMessage()]
    assert len(stuck) == 1
    assert "1 of its tasks" in stuck[0] and "stubborn at " in stuck[0]
    assert "run (test_runtime.py:" in stuck[0]


def test_pacer_lets_a_few_passes_through_at_once_then_one_per_interval() -> None:
    pacer = Pacer(0.2, burst=3)
    now = 100.0
    for _ in range(3):  # after a quiet spell: back to back
        assert pacer.ready_at(now) == now
        pacer.take(now)
    assert pacer.ready_at(now) == pytest.approx(now + 0.2)  # then one per interval
    now += 0.2
    assert pacer.ready_at(now) == pytest.approx(now)
    pacer.take(now)
    assert pacer.ready_at(now + 0.1) == pytest.approx(now + 0.2)
    now += 10.0  # a quiet spell refills the bucket, never beyond the burst
    for _ in range(3):
        assert pacer.ready_at(now) == now
        pacer.take(now)
    assert pacer.ready_at(now) > now


def test_a_pacer_without_interval_never_holds_a_pass_back() -> None:
    pacer = Pacer(0.0)
    for _ in range(10):
        assert pacer.ready_at(5.0) == 5.0
        pacer.take(5.0)
