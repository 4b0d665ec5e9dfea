"""The replicated orchestrator: a replicated service of N replicas has slots 1..N, each held by
one task (desired RUNNING).

Each pass, per service:
- a live task on a node that is down, drained or removed, or that no longer meets the task's
  placement constraints, is taken out of its slot (desired SHUTDOWN) and replaced in the same
  batch (no restart delay: the task did nothing wrong);
- live tasks of the same spec beyond the first in one slot (a former leader's stale
  decision) are taken out of it, keeping the most advanced;
- a slot in 1..N held by no task gets a new task — unless its previous task is still
  stopping on a working node (a stop-first update), in which case the slot waits for it;
- slots above N (scale-down) have their tasks marked REMOVE, the highest slots first by
  construction; the reaper deletes them once they have stopped.
Ended tasks that still hold their slot are the restart supervisor's; tasks of a spec other
than the service's are the updater's.
"""

from __future__ import annotations

from manager.orchestrator.controller import Orchestrator
from manager.orchestrator.snapshot import (
    Action,
    Decision,
    Snapshot,
    create,
    for_each_service,
    satisfies,
    stop_deadline,
    update,
)
from manager.orchestrator.tasks import (
    SlotKey,
    by_slot,
    duplicates,
    holds_slot,
    live,
    mode,
    new_task,
    not_removed,
    replicas,
    with_desired,
)
from proto import objects_pb2 as pb


def misplaced(task: pb.Task, snap: Snapshot) -> bool:
    """A live task that must leave its node."""
    if not live(task) or not task.node_id:
        return False
    if snap.node_lost(task.node_id):
        return True
    return not satisfies(snap.nodes[task.node_id], task.spec)


def decide_slot(service: pb.Service, slot: int, tasks: list[pb.Task], snap: Snapshot,
                decision: Decision) -> None:
    wanted = 1 <= slot <= replicas(service)
    if wanted and len(tasks) == 1 and holds_slot(tasks[0]) and not misplaced(tasks[0], snap):
        return  # the common case: one task, holding its slot where it should
    moved = {t.id for t in tasks if wanted and misplaced(t, snap)}
    if wanted:
        moved |= {t.id for t in duplicates(t for t in tasks if t.id not in moved)}
    actions: list[Action] = [update(with_desired(t, pb.SHUTDOWN)) for t in tasks
                             if t.id in moved]
    holders = [t for t in tasks if holds_slot(t) and t.id not in moved]
    if not wanted:
        actions += [update(with_desired(t, pb.REMOVE)) for t in holders]
    elif not holders:
        stopping = [t for t in tasks if snap.stopping(t)]
        if stopping:
            decision.wake(min(stop_deadline(t) for t in stopping))
        else:
            actions.append(create(new_task(service, snap.now_ns, slot=slot)))
    decision.add(*actions)


def decide_service(service: pb.Service, tasks: list[pb.Task], snap: Snapshot) -> Decision:
    decision = Decision()
    if service.pending_delete or mode(service) != "replicated":
        return decision
    slots = by_slot(service, tasks)
    for slot in sorted({int(k) for k in slots} | set(range(1, replicas(service) + 1))):
        decide_slot(service, slot, slots.get(slot, []), snap, decision)
    return decision


def decide_one_slot(service: pb.Service, key: SlotKey, tasks: list[pb.Task],
                    snap: Snapshot) -> Decision:
    """`decide_service` for one slot (`tasks`: every task the store has in it)."""
    decision = Decision()
    if service.pending_delete or mode(service) != "replicated":
        return decision
    decide_slot(service, int(key), not_removed(tasks), snap, decision)
    return decision


def decide(snap: Snapshot) -> Decision:
    return for_each_service(snap, decide_service)


class ReplicatedOrchestrator(Orchestrator):
    name = "replicated orchestrator"
    core = staticmethod(decide_service)
    modes = ("replicated",)
    slot_core = staticmethod(decide_one_slot)
