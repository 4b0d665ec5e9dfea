"""The dispatcher's task half: each node's assignment set, and the agents' status reports.

`AssignmentIndex` keeps the tasks of every node (node_id set and status ≥ ASSIGNED) from
store events, so a stream never scans the whole store: a node's streams wake when one of its
tasks is created, deleted, moved, or changed other than in its status (agents' own reports
don't echo back). Each wake sends the node its full set. Finished tasks stay in the set until
they are deleted (the worker keeps their containers, and logs, until then).

`StatusWriter` applies agents' reports: a status is written only if it moves the task
forward, for a task of the reporting node. A report is written at once when no write is on
its way; reports from all nodes that arrive during a write go together in the next one, in
version-checked Raft batches of at most `MAX_BATCH` tasks, IN_FLIGHT at a time, re-read and
retried when another writer got there first. The RPC returns once committed. Sets go out the
same way: at once, with the changes of one commit together (no timer on a task's path to its
agent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from manager.dispatcher.files import task_files
from manager.dispatcher.netstate import network_message
from manager.errors import OutOfSequence, Unavailable
from manager.manager import IN_FLIGHT, Manager
from manager.store.memory import Event, MemoryStore
from proto import cluster_pb2, store_pb2
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

# Streams wake on their node's changes and when the leadership term ends (wake_all); this
# is only a safety net, so idle streams cost nothing.
RECHECK = 30.0
MAX_BATCH = 200
RETRIES = 10
_UNSTABLE = ("status", "meta")  # fields whose change alone does not resend the set


def assigned_node(task: pb.Task) -> str | None:
    """The node whose set the task belongs to, if any."""
    if task.node_id and task.status.state >= pb.ASSIGNED:
        return str(task.node_id)
    return None


def same_assignment(a: pb.Task, b: pb.Task) -> bool:
    """Equal but for status and meta (a status report doesn't change the assignment)."""
    def stable(t: pb.Task) -> list[tuple[str, Any]]:
        return [(f.name, v) for f, v in t.ListFields() if f.name not in _UNSTABLE]
    return stable(a) == stable(b)


def moves_forward(current: pb.TaskStatus, new: pb.TaskStatus) -> bool:
    """Whether an agent's report may replace the stored status."""
    if not pb.ACCEPTED <= new.state <= pb.REJECTED:
        return False  # agents report ACCEPTED … REJECTED only
    if new.state != current.state:
        return new.state > current.state
    if new.timestamp_ns <= current.timestamp_ns:
        return False
    return _without_time(new) != _without_time(current)


def _without_time(status: pb.TaskStatus) -> pb.TaskStatus:
    copy = pb.TaskStatus()
    copy.CopyFrom(status)
    copy.timestamp_ns = 0
    return copy


class AssignmentIndex:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self._tasks: dict[str, dict[str, pb.Task]] = {}  # node id → task id → task
        self._node_of: dict[str, str] = {}  # task id → node id
        # Nodes that have had a task on an overlay network: their messages carry the
        # networks' records, so a change to any networked task, service, node or network
        # wakes them (a spare wake resends an equal set, which the node takes as a no-op).
        # While a service publishes a port every node is on the ingress network: then such
        # changes wake every node.
        self._networked: set[str] = set()
        self._published: set[str] = set()  # services with published ports
        # Nodes whose session ended on this leader: their tasks leave every node's service
        # records at once (a killed node's connection resets long before it is marked down).
        self._gone: set[str] = set()
        self._listeners: dict[str, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancel_watch: Callable[[], None] | None = None

    # -- upkeep --

    def start(self) -> None:
        """Follow the store (needs the running loop) and rebuild from it: called when this
        manager becomes the leader (a restored snapshot brings no events)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._cancel_watch = self.store.watch(self._on_events)
        self.resync()

    def stop(self) -> None:
        if self._cancel_watch is not None:
            self._cancel_watch()
        self._cancel_watch = self._loop = None

    def resync(self) -> None:
        self._tasks.clear()
        self._node_of.clear()
        self._networked.clear()
        self._published = {s.id for s in self.store.list_view(pb.Service)
                            if s.spec.endpoint.ports}
        for task in self.store.list_view(pb.Task):
            self._put(task)
        for node_id in self._listeners:
            self._wake(node_id)

    def _on_events(self, events: list[Event]) -> None:
        """On the Raft thread: hand the events to the loop."""
        loop = self._loop
        if loop is None:
            return
        tasks = [e for e in events if e.table == "task"]
        networked = [e for e in events if _touches_networks(e)]
        if tasks or networked:
            try:
                loop.call_soon_threadsafe(self._apply, tasks, networked)
            except RuntimeError:  # the loop is closed: the manager is gone
                self.stop()

    def _apply(self, events: list[Event], networked: Sequence[Event] = ()) -> None:
        for event in networked:
            if event.table == "service":
                if event.new is not None and event.new.spec.endpoint.ports:
                    self._published.add(event.new.id)
                elif event.old is not None:
                    self._published.discard(event.old.id)
        if networked:
            self._wake_networked()
        for event in events:
            if event.new is not None:
                self._put(event.new)
            elif event.old is not None:
                self._drop(event.old.id)

    def _put(self, task: pb.Task) -> None:
        old_node = self._node_of.get(task.id)
        old = self._tasks[old_node].get(task.id) if old_node else None
        if old is not None and old.meta.version.index >= task.meta.version.index:
            return  # an event older than what we have
        node = assigned_node(task)
        if old_node is not None and old_node != node:
            self._drop(task.id)
        if node is None:
            return
        self._tasks.setdefault(node, {})[task.id] = task
        self._node_of[task.id] = node
        if task.networks:
            self._networked.add(node)
        if old is None or old_node != node or not same_assignment(old, task):
            self._wake(node)

    def _drop(self, task_id: str) -> None:
        node = self._node_of.pop(task_id, None)
        if node is not None:
            self._tasks.get(node, {}).pop(task_id, None)
            self._wake(node)

    def wake_all(self) -> None:
        for node_id in list(self._listeners):
            self._wake(node_id)

    def node_gone(self, node_id: str) -> None:
        self._gone.add(node_id)
        self._wake_networked()

    def node_back(self, node_id: str) -> None:
        if node_id in self._gone:
            self._gone.discard(node_id)
            self._wake_networked()

    def _wake_networked(self) -> None:
        for node_id in (self._listeners if self._published else self._networked):
            self._wake(node_id)

    def wake(self, node_id: str) -> None:
        """Make the node's streams look again (its session changed)."""
        self._wake(node_id)

    def _wake(self, node_id: str) -> None:
        for event in self._listeners.get(node_id, ()):
            event.set()

    # -- reads --

    def tasks_of(self, node_id: str) -> list[pb.Task]:
        return sorted(self._tasks.get(node_id, {}).values(), key=lambda t: str(t.id))

    async def stream(self, node_id: str, alive: Callable[[], bool]
                     ) -> AsyncIterator[cluster_pb2.AssignmentsMessage]:
        """The node's full set now and after every change, while `alive()`."""
        if self._loop is None:
            self.start()
        changed = asyncio.Event()
        changed.set()
        self._listeners.setdefault(node_id, set()).add(changed)
        try:
            while alive():
                try:  # asyncio.timeout, not wait_for: no task per wait (1,000s of streams)
                    async with asyncio.timeout(RECHECK):
                        await changed.wait()
                except TimeoutError:
                    continue
                await asyncio.sleep(0)  # the other events of the same commit
                changed.clear()
                if alive():
                    view, tasks = self.store.view(), self.tasks_of(node_id)
                    message = network_message(view, node_id, tasks, frozenset(self._gone))
                    secrets, configs = task_files(view, tasks)
                    message.secrets.extend(secrets)
                    message.configs.extend(configs)
                    yield message
        finally:
            listeners = self._listeners.get(node_id, set())
            listeners.discard(changed)
            if not listeners:
                self._listeners.pop(node_id, None)


def _touches_networks(event: Event) -> bool:
    """Whether the change may change some node's network records or peers."""
    objs = [o for o in (event.old, event.new) if o is not None]
    if event.table == "network":
        return True
    if event.table == "service":
        return any(o.spec.task.networks or o.spec.endpoint.ports for o in objs)
    if event.table == "node":  # its address, tunnel or ingress address
        return len(objs) < 2 or any(
            getattr(objs[0], f) != getattr(objs[1], f) for f in ("tunnel", "ingress_addr")) \
            or objs[0].status.addr != objs[1].status.addr
    return event.table == "task" and any(len(o.networks) > 0 for o in objs)


class StatusWriter:
    def __init__(self, manager: Manager) -> None:
        self.mgr = manager
        self._pending: dict[str, tuple[str, pb.TaskStatus]] = {}  # task id → (node, status)
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, node_id: str, updates: list[cluster_pb2.TaskStatusUpdate]) -> None:
        """Queue a node's reports; return once the batch holding them is committed."""
        for update in updates:
            current = self._pending.get(update.task_id)
            if current is None or _later(update.status, current[1]):
                self._pending[update.task_id] = (node_id, update.status)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="task-status-writer")
        await asyncio.shield(done)

    async def _flush(self) -> None:
        while self._waiters:
            await asyncio.sleep(0)  # the reports that came in the same turn of the loop
            pending, self._pending = self._pending, {}
            waiters, self._waiters = self._waiters, []
            try:
                await self.write(pending)
            except Exception as err:
                log.warning("writing %d task statuses failed: %s", len(pending), err)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(err)
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def write(self, reports: dict[str, tuple[str, pb.TaskStatus]]) -> int:
        """Write the reports that move their task forward; the number of tasks written."""
        todo, written = dict(reports), 0
        limit = asyncio.Semaphore(IN_FLIGHT)
        for _ in range(RETRIES):
            tasks = self._changes(todo)
            lost = await asyncio.gather(*(self._write_chunk(tasks[start:start + MAX_BATCH], limit)
                                          for start in range(0, len(tasks), MAX_BATCH)))
            conflicts = {t.id: todo[t.id] for chunk in lost for t in chunk}
            written += len(tasks) - len(conflicts)
            if not conflicts:
                return written
            todo = conflicts
        raise Unavailable(f"{len(todo)} task statuses kept conflicting with other writes")

    async def _write_chunk(self, chunk: list[pb.Task], limit: asyncio.Semaphore
                           ) -> list[pb.Task]:
        """Write one batch; the tasks that lost a version race (all of them, or none)."""
        async with limit:
            try:
                await self.mgr.write(*[(store_pb2.UPDATE, t) for t in chunk])
                return []
            except OutOfSequence:
                return chunk

    def _changes(self, reports: dict[str, tuple[str, pb.TaskStatus]]) -> list[pb.Task]:
        tasks = []
        for task_id, (node_id, status) in reports.items():
            task = self.mgr.store.get(pb.Task, task_id)
            if task is None or task.node_id != node_id:
                continue  # deleted, or not this node's task: ignore
            if moves_forward(task.status, status):
                task.status.CopyFrom(status)
                tasks.append(task)
        return tasks


def _later(a: pb.TaskStatus, b: pb.TaskStatus) -> bool:
    return (a.state, a.timestamp_ns) > (b.state, b.timestamp_ns)
