"""The task reaper: deletes tasks nobody needs any more.

- History: each slot (each node for global modes) keeps at most the cluster's
  task_history_retention_limit tasks (default 5), counting the one that holds the slot, as
  Docker does; the oldest others go first. A slot with a restart max_attempts keeps enough of
  them to count the attempts. Slots above the replica count and nodes that were removed keep
  none.
- Desired REMOVE (scale-down): deleted once stopped.
- Removed services (the API sets `pending_delete`): their tasks are marked REMOVE, deleted once
  stopped, and then the service itself is deleted. (Tasks whose service is not in the store,
  and services without a mode, which the API never writes, are left alone.)
A task is deleted only once it is out of its slot and has stopped, never reached a node, or
its node is down or removed (the agent stops and removes a task that left its assignments).
"""

from __future__ import annotations

from collections import defaultdict

from manager.orchestrator.controller import Orchestrator
from manager.orchestrator.snapshot import Decision, Snapshot, delete, for_each_service, update
from manager.orchestrator.tasks import (
    SlotKey,
    ended,
    holds_slot,
    is_global,
    mode,
    not_removed,
    replicas,
    restart_policy,
    with_desired,
)
from manager.store.view import slot_key
from proto import objects_pb2 as pb


def deletable(task: pb.Task, snap: Snapshot) -> bool:
    """Out of its slot and stopped, never placed, or its node is down or removed (an agent
    stops and removes a task that left its assignments when it comes back)."""
    if holds_slot(task):
        return False
    if ended(task) or task.status.state < pb.ASSIGNED:
        return True
    node = snap.nodes.get(task.node_id)
    return node is None or node.status.state == pb.NODE_DOWN


def by_age(tasks: list[pb.Task]) -> list[pb.Task]:
    """Newest first."""
    return sorted(tasks, key=lambda t: (t.meta.created_at_ns, t.meta.version.index),
                  reverse=True)


def slot_gone(service: pb.Service, key: SlotKey, snap: Snapshot) -> bool:
    if is_global(service):
        return key not in snap.nodes
    return mode(service) == "replicated" and not 1 <= int(key) <= replicas(service)


def history_limit(service: pb.Service, snap: Snapshot) -> int:
    """Tasks kept per slot; enough to count the restart attempts."""
    limit = snap.history_limit()
    attempts = restart_policy(service).max_attempts
    return max(limit, attempts + 1) if attempts else limit


def prune_slot(service: pb.Service, key: SlotKey, tasks: list[pb.Task], limit: int,
               snap: Snapshot, decision: Decision) -> None:
    if slot_gone(service, key, snap) and not any(holds_slot(t) for t in tasks):
        limit = 0
    elif len(tasks) <= limit:
        return
    kept = 0
    for task in by_age(tasks):
        if kept < limit or not deletable(task, snap):
            kept += 1
        else:
            decision.add(delete(task))


def remove_all(tasks: list[pb.Task], snap: Snapshot, decision: Decision) -> None:
    for task in tasks:
        if task.desired_state != pb.REMOVE:
            task = with_desired(task, pb.REMOVE)
            if not deletable(task, snap):
                decision.add(update(task))
                continue
        if deletable(task, snap):
            decision.add(delete(task))


def decide_service(service: pb.Service | None, tasks: list[pb.Task],
                   snap: Snapshot) -> Decision:
    decision = Decision()
    if service is None or not (mode(service) or service.pending_delete):
        return decision  # tasks nobody orchestrates: left alone
    if service.pending_delete:
        remove_all(tasks, snap, decision)
        if not tasks:
            decision.add(delete(service))
        return decision
    slots: dict[SlotKey, list[pb.Task]] = defaultdict(list)
    for task in tasks:
        slots[slot_key(task)].append(task)
    for key, slot_tasks in slots.items():
        reap_slot(service, key, slot_tasks, snap, decision)
    return decision


def decide_one_slot(service: pb.Service, key: SlotKey, tasks: list[pb.Task],
                    snap: Snapshot) -> Decision | None:
    """`decide_service` for one slot (`tasks`: every task the store has in it); a removed
    service is decided whole (it is deleted with its last task)."""
    decision = Decision()
    if not (mode(service) or service.pending_delete):
        return decision
    if service.pending_delete:
        return None
    reap_slot(service, key, tasks, snap, decision)
    return decision


def reap_slot(service: pb.Service, key: SlotKey, tasks: list[pb.Task], snap: Snapshot,
              decision: Decision) -> None:
    for task in tasks:
        if task.desired_state == pb.REMOVE and deletable(task, snap):
            decision.add(delete(task))
    limit = history_limit(service, snap)
    kept = not_removed(tasks)
    if limit >= 0 and kept:
        prune_slot(service, key, kept, limit, snap, decision)


def decide(snap: Snapshot) -> Decision:
    return for_each_service(snap, decide_service)


class TaskReaper(Orchestrator):
    name = "task reaper"
    core = staticmethod(decide_service)
    slot_core = staticmethod(decide_one_slot)
