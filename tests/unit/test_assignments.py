"""The dispatcher's assignment sets (from store events) and its status writes (forward only,
batched, retried on version conflicts), against a real MemoryStore."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from manager.dispatcher import assignments
from manager.dispatcher.assignments import (
    AssignmentIndex,
    StatusWriter,
    moves_forward,
    same_assignment,
)
from manager.store.memory import MemoryStore, wrap
from proto import cluster_pb2, store_pb2
from proto import objects_pb2 as pb


def apply(store: MemoryStore, *actions: tuple[int, object]) -> None:
    batch = store_pb2.StoreBatch(actions=[
        store_pb2.StoreAction(kind=kind, object=wrap(obj)) for kind, obj in actions])  # type: ignore[arg-type]
    result = store.apply(batch)
    if result.error is not None:
        raise result.error


def task(task_id: str, node: str = "n1", state: int = pb.ASSIGNED) -> pb.Task:
    t = pb.Task(id=task_id, node_id=node, desired_state=pb.RUNNING)
    t.status.state = state  # type: ignore[assignment]
    return t


def get(store: MemoryStore, task_id: str) -> pb.Task:
    found = store.get(pb.Task, task_id)
    assert found is not None
    return found  # type: ignore[no-any-return]


def status(state: int, ts: int, **fields: str) -> pb.TaskStatus:
    return pb.TaskStatus(state=state, timestamp_ns=ts, **fields)  # type: ignore[arg-type]


def test_reports_only_move_forward() -> None:
    running = status(pb.RUNNING, 10)
    assert moves_forward(status(pb.ASSIGNED, 1), running)
    assert not moves_forward(running, status(pb.STARTING, 20))  # backwards
    assert not moves_forward(running, status(pb.RUNNING, 20))  # same content, later: no write
    assert moves_forward(running, status(pb.RUNNING, 20, health="healthy"))
    assert not moves_forward(running, status(pb.RUNNING, 5, health="healthy"))  # stale
    assert not moves_forward(running, status(pb.REMOVE, 20))  # not an agent's state
    assert not moves_forward(status(pb.NEW, 0), status(pb.PENDING, 1))


def test_a_status_change_alone_is_not_a_new_assignment() -> None:
    a, b = task("t"), task("t")
    b.status.state = pb.RUNNING
    b.meta.version.index = 7
    assert same_assignment(a, b)
    b.desired_state = pb.SHUTDOWN
    assert not same_assignment(a, b)


async def next_set(stream: AsyncIterator[cluster_pb2.AssignmentsMessage],
                   timeout: float = 2.0) -> list[str]:
    msg = await asyncio.wait_for(anext(stream), timeout)
    return [t.id for t in msg.tasks]


async def test_streams_the_set_when_it_changes_not_on_status_reports() -> None:
    store = MemoryStore()
    apply(store, (store_pb2.CREATE, task("a")), (store_pb2.CREATE, task("other", node="n2")),
          (store_pb2.CREATE, task("pending", state=pb.PENDING)))
    index = AssignmentIndex(store)
    stream = index.stream("n1", lambda: True)
    assert await next_set(stream) == ["a"]

    apply(store, (store_pb2.CREATE, task("b")))
    assert await next_set(stream) == ["a", "b"]

    reported = get(store, "a")
    reported.status.state = pb.RUNNING
    apply(store, (store_pb2.UPDATE, reported))
    pending = asyncio.ensure_future(next_set(stream, timeout=0.3))
    await asyncio.sleep(0.35)
    assert pending.done() and isinstance(pending.exception(), TimeoutError)

    stop = get(store, "a")
    stop.desired_state = pb.SHUTDOWN
    apply(store, (store_pb2.UPDATE, stop))
    stream = index.stream("n1", lambda: True)  # (the timed-out generator is closed)
    msg = await asyncio.wait_for(anext(stream), 2.0)
    shut = {t.id: t for t in msg.tasks}["a"]
    assert shut.desired_state == pb.SHUTDOWN and shut.status.state == pb.RUNNING

    moved = get(store, "b")
    moved.node_id = "n2"
    apply(store, (store_pb2.UPDATE, moved))
    assert await next_set(stream) == ["a"]
    apply(store, (store_pb2.DELETE, get(store, "a")))
    assert await next_set(stream) == []
    assert [t.id for t in index.tasks_of("n2")] == ["b", "other"]
    index.stop()


class StoreManager:
    """What StatusWriter needs of a Manager: the store and versioned batch writes, applied
    directly (no Raft). `interfere` runs before the next write, like a concurrent writer."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.writes: list[int] = []
        self.interfere: list[pb.Task] = []

    async def write(self, *actions: tuple[int, object]) -> int:
        while self.interfere:
            apply(self.store, (store_pb2.UPDATE, self.interfere.pop()))
        self.writes.append(len(actions))
        apply(self.store, *actions)
        return self.store.version


async def test_status_writes_are_batched_and_retried_on_conflicts() -> None:
    store = MemoryStore()
    tasks = [task(f"t{i:03}") for i in range(250)]
    apply(store, *[(store_pb2.CREATE, t) for t in tasks])
    mgr = StoreManager(store)
    writer = StatusWriter(mgr)  # type: ignore[arg-type]

    # Another writer changes t000's desired state between our read and our write.
    racing = get(store, "t000")
    racing.desired_state = pb.SHUTDOWN
    mgr.interfere.append(racing)
    updates = [cluster_pb2.TaskStatusUpdate(task_id=t.id, status=status(pb.RUNNING, 5))
               for t in tasks]
    updates.append(cluster_pb2.TaskStatusUpdate(task_id="ghost", status=status(pb.RUNNING, 5)))
    await writer.submit("n1", updates)

    assert mgr.writes[:2] == [assignments.MAX_BATCH, 50]  # first chunk conflicted
    assert mgr.writes[2:] == [assignments.MAX_BATCH]  # re-read and written again
    assert all(t.status.state == pb.RUNNING for t in store.list(pb.Task))
    assert get(store, "t000").desired_state == pb.SHUTDOWN  # not overwritten

    before = len(mgr.writes)
    await writer.submit("n2", [cluster_pb2.TaskStatusUpdate(  # another node's task
        task_id="t001", status=status(pb.FAILED, 9, err="forged"))])
    assert len(mgr.writes) == before and get(store, "t001").status.state == pb.RUNNING


class SlowCommits(StoreManager):
    """Each write waits for its commit, as through Raft: counts the writes in flight."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.in_flight = self.most_in_flight = 0

    async def write(self, *actions: tuple[int, object]) -> int:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            return await super().write(*actions)
        finally:
            self.in_flight -= 1


async def test_the_batches_of_one_flush_wait_for_their_commits_together() -> None:
    store = MemoryStore()
    tasks = [task(f"t{i:04}") for i in range(5 * assignments.MAX_BATCH)]
    apply(store, *[(store_pb2.CREATE, t) for t in tasks])
    mgr = SlowCommits(store)
    writer = StatusWriter(mgr)  # type: ignore[arg-type]
    await writer.submit("n1", [cluster_pb2.TaskStatusUpdate(
        task_id=t.id, status=status(pb.RUNNING, 5)) for t in tasks])
    assert mgr.writes == [assignments.MAX_BATCH] * 5
    assert mgr.most_in_flight == 5  # one after another, it would be 1
    assert all(t.status.state == pb.RUNNING for t in store.list(pb.Task))
