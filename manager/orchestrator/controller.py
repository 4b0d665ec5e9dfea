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
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from manager.errors import ManagerError, Unavailable
from manager.manager import Manager
from manager.orchestrator.snapshot import Decision, Group, Snapshot, SnapshotCache
from manager.runtime import Controller
from manager.store.memory import StoreView
from proto import objects_pb2 as pb
from proto import store_pb2

log = logging.getLogger(__name__)

RETRY_FAILED = 0.5  # seconds before deciding again after some groups could not be written

MAX_ACTIONS = 200
IN_FLIGHT = 8
# An orchestrator's pass reads every service (those whose inputs did not change are skipped
# by fingerprint): under a stream of changes it runs at most about this often.
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

    A service whose fingerprint (its version, its tasks' versions, the nodes', the
    cluster's) did not change since a pass that decided nothing for it is skipped, until
    the wake-up time that pass asked for."""

    name = "orchestrator"
    core: ClassVar[Any] = None

    coalesce = PASS_INTERVAL

    def __init__(self, manager: Manager, snapshots: SnapshotCache | None = None) -> None:
        self.mgr = manager
        self.snapshots = snapshots or SnapshotCache()
        self._quiet: dict[str, tuple[tuple[int, ...], int | None]] = {}

    def decide_service(self, service: pb.Service, tasks: list[pb.Task],
                       snap: Snapshot) -> Decision:
        core = type(self).core
        if core is None:
            raise TypeError(f"{type(self).__name__} sets no decision core")
        return core(service, tasks, snap)  # type: ignore[no-any-return]

    def decide(self, snap: Snapshot) -> Decision:
        decision = Decision()
        quiet: dict[str, tuple[tuple[int, ...], int | None]] = {}
        for service in snap.services.values():
            key = snap.fingerprint(service)
            before = self._quiet.get(service.id)
            if before is not None and before[0] == key and \
                    (before[1] is None or snap.now_ns < before[1]):
                quiet[service.id] = before
                decision.wake(before[1])
                continue
            result = self.decide_service(service, snap.tasks_of(service.id), snap)
            if not result.groups:
                quiet[service.id] = (key, result.wake_at_ns)
            else:
                self._log_decision(service, result)
            decision.merge(result)
        self._quiet = quiet
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
        self._quiet.clear()  # a new term decides everything afresh

    async def run(self, view: StoreView) -> float | None:
        now = time.time_ns()
        decision = self.decide(self.snapshots.get(view, now))
        failed = 0
        if decision.groups:
            log.debug("%s: writing %d actions in %d groups", self.name,
                      sum(len(g) for g in decision.groups), len(decision.groups))
            failed = await write_groups(self.mgr, decision.groups)
        if failed:
            self._quiet.clear()
            return RETRY_FAILED
        if decision.wake_at_ns is None:
            return None
        return max(0.0, (decision.wake_at_ns - now) / 1e9)
