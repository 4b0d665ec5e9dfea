"""The thin part of every orchestrator: on each leader tick, if the store changed or a wake-up
time passed, run the decision core over a snapshot and write its groups through Raft.

Groups are packed into batches of at most MAX_ACTIONS actions, never split. A batch that
fails (an object changed since it was read: version race, already gone) is retried group by
group, so one stale task does not hold back the others; groups that still fail are decided
again from a fresh snapshot on the next tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from manager.errors import ManagerError, Unavailable
from manager.manager import Manager
from manager.orchestrator.snapshot import (
    Decision,
    Group,
    Snapshot,
    SnapshotCache,
)
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

MAX_ACTIONS = 200


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
    """Write the groups; returns how many could not be written."""
    failed = 0
    for chunk in batches(groups):
        try:
            await mgr.write(*[a for g in chunk for a in g])
            continue
        except Unavailable:
            raise
        except ManagerError as err:
            if len(chunk) == 1:
                log.debug("orchestrator write skipped: %s", err)
                failed += 1
                continue
        for group in chunk:
            try:
                await mgr.write(*group)
            except Unavailable:
                raise
            except ManagerError as err:
                log.debug("orchestrator write skipped: %s", err)
                failed += 1
    return failed


class Controller:
    """Subclasses set `name` and implement `decide_service(service, tasks, snapshot)`.

    A service whose fingerprint (its version, its tasks' versions, the nodes', the
    cluster's) did not change since a pass that decided nothing for it is skipped, until
    the wake-up time that pass asked for."""

    name = "orchestrator"
    # The module's pure decide_service (a staticmethod: typed loosely, as mypy would bind it).
    core: ClassVar[Any] = None

    def __init__(self, manager: Manager, snapshots: SnapshotCache | None = None) -> None:
        self.mgr = manager
        self.snapshots = snapshots or SnapshotCache(manager.store)
        self._seen_version = -1
        self._wake_at: int | None = None
        self._quiet: dict[str, tuple[tuple[int, ...], int | None]] = {}
        self._running = True
        manager.on_leader_tick(self.tick)

    def decide_service(self, service: pb.Service, tasks: list[pb.Task],
                       snap: Snapshot) -> Decision:
        core = type(self).core
        if core is None:
            raise TypeError(f"{type(self).__name__} sets no decision core")
        return core(service, tasks, snap)

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
            decision.merge(result)
        self._quiet = quiet
        return decision

    def stop(self) -> None:
        self._running = False

    async def tick(self, became_leader: bool) -> None:
        if not self._running:
            return
        now = time.time_ns()
        version = self.mgr.store.version
        due = self._wake_at is not None and now >= self._wake_at
        if not became_leader and version == self._seen_version and not due:
            return
        if became_leader:
            self._quiet.clear()
        snap = self.snapshots.get(now)
        decision = self.decide(snap)
        self._seen_version = snap.version
        self._wake_at = decision.wake_at_ns
        if not decision.groups:
            return
        actions = sum(len(g) for g in decision.groups)
        log.debug("%s: writing %d actions in %d groups", self.name, actions,
                  len(decision.groups))
        try:
            failed = await write_groups(self.mgr, decision.groups)
        except Unavailable as err:
            log.info("%s: no quorum to write (%s); trying again next tick", self.name, err)
            failed = 1
        if failed:
            self._seen_version = -1  # decide again on the next tick
