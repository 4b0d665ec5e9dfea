"""The restart supervisor: what happens to a task that ended while it still held its slot
(desired RUNNING, or COMPLETE for a job) — it failed, was rejected, completed, or stopped
without being asked to.

The restart policy decides (Docker's defaults: condition any, delay 5 s, unlimited attempts;
jobs: on-failure):
- condition none, or on-failure for a task that completed: the task keeps its slot and is not
  replaced (a job task that completed is its slot's success);
- more ended tasks in the slot than max_attempts (among those of the current spec, within the
  window if one is set): the same, until old attempts leave the window;
- if another task of the slot is still live (a start-first update started one), the ended task
  just leaves the slot (desired SHUTDOWN), at once and without a successor;
- otherwise, once `delay` has passed since the task ended, the task is taken out of its slot
  (desired SHUTDOWN) and a successor is created in the same slot (global: on the same node),
  both in one batch.

Everything is read from the store — when the task ended is its last write time — so a new
leader carries on with the same decisions. During the delay the ended task stays visible in
`service ps` with its error: a service of an image that does not exist shows a rejected task
every `delay`, not a hidden tight loop.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from manager.orchestrator.controller import Orchestrator
from manager.orchestrator.snapshot import Decision, Snapshot, create, for_each_service, update
from manager.orchestrator.tasks import (
    ENDED_BY_ITSELF,
    SlotKey,
    by_slot,
    ended,
    ended_at,
    holds_slot,
    is_global,
    is_job,
    live,
    mode,
    new_task,
    not_removed,
    orchestrated,
    replicas,
    restart_policy,
    with_desired,
)
from manager.rules.uptodate import is_current
from proto import objects_pb2 as pb


class Verdict(enum.Enum):
    RESTART = "restart"  # replace it now
    WAIT = "wait"  # replace it at `at_ns`
    DONE = "done"  # a job task that completed
    GIVE_UP = "give up"  # keep it as it is (re-examined at `at_ns` if set)


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    at_ns: int | None = None


def attempts(service: pb.Service, slot_tasks: list[pb.Task], now_ns: int) -> list[pb.Task]:
    """Tasks of the current spec in this slot that ended by themselves (within the window)."""
    policy = restart_policy(service)
    found = []
    for task in slot_tasks:
        if not is_current(service, task):
            continue
        ended_itself = task.status.state in ENDED_BY_ITSELF or (
            holds_slot(task) and ended(task))
        if not ended_itself or (is_job(service) and task.status.state == pb.COMPLETE):
            continue
        if policy.window_ns and ended_at(task) < now_ns - policy.window_ns:
            continue
        found.append(task)
    return found


def check(service: pb.Service, task: pb.Task, slot_tasks: list[pb.Task], now_ns: int) -> Check:
    """The restart decision for `task`, which holds its slot and has ended."""
    state = task.status.state
    if is_job(service) and state == pb.COMPLETE:
        return Check(Verdict.DONE)
    policy = restart_policy(service)
    if policy.condition == pb.RestartPolicy.NONE:
        return Check(Verdict.GIVE_UP)
    if policy.condition == pb.RestartPolicy.ON_FAILURE and state == pb.COMPLETE:
        return Check(Verdict.GIVE_UP)
    if policy.max_attempts:
        tried = attempts(service, slot_tasks, now_ns)
        if len(tried) > policy.max_attempts:
            again = None
            if policy.window_ns:
                again = min(ended_at(t) for t in tried) + policy.window_ns + 1
            return Check(Verdict.GIVE_UP, again)
    at = ended_at(task) + policy.delay_ns
    if now_ns < at:
        return Check(Verdict.WAIT, at)
    return Check(Verdict.RESTART)


def successor(service: pb.Service, task: pb.Task, now_ns: int) -> pb.Task:
    if is_global(service):
        return new_task(service, now_ns, node_id=task.node_id)
    return new_task(service, now_ns, slot=int(task.slot))


def decide_service(service: pb.Service, tasks: list[pb.Task], snap: Snapshot) -> Decision:
    decision = Decision()
    if not orchestrated(service) or not any(holds_slot(t) and ended(t) for t in tasks):
        return decision
    for key, slot_tasks in by_slot(service, tasks).items():
        restart_slot(service, key, slot_tasks, snap, decision)
    return decision


def decide_one_slot(service: pb.Service, key: SlotKey, tasks: list[pb.Task],
                    snap: Snapshot) -> Decision:
    """`decide_service` for one slot (`tasks`: every task the store has in it)."""
    decision = Decision()
    if orchestrated(service):
        restart_slot(service, key, not_removed(tasks), snap, decision)
    return decision


def restart_slot(service: pb.Service, key: SlotKey, slot_tasks: list[pb.Task], snap: Snapshot,
                 decision: Decision) -> None:
    if mode(service) == "replicated" and not 1 <= int(key) <= replicas(service):
        return  # scaled away: the replicated orchestrator removes it
    for task in slot_tasks:
        if not holds_slot(task) or not ended(task):
            continue
        if is_job(service) and task.spec_version != service.spec_version:
            continue  # a previous run of the job: the jobs orchestrator stops it
        if is_global(service) and snap.node_lost(task.node_id):
            continue  # the global orchestrator takes it out of the node
        if is_job(service) and task.status.state == pb.COMPLETE:
            continue  # done
        if any(live(t) for t in slot_tasks if t.id != task.id):
            # Another task holds the slot (start-first update): no successor needed.
            decision.add(update(with_desired(task, pb.SHUTDOWN)))
            continue
        result = check(service, task, slot_tasks, snap.now_ns)
        if result.verdict is Verdict.RESTART:
            decision.add(update(with_desired(task, pb.SHUTDOWN)),
                         create(successor(service, task, snap.now_ns)))
        decision.wake(result.at_ns)


def decide(snap: Snapshot) -> Decision:
    return for_each_service(snap, decide_service)


class RestartSupervisor(Orchestrator):
    name = "restart supervisor"
    core = staticmethod(decide_service)
    slot_core = staticmethod(decide_one_slot)
