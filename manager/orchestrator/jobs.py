"""The jobs orchestrator: replicated jobs and global jobs run their tasks to completion.

A run of a job is identified by the service's spec_version: every spec change starts a new run
(Docker re-runs a job when it is updated). The orchestrator records the run in the service's
JobStatus (job_iteration = spec_version, last_execution = when the run started), gives its
tasks desired COMPLETE and job_iteration, and shuts down what is left of earlier runs.

- replicated-job: slots 1..total_completions, at most max_concurrent (default: all) running at
  once, lowest free slots first. A slot is done once one of its tasks of this run completed;
  completed tasks are never restarted. A failed task is retried in its slot by the restart
  supervisor (default condition on-failure) and counts as running meanwhile; one the policy
  gave up on frees its place in max_concurrent.
- global-job: one run per eligible node (global.eligible), including nodes that join later.
Tasks on nodes that are down, drained or removed are shut down; a replicated job's slot is
then run again elsewhere.
"""

from __future__ import annotations

from manager.orchestrator import global_, restart
from manager.orchestrator.controller import Orchestrator
from manager.orchestrator.snapshot import (
    Action,
    Decision,
    Snapshot,
    create,
    for_each_service,
    stop_deadline,
    update,
)
from manager.orchestrator.tasks import (
    by_slot,
    clone,
    ended,
    holds_slot,
    live,
    mode,
    new_task,
    with_desired,
)
from proto import objects_pb2 as pb


def record_run(service: pb.Service, snap: Snapshot, decision: Decision) -> None:
    status = service.job_status
    if status.job_iteration == service.spec_version and status.last_execution_ns:
        return
    changed: pb.Service = clone(service)
    changed.job_status.job_iteration = service.spec_version
    changed.job_status.last_execution_ns = snap.now_ns
    decision.add(update(changed))


def stop_earlier_runs(service: pb.Service, tasks: list[pb.Task], decision: Decision) -> None:
    for task in tasks:
        if holds_slot(task) and task.spec_version != service.spec_version:
            decision.add(update(with_desired(task, pb.SHUTDOWN)))


def slot_state(service: pb.Service, tasks: list[pb.Task], snap: Snapshot,
               decision: Decision) -> str:
    """done, busy (running, retrying or stopping), failed (given up) or free."""
    if any(t.status.state == pb.COMPLETE for t in tasks):
        return "done"
    if any(live(t) for t in tasks):
        return "busy"
    for task in tasks:
        if holds_slot(task) and ended(task):
            result = restart.check(service, task, tasks, snap.now_ns)
            decision.wake(result.at_ns)
            return "failed" if result.verdict is restart.Verdict.GIVE_UP else "busy"
    stopping = [t for t in tasks if snap.stopping(t)]
    if stopping:
        decision.wake(min(stop_deadline(t) for t in stopping))
        return "busy"
    return "free"


def decide_replicated(service: pb.Service, tasks: list[pb.Task], snap: Snapshot,
                      decision: Decision) -> None:
    job = service.spec.replicated_job
    total = int(job.total_completions or job.max_concurrent or 1)
    limit = int(job.max_concurrent or total)
    slots = by_slot(service, [t for t in tasks if t.spec_version == service.spec_version])
    plans: list[tuple[int, str, list[Action]]] = []
    for slot in range(1, total + 1):
        actions: list[Action] = []
        slot_tasks = slots.get(slot, [])
        for task in slot_tasks:
            if live(task) and task.node_id and snap.node_lost(task.node_id):
                actions.append(update(with_desired(task, pb.SHUTDOWN)))
        moved = {a[1].id for a in actions}
        slot_tasks = [t for t in slot_tasks if t.id not in moved]
        plans.append((slot, slot_state(service, slot_tasks, snap, decision), actions))
    busy = sum(1 for _, state, _ in plans if state == "busy")
    for slot, state, actions in plans:
        if state == "free" and busy < limit:
            actions.append(create(new_task(service, snap.now_ns, slot=slot)))
            busy += 1
        decision.add(*actions)


def decide_global(service: pb.Service, tasks: list[pb.Task], snap: Snapshot,
                  decision: Decision) -> None:
    slots = by_slot(service, [t for t in tasks if t.spec_version == service.spec_version])
    for node_id, node_tasks in sorted(slots.items(), key=lambda kv: str(kv[0])):
        if not global_.keeps(service, str(node_id), snap):
            decision.add(*[update(with_desired(t, pb.SHUTDOWN)) for t in node_tasks
                           if holds_slot(t) and t.status.state != pb.COMPLETE])
    for node_id in global_.eligible(service, snap):
        if slot_state(service, slots.get(node_id, []), snap, decision) == "free":
            decision.add(create(new_task(service, snap.now_ns, node_id=node_id)))


def decide_service(service: pb.Service, tasks: list[pb.Task], snap: Snapshot) -> Decision:
    decision = Decision()
    kind = mode(service)
    if service.pending_delete or kind not in ("replicated_job", "global_job"):
        return decision
    record_run(service, snap, decision)
    stop_earlier_runs(service, tasks, decision)
    if kind == "replicated_job":
        decide_replicated(service, tasks, snap, decision)
    else:
        decide_global(service, tasks, snap, decision)
    return decision


def decide(snap: Snapshot) -> Decision:
    return for_each_service(snap, decide_service)


class JobsOrchestrator(Orchestrator):
    name = "jobs orchestrator"
    core = staticmethod(decide_service)
    modes = ("replicated_job", "global_job")
