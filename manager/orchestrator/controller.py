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
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from manager.errors import ManagerError, Unavailable
from manager.manager import Manager
from manager.orchestrator.snapshot import Decision, Group, Snapshot, SnapshotCache
from manager.orchestrator.tasks import progress_only
from manager.runtime import Controller
from manager.store.memory import Event, StoreView
from proto import objects_pb2 as pb
from proto import store_pb2

log = logging.getLogger(__name__)

RETRY_FAILED = 0.5  # seconds before deciding again after some groups could not be written

MAX_ACTIONS = 200
IN_FLIGHT = 8
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


async def write_groups(mgr: Manager, groups: list[Group]) -> int:
    """Write the groups, fenced by the leadership epoch, IN_FLIGHT batches at a time (each
    commit waits for Raft's append timer, so batches in flight share it); returns how many
    groups could not be written."""
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def one(chunk: list[Group]) -> int:
        async with limit:
            return await _write_chunk(mgr, chunk)

    return sum(await asyncio.gather(*(one(chunk) for chunk in batches(groups))))


async def _write_chunk(mgr: Manager, chunk: list[Group]) -> int:
    try:
        await mgr.write(*[a for g in chunk for a in g], fenced=True)
        return 0
    except Unavailable:
        raise
    except ManagerError as err:
        if len(chunk) == 1:
            log.debug("write skipped: %s", err)
            return 1
    failed = 0
    for group in chunk:  # find the groups that went stale; write the others
        try:
            await mgr.write(*group, fenced=True)
        except Unavailable:
            raise
        except ManagerError as err:
            log.debug("write skipped: %s", err)
            failed += 1
    return failed


async def write_each(mgr: Manager, objs: Sequence[Any]) -> bool:
    """UPDATE each object (at the version it was read), many to a batch; True if all were
    written (a lost race leaves an object for the next pass)."""
    return not await write_groups(mgr, [[(store_pb2.UPDATE, o)] for o in objs])


class Orchestrator(Controller):
    """Subclasses set `name` and `core`, the module's pure `decide_service(service, tasks,
    snapshot)`.

    A pass decides only the services whose inputs changed since the last (their own or
    their tasks' changes, found from store events; any node or cluster change concerns
    them all) and those whose wake-up time came. A task's report on its way up changes no
    decision (`progress_only`) and is not a change here; RUNNING is one only for an
    orchestrator that sets `running_matters` (the updater waits for it)."""

    name = "orchestrator"
    core: ClassVar[Any] = None
    running_matters = False

    coalesce = PASS_INTERVAL

    def __init__(self, manager: Manager, snapshots: SnapshotCache | None = None) -> None:
        self.mgr = manager
        self.snapshots = snapshots or SnapshotCache()
        self._lock = threading.Lock()  # the Raft thread marks, the loop takes
        self._changed: set[str] = set()  # service IDs
        self._everything = True
        self._wakes: dict[str, int] = {}  # service ID → wake-up time its last decision asked

    def decide_service(self, service: pb.Service, tasks: list[pb.Task],
                       snap: Snapshot) -> Decision:
        core = type(self).core
        if core is None:
            raise TypeError(f"{type(self).__name__} sets no decision core")
        return core(service, tasks, snap)  # type: ignore[no-any-return]

    # -- what changed (relevant() runs on the Raft thread) --

    def relevant(self, event: Event) -> bool:
        objs = [o for o in (event.old, event.new) if o is not None]
        if event.table == "task":
            if progress_only(event.old, event.new, through_running=not self.running_matters):
                return False
            ids = {str(o.service_id) for o in objs}
        elif event.table == "service":
            ids = {str(o.id) for o in objs}
        elif event.table in ("node", "cluster"):
            with self._lock:
                self._everything = True
            return True
        else:
            return False  # networks, secrets, configs: no orchestrator reads them
        with self._lock:
            self._changed |= ids
        return True

    def _take_changed(self) -> set[str] | None:
        """The services marked since the last take (None: every service)."""
        with self._lock:
            changed, self._changed = self._changed, set()
            everything, self._everything = self._everything, False
        return None if everything else changed

    # -- deciding --

    def decide(self, snap: Snapshot, changed: set[str] | None = None) -> Decision:
        """Decide the services in `changed` (None: all) and those whose wake-up came."""
        decision = Decision()
        wakes: dict[str, int] = {}
        for service in snap.services.values():
            due = self._wakes.get(service.id)
            if changed is not None and service.id not in changed and \
                    (due is None or snap.now_ns < due):
                if due is not None:
                    wakes[service.id] = due
                    decision.wake(due)
                continue
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
            self._everything = True
        self._wakes.clear()

    async def run(self, view: StoreView) -> float | None:
        changed = self._take_changed()
        # The view is taken after the marks: every change marked so far is in it (the
        # store installs a view before it tells its watchers).
        view = self.mgr.view()
        now = time.time_ns()
        decision = self.decide(self.snapshots.get(view, now), changed)
        failed = 0
        if decision.groups:
            log.debug("%s: writing %d actions in %d groups", self.name,
                      sum(len(g) for g in decision.groups), len(decision.groups))
            failed = await write_groups(self.mgr, decision.groups)
        if failed:
            with self._lock:
                self._everything = True
            return RETRY_FAILED
        if decision.wake_at_ns is None:
            return None
        return max(0.0, (decision.wake_at_ns - now) / 1e9)
