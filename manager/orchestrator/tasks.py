"""What the orchestrators agree on about tasks and services: which tasks hold a slot, which
have ended, the defaults of the restart and update policies, and how a new task is made.

Desired states the orchestrators write: RUNNING (services), COMPLETE (jobs), SHUTDOWN (taken
out of its slot: replaced, drained, stopped for an update) and REMOVE (scale-down, service
removal; the reaper deletes it once stopped). A task "holds its slot" while its desired state
is RUNNING or COMPLETE, even after it ended: the restart supervisor then decides, after the
restart delay, whether it gets a successor.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from manager.identity import new_id
from manager.rules.uptodate import is_job as rules_is_job
from manager.store.view import StoreView
from proto import objects_pb2 as pb

SECOND = 1_000_000_000
DEFAULT_RESTART_DELAY = 5 * SECOND
DEFAULT_MONITOR = 5 * SECOND
DEFAULT_STOP_GRACE = 10 * SECOND
# A stopping task whose node never reports it stopped stops holding its slot after its stop
# grace period plus this much (its node is then unresponsive without being marked down yet).
STOP_WAIT_EXTRA = 30 * SECOND

SlotKey = int | str  # the slot number, or the node ID for global services and jobs

# Statuses a task reaches by itself: it ran (or tried to) and stopped.
ENDED_BY_ITSELF = frozenset({pb.COMPLETE, pb.FAILED, pb.REJECTED})


def clone(obj: Any) -> Any:
    """A copy to modify: snapshot objects are shared by the controllers and never mutated."""
    copy = type(obj)()
    copy.CopyFrom(obj)
    return copy


def holds_slot(task: pb.Task) -> bool:
    """Desired RUNNING (or READY) for services, COMPLETE for jobs."""
    return bool(task.desired_state <= pb.COMPLETE)


def ended(task: pb.Task) -> bool:
    """The task is past RUNNING: complete, shut down, failed, rejected or orphaned."""
    return bool(task.status.state >= pb.COMPLETE)


def progress_only(old: pb.Task | None, new: pb.Task | None, through_running: bool) -> bool:
    """The change moves a task that holds its slot forward on its way up (allocated:
    PENDING; then the agent's reports ACCEPTED ... STARTING, and RUNNING too when
    `through_running`) and nothing else an orchestrator reads changed: it cannot change
    their decisions. Being placed on a node is not such a change (its node is read). Most
    writes of a burst of starts are progress."""
    if old is None or new is None:
        return False
    last = pb.RUNNING if through_running else pb.STARTING
    return bool(old.status.state < new.status.state and pb.PENDING <= new.status.state <= last
                and new.desired_state == old.desired_state <= pb.COMPLETE
                and new.node_id == old.node_id and new.spec_version == old.spec_version)


def live(task: pb.Task) -> bool:
    """Holds its slot and has not ended: starting, running, or on its way there."""
    return holds_slot(task) and not ended(task)


def duplicates(tasks: Iterable[pb.Task]) -> list[pb.Task]:
    """Live tasks of one slot made from the same spec, beyond the one to keep (a former
    leader's stale decision can leave two): the most advanced, then the oldest, stays. Two
    tasks of different specs in a slot are a start-first update, not duplicates."""
    by_spec: dict[int, list[pb.Task]] = defaultdict(list)
    for task in tasks:
        if live(task):
            by_spec[int(task.spec_version)].append(task)
    surplus: list[pb.Task] = []
    for group in by_spec.values():
        group.sort(key=lambda t: (-t.status.state, t.meta.created_at_ns, t.id))
        surplus += group[1:]
    return surplus


def ended_at(task: pb.Task) -> int:
    """When the task was last written (for an ended task, about when it ended), on the
    managers' clock."""
    return int(task.meta.updated_at_ns or task.meta.created_at_ns)


# -- services --

def mode(service: pb.Service) -> str:
    """replicated, global, replicated_job or global_job; "" for a service without a mode,
    which the API never writes and the orchestrators leave alone."""
    return service.spec.WhichOneof("mode") or ""


def orchestrated(service: pb.Service) -> bool:
    return bool(mode(service)) and not service.pending_delete


def is_job(service: pb.Service) -> bool:
    return rules_is_job(service.spec)


def is_global(service: pb.Service) -> bool:
    return mode(service) in ("global", "global_job")


def unplaced(view: StoreView) -> list[pb.Task]:
    """The tasks that can still be NEW or PENDING, from the indexes rather than a scan of
    every task: those on no node, those of global services (made for their node) and those of
    no service (a container's network attachment, made for its node)."""
    found = {t.id: t for t in view.tasks_on_node("")}
    found.update((t.id, t) for t in view.tasks_of_service(""))
    for service in view.list(pb.Service):
        if is_global(service):
            found.update((t.id, t) for t in view.tasks_of_service(service.id))
    return sorted(found.values(), key=lambda t: (t.meta.created_at_ns, t.service_id, t.slot, t.id))


def replicas(service: pb.Service) -> int:
    return int(service.spec.replicated.replicas)


def not_removed(tasks: Iterable[pb.Task]) -> list[pb.Task]:
    """The tasks not being removed (scale-down, service removal): those a slot counts."""
    return [t for t in tasks if t.desired_state != pb.REMOVE]


def by_slot(service: pb.Service, tasks: Iterable[pb.Task]) -> dict[SlotKey, list[pb.Task]]:
    """Tasks grouped by slot (node for global modes), without those being removed."""
    slots: dict[SlotKey, list[pb.Task]] = defaultdict(list)
    per_node = is_global(service)
    for task in not_removed(tasks):
        slots[task.node_id if per_node else int(task.slot)].append(task)
    return slots


def new_task(service: pb.Service, now_ns: int, slot: int = 0, node_id: str = "") -> pb.Task:
    task = pb.Task(id=new_id(), service_id=service.id, slot=slot, node_id=node_id,
                   spec_version=service.spec_version, service_name=service.spec.annotations.name)
    task.spec.CopyFrom(service.spec.task)
    task.annotations.name = f"{task.service_name}.{slot or node_id}.{task.id}"
    task.service_labels.update(service.spec.annotations.labels)
    task.status.state = pb.NEW
    task.status.message = "created"
    task.status.timestamp_ns = now_ns
    if is_job(service):
        task.desired_state = pb.COMPLETE
        task.job_iteration = service.spec_version
    else:
        task.desired_state = pb.RUNNING
    return task


def with_desired(task: pb.Task, desired: int) -> pb.Task:
    changed: pb.Task = clone(task)
    changed.desired_state = desired  # type: ignore[assignment]
    return changed


# -- policies with Docker's defaults --

@dataclass(frozen=True)
class RestartPolicy:
    condition: int  # pb.RestartPolicy.ANY / NONE / ON_FAILURE
    delay_ns: int
    max_attempts: int  # 0: unlimited
    window_ns: int  # 0: attempts count forever


def restart_policy(service: pb.Service) -> RestartPolicy:
    spec = service.spec.task
    if not spec.HasField("restart"):
        condition = pb.RestartPolicy.ON_FAILURE if is_job(service) else pb.RestartPolicy.ANY
        return RestartPolicy(condition, DEFAULT_RESTART_DELAY, 0, 0)
    policy = spec.restart
    delay = policy.delay.ns if policy.HasField("delay") else DEFAULT_RESTART_DELAY
    return RestartPolicy(int(policy.condition), int(delay), int(policy.max_attempts),
                         int(policy.window.ns))


@dataclass(frozen=True)
class Rollout:
    parallelism: int  # 0: all at once
    delay_ns: int
    failure_action: int  # pb.UpdateConfig.PAUSE / CONTINUE / ROLLBACK
    monitor_ns: int
    max_failure_ratio: float
    order: int  # pb.UpdateConfig.STOP_FIRST / START_FIRST


def rollout(service: pb.Service, rollback: bool) -> Rollout:
    """The service's update config (or rollback config), Docker's defaults where unset."""
    present = service.spec.HasField("rollback") if rollback else service.spec.HasField("update")
    if not present:
        return Rollout(1, 0, pb.UpdateConfig.PAUSE, DEFAULT_MONITOR, 0.0,
                       pb.UpdateConfig.STOP_FIRST)
    cfg = service.spec.rollback if rollback else service.spec.update
    monitor = cfg.monitor.ns if cfg.HasField("monitor") else DEFAULT_MONITOR
    return Rollout(int(cfg.parallelism), int(cfg.delay_ns), int(cfg.failure_action),
                   int(monitor), float(cfg.max_failure_ratio), int(cfg.order))


def stop_wait_ns(task: pb.Task) -> int:
    container = task.spec.container
    grace = (container.stop_grace_period.ns if container.HasField("stop_grace_period")
             else DEFAULT_STOP_GRACE)
    return int(grace) + STOP_WAIT_EXTRA
