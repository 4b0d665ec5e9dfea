"""The rolling updater of replicated and global services (jobs start a new run instead).

A slot is dirty when the tasks holding it were made from a task spec other than the service's
(a spec change, `--force`, a rollback). The update runs in batches of `parallelism` dirty
slots (0: all), lowest slots first:
- stop-first: the old task is shut down; the replicated/global orchestrator fills the slot
  with a new task once the old one has stopped;
- start-first: a new task is started in the slot next to the old one, and the old one is shut
  down only once the new one is RUNNING, so the running count never drops below the replicas.
The next batch starts when no slot touched by the update is still on its way (every new task is
RUNNING or has ended) and `delay` has passed since the last one came up or ended. Tasks of the
new spec that end by themselves (failed, rejected, exited) count as failures; more than
max_failure_ratio × slots triggers the failure action: pause (PAUSED, with the task in the
message), continue, or rollback (the spec goes back to previous_spec, then the same procedure
with the rollback config). `monitor` after the last new task came up (or ended), the update is
COMPLETED (or ROLLBACK_COMPLETED).

All state is in the store — UpdateStatus (state, started_at) on the service and each task's spec
and times — so a new leader resumes where the old one stopped: every pass recomputes the batch
boundaries from the tasks, and actions for a slot are single batches (a new task is only made
for a slot that has none of the new spec).

The API's part: on a spec change it clears update_status (state UNKNOWN; the updater sets
UPDATING when it finds dirty slots); for `service rollback` it sets spec = previous_spec, bumps
spec_version and sets ROLLBACK_STARTED "manually requested rollback" with started_at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from manager.orchestrator import global_
from manager.orchestrator.controller import Orchestrator
from manager.orchestrator.snapshot import Decision, Snapshot, create, for_each_service, update
from manager.orchestrator.tasks import (
    ENDED_BY_ITSELF,
    SlotKey,
    by_slot,
    clone,
    ended,
    holds_slot,
    is_global,
    is_job,
    live,
    new_task,
    orchestrated,
    replicas,
    rollout,
    with_desired,
)
from manager.rules.uptodate import is_current
from proto import objects_pb2 as pb

US = pb.UpdateStatus
ACTIVE = (US.UPDATING, US.ROLLBACK_STARTED)
PAUSED = (US.PAUSED, US.ROLLBACK_PAUSED)
ROLLING_BACK = (US.ROLLBACK_STARTED, US.ROLLBACK_PAUSED)


@dataclass
class Survey:
    """The service's slots as the updater sees them."""
    total: int = 0
    dirty: list[SlotKey] = field(default_factory=list)  # only old tasks hold these
    promote: list[pb.Task] = field(default_factory=list)  # old tasks next to a running new one
    in_flight: bool = False  # a touched slot has no running task of the new spec yet
    last_change_ns: int = 0  # when a task of this update last came up or ended


def slot_keys(service: pb.Service, snap: Snapshot) -> list[SlotKey]:
    if is_global(service):
        return list(global_.eligible(service, snap))  # paused nodes keep what they run
    return list(range(1, replicas(service) + 1))


def survey(service: pb.Service, tasks: list[pb.Task], snap: Snapshot,
           started_ns: int) -> Survey:
    view = Survey()
    slots = by_slot(service, tasks)
    keys = slot_keys(service, snap)
    view.total = len(keys)
    for key in keys:
        slot_tasks = slots.get(key, [])
        current = [is_current(service, t) for t in slot_tasks]
        old = [t for t, cur in zip(slot_tasks, current, strict=True) if holds_slot(t) and not cur]
        new = [t for t, cur in zip(slot_tasks, current, strict=True) if holds_slot(t) and cur]
        up = [t for t in new if t.status.state == pb.RUNNING]
        if old and up:
            view.promote += old
        elif old and not new:
            view.dirty.append(key)
        elif not old and not new:
            view.in_flight = True  # stopping, or about to be filled by the orchestrator
        if not started_ns:
            continue  # no update in progress: nothing more to know
        ours = [t for t, cur in zip(slot_tasks, current, strict=True)
                if cur and t.meta.created_at_ns >= started_ns]
        if any(live(t) and t.status.state != pb.RUNNING for t in ours):
            view.in_flight = True
        first = min(ours, key=lambda t: t.meta.created_at_ns, default=None)
        if first is not None and (first.status.state == pb.RUNNING or ended(first)):
            # the slot's first new task (later ones are restarts) came up or ended
            view.last_change_ns = max(view.last_change_ns, int(first.meta.updated_at_ns))
    view.dirty.sort(key=str if is_global(service) else int)  # type: ignore[arg-type]
    return view


def failures(service: pb.Service, tasks: list[pb.Task], started_ns: int) -> list[pb.Task]:
    """Tasks of the new spec made during this update that ended by themselves, oldest first."""
    failed = [t for t in tasks if is_current(service, t) and t.meta.created_at_ns >= started_ns
              and t.status.state in ENDED_BY_ITSELF]
    return sorted(failed, key=lambda t: (t.meta.updated_at_ns, t.id))


def with_status(service: pb.Service, state: int, message: str, now_ns: int,
                start: bool = False) -> pb.Service:
    changed: pb.Service = clone(service)
    status = changed.update_status
    status.state = state  # type: ignore[assignment]
    status.message = message
    if start:
        status.started_at_ns = now_ns
        status.completed_at_ns = 0
    if state in (US.COMPLETED, US.ROLLBACK_COMPLETED):
        status.completed_at_ns = now_ns
    return changed


