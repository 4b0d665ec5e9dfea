"""The thin part of every orchestrator: on a relevant store change or when a wake-up time
passed, run the decision core over one consistent view and write its groups through Raft,
fenced by the leadership epoch (manager/runtime.py runs it).

Groups are packed into batches of at most MAX_ACTIONS actions, never split. A batch that
fails (an object changed since it was read: version race, already gone) is retried group by
group, so one stale task does not hold back the others; groups that still fail are decided
again from a fresh view on the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from manager.errors import ManagerError, Unavailable
from manager.manager import IN_FLIGHT, Manager
from manager.orchestrator.snapshot import Decision, Group, Snapshot, SnapshotCache
from manager.orchestrator.tasks import SlotKey, mode, progress_only
from manager.runtime import Controller
from manager.store.memory import Event, StoreView
from manager.store.view import slot_key
from proto import objects_pb2 as pb
from proto import store_pb2

log = logging.getLogger(__name__)

RETRY_FAILED = 0.5  # seconds before deciding again after some groups could not be written

MAX_ACTIONS = 200
# Under a stream of changes an orchestrator's pass runs about this often (see Pacer).
PASS_INTERVAL = 0.25


def batches(groups: list[Group], limit: int = MAX_ACTIONS) -> Iterator[list[Group]]:
    """Consecutive groups whose actions add up to at most `limit` (a larger group alone)."""
    chunk: list[Group] = []
    size = 0
    for group in groups:
        if chunk and size + len(group) > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(group)
        size += len(group)
    if chunk:
        yield chunk


async def write_groups(mgr: Manager, groups: list[Group]) -> list[Group]:
    """Write the groups, fenced by the leadership epoch, IN_FLIGHT batches at a time (each
    commit waits for Raft's append timer, so batches in flight share it); returns the
    groups that could not be written."""
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def one(chunk: list[Group]) -> list[Group]:
        async with limit:
            return await _write_chunk(mgr, chunk)

    results = await asyncio.gather(*(one(chunk) for chunk in batches(groups)))
    return [group for failed in results for group in failed]


async def _write_chunk(mgr: Manager, chunk: list[Group]) -> list[Group]:
    try:
        await mgr.write(*[a for g in chunk for a in g], fenced=True)
        return []
    except Unavailable:
        raise
    except ManagerError as err:
        if len(chunk) == 1:
            log.debug("write skipped: %s", err)
            return chunk
    failed = []
    for group in chunk:  # find the groups that went stale; write the others
        try:
            await mgr.write(*group, fenced=True)
        except Unavailable:
            raise
        except ManagerError as err:
            log.debug("write skipped: %s", err)
            failed.append(group)
    return failed


async def write_each(mgr: Manager, objs: Sequence[Any]) -> bool:
    """UPDATE each object (at the version it was read), many to a batch; True if all were
    written (a lost race leaves an object for the next pass)."""
    return not await write_groups(mgr, [[(store_pb2.UPDATE, o)] for o in objs])


@dataclass
class Marks:
    """What changed since an orchestrator's last pass."""
    everything: bool = False
    services: set[str] = field(default_factory=set)  # decided whole
    slots: set[tuple[str, SlotKey]] = field(default_factory=set)  # (service ID, slot)
    nodes: set[str] = field(default_factory=set)  # the slots of the tasks on these nodes

    def slots_by_service(self, snap: Snapshot) -> dict[str, set[SlotKey]]:
        out: dict[str, set[SlotKey]] = defaultdict(set)
        for service_id, key in self.slots:
            out[service_id].add(key)
        for node_id in self.nodes:
            for task in snap.view.tasks_on_node(node_id):
                out[task.service_id].add(slot_key(task))
        return out


class Orchestrator(Controller):
    """Subclasses set `name` and `core`, the module's pure `decide_service(service, tasks,
    snapshot)`, and may set `slot_core`, its `decide_slot(service, key, slot_tasks,
    snapshot)`: the same decisions for one slot (None when the slot alone cannot say, and
    the whole service is decided).

    A pass decides only what changed since the last: a service whose own object changed is
    decided whole; a task's change concerns its slot, and a node's the slots of the tasks
    on it (an orchestrator without `slot_core` decides their services whole, and every
    service on a node change); a cluster change concerns everything. Services whose
    wake-up time came are decided whole. A task's report on its way up changes no
    decision (`progress_only`) and is not a change here; RUNNING is one only for an
    orchestrator that sets `running_matters` (the updater waits for it). Deciding slots,
    not services, keeps a pass small in a service of thousands of replicas."""

    name = "orchestrator"
    core: ClassVar[Any] = None
    slot_core: ClassVar[Any] = None
    # The service modes whose services the core decides (None: every service). Others are
    # skipped before their tasks are listed: a global orchestrator woken by a node change
    # listed every replicated service's tasks for nothing (11 % of a 2,000-node leader).
    modes: ClassVar[tuple[str, ...] | None] = None
    running_matters = False

    coalesce = PASS_INTERVAL

    def __init__(self, manager: Manager, snapshots: SnapshotCache | None = None) -> None:
        self.mgr = manager
        self.snapshots = snapshots or SnapshotCache()
        self._lock = threading.Lock()  # the Raft thread marks, the loop takes
        self._marks = Marks(everything=True)
        self._wakes: dict[str, int] = {}  # service ID → wake-up time its last decision asked

    def decide_service(self, service: pb.Service, tasks: list[pb.Task],
                       snap: Snapshot) -> Decision:
        core = type(self).core
        if core is None:
            raise TypeError(f"{type(self).__name__} sets no decision core")
        return core(service, tasks, snap)  # type: ignore[no-any-return]

    def decide_slots(self, service: pb.Service, keys: set[SlotKey],
                     snap: Snapshot) -> Decision | None:
        """The decisions for these slots of the service (None: decide it whole)."""
        core = type(self).slot_core
        if core is None:
            return None
        decision = Decision()
        for key in sorted(keys, key=str):
            result = core(service, key, snap.view.tasks_in_slot(service.id, key), snap)
            if result is None:
                return None
            decision.merge(result)
        return decision

    # -- what changed (relevant() runs on the Raft thread) --

    def relevant(self, event: Event) -> bool:
        objs = [o for o in (event.old, event.new) if o is not None]
        if event.table == "task":
            if progress_only(event.old, event.new, through_running=not self.running_matters):
                return False
            with self._lock:
                for task in objs:
                    self._mark_task(task)
            return True
        if event.table == "service":
            with self._lock:
                self._marks.services |= {str(o.id) for o in objs}
            return True
        if event.table == "node" and type(self).slot_core is not None:
            with self._lock:
                self._marks.nodes |= {str(o.id) for o in objs}
            return True
        if event.table in ("node", "cluster"):
            with self._lock:
                self._marks.everything = True
            return True
        return False  # networks, secrets, configs: no orchestrator reads them

    def _mark_failed(self, groups: list[Group]) -> None:
        """Decide again, from a fresh view, what the groups that lost a race were about."""
        with self._lock:
            for _, obj in (a for g in groups for a in g):
                if isinstance(obj, pb.Task):
                    self._mark_task(obj)
                elif isinstance(obj, pb.Service):
                    self._marks.services.add(str(obj.id))
                else:
                    self._marks.everything = True

    def _mark_task(self, task: pb.Task) -> None:
        """Its slot, or its whole service without a slot core (the lock held)."""
        if type(self).slot_core is not None:
            self._marks.slots.add((str(task.service_id), slot_key(task)))
        else:
            self._marks.services.add(str(task.service_id))

    def _take_marks(self) -> Marks:
        """What was marked since the last take."""
        with self._lock:
            marks, self._marks = self._marks, Marks()
        return marks

    # -- deciding --

    def decide(self, snap: Snapshot, marks: Marks | None = None) -> Decision:
        """Decide what `marks` name (None: everything) and the services whose wake-up came."""
        decision = Decision()
        wakes: dict[str, int] = {}
        slots = marks.slots_by_service(snap) if marks and not marks.everything else {}
        for service in snap.services.values():
            if self.modes is not None and mode(service) not in self.modes:
                continue
            due = self._wakes.get(service.id)
            whole = marks is None or marks.everything or service.id in marks.services or \
                (due is not None and snap.now_ns >= due)
            result = None
            if not whole and service.id in slots:
                result = self.decide_slots(service, slots[service.id], snap)
                if result is not None:
                    result.wake(due)  # the service's other slots still want theirs
            elif not whole:
                if due is not None:
                    wakes[service.id] = due
                    decision.wake(due)
                continue
            if result is None:
                result = self.decide_service(service, snap.tasks_of(service.id), snap)
            if result.wake_at_ns is not None:
                wakes[service.id] = result.wake_at_ns
            if result.groups:
                self._log_decision(service, result)
            decision.merge(result)
        self._wakes = wakes
        return decision

    def _log_decision(self, service: pb.Service, result: Decision) -> None:
        actions = [a for g in result.groups for a in g]
        created = sum(1 for kind, obj in actions
                      if kind == store_pb2.CREATE and isinstance(obj, pb.Task))
        level = logging.INFO if created else logging.DEBUG
        log.log(level, "%s: service %s: %d new tasks, %d other changes", self.name,
                service.spec.annotations.name, created, len(actions) - created,
                extra={"service": service.id})

    def begin(self) -> None:
        with self._lock:  # a new term decides everything afresh
            self._marks.everything = True
        self._wakes.clear()

    async def run(self, view: StoreView) -> float | None:
        marks = self._take_marks()
        # The view is taken after the marks: every change marked so far is in it (the
        # store installs a view before it tells its watchers).
        view = self.mgr.view()
        now = time.time_ns()
        decision = self.decide(self.snapshots.get(view, now), marks)
        failed: list[Group] = []
        if decision.groups:
            log.debug("%s: writing %d actions in %d groups", self.name,
                      sum(len(g) for g in decision.groups), len(decision.groups))
            failed = await write_groups(self.mgr, decision.groups)
        if failed:
            self._mark_failed(failed)
            return RETRY_FAILED
        if decision.wake_at_ns is None:
            return None
        return max(0.0, (decision.wake_at_ns - now) / 1e9)