def rolled_back(service: pb.Service, message: str, now_ns: int) -> pb.Service:
    changed = with_status(service, US.ROLLBACK_STARTED, message, now_ns, start=True)
    changed.spec.CopyFrom(service.previous_spec)
    changed.ClearField("previous_spec")
    changed.has_previous_spec = False
    changed.spec_version = service.spec_version + 1
    return changed


def on_failure(service: pb.Service, action: int, task: pb.Task, now_ns: int) -> pb.Service:
    """The service after the failure action (not CONTINUE) for the failed task."""
    why = f"due to failure or early termination of task {task.id}"
    if service.update_status.state in ROLLING_BACK:
        return with_status(service, US.ROLLBACK_PAUSED, f"rollback paused {why}", now_ns)
    if action == pb.UpdateConfig.ROLLBACK:
        if service.has_previous_spec:
            return rolled_back(service, f"update rolled back {why}", now_ns)
        why += "; there is no previous spec to roll back to"
    return with_status(service, US.PAUSED, f"update paused {why}", now_ns)


def replace_slot(service: pb.Service, key: SlotKey, slot_tasks: list[pb.Task], start_first: bool,
                 snap: Snapshot, decision: Decision) -> None:
    old = [t for t in slot_tasks if holds_slot(t)]
    if isinstance(key, str):
        successor = new_task(service, snap.now_ns, node_id=key)
    else:
        successor = new_task(service, snap.now_ns, slot=key)
    if start_first and any(live(t) for t in old):
        decision.add(create(successor))
    elif any(live(t) for t in old):
        # stop-first: the orchestrator fills the slot once the old task has stopped
        decision.add(*[update(with_desired(t, pb.SHUTDOWN)) for t in old])
    else:
        decision.add(*[update(with_desired(t, pb.SHUTDOWN)) for t in old], create(successor))


def next_batch(service: pb.Service, tasks: list[pb.Task], view: Survey, snap: Snapshot,
               decision: Decision) -> None:
    cfg = rollout(service, service.update_status.state in ROLLING_BACK)
    if view.in_flight:
        return
    not_before = view.last_change_ns + cfg.delay_ns if view.last_change_ns else 0
    if snap.now_ns < not_before:
        decision.wake(not_before)
        return
    slots = by_slot(service, tasks)
    batch = view.dirty[:cfg.parallelism] if cfg.parallelism else view.dirty
    for key in batch:
        replace_slot(service, key, slots.get(key, []), cfg.order == pb.UpdateConfig.START_FIRST,
                     snap, decision)


def finish(service: pb.Service, view: Survey, snap: Snapshot, decision: Decision) -> None:
    if view.in_flight or view.promote:
        return
    cfg = rollout(service, service.update_status.state in ROLLING_BACK)
    done_at = view.last_change_ns + cfg.monitor_ns if view.last_change_ns else 0
    if snap.now_ns < done_at:
        decision.wake(done_at)
    elif service.update_status.state == US.ROLLBACK_STARTED:
        # Keep why it rolled back: the reason is what a user looks for in `service inspect`.
        why = service.update_status.message
        message = f"rollback completed ({why})" if why else "rollback completed"
        decision.add(update(with_status(service, US.ROLLBACK_COMPLETED, message, snap.now_ns)))
    else:
        decision.add(update(with_status(service, US.COMPLETED, "update completed",
                                        snap.now_ns)))


def decide_service(service: pb.Service, tasks: list[pb.Task], snap: Snapshot) -> Decision:
    decision = Decision()
    if not orchestrated(service) or is_job(service):
        return decision
    state = service.update_status.state
    if state not in ACTIVE and all(t.spec_version == service.spec_version
                                   for t in tasks if holds_slot(t)):
        return decision  # every task is of the current spec: nothing to update or promote
    started = int(service.update_status.started_at_ns) if state in ACTIVE + PAUSED else 0
    view = survey(service, tasks, snap, started)
    decision.add(*[update(with_desired(t, pb.SHUTDOWN)) for t in view.promote])
    if state in PAUSED:
        return decision
    if state not in ACTIVE:
        if view.dirty:
            decision.add(update(with_status(service, US.UPDATING, "update in progress",
                                            snap.now_ns, start=True)))
        return decision
    cfg = rollout(service, state in ROLLING_BACK)
    failed = failures(service, tasks, started)
    if cfg.failure_action != pb.UpdateConfig.CONTINUE and \
            len(failed) > cfg.max_failure_ratio * max(view.total, 1):
        decision.add(update(on_failure(service, cfg.failure_action, failed[-1], snap.now_ns)))
    elif view.dirty:
        next_batch(service, tasks, view, snap, decision)
    else:
        finish(service, view, snap, decision)
    return decision


def decide_one_slot(service: pb.Service, key: SlotKey, tasks: list[pb.Task],
                    snap: Snapshot) -> Decision | None:
    """Nothing to do when no update is under way and the slot's tasks are of the current
    spec (what `decide_service` finds then too); anything else is decided over the whole
    service (batches span slots)."""
    if not orchestrated(service) or is_job(service):
        return Decision()
    if service.update_status.state in ACTIVE + PAUSED:
        return None
    if all(t.spec_version == service.spec_version for t in tasks if holds_slot(t)):
        return Decision()
    return None


def decide(snap: Snapshot) -> Decision:
    return for_each_service(snap, decide_service)


class Updater(Orchestrator):
    name = "updater"
    running_matters = True  # the next batch starts once the last one runs
    core = staticmethod(decide_service)
    slot_core = staticmethod(decide_one_slot)
