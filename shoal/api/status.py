"""A service's ServiceStatus (RunningTasks, DesiredTasks, CompletedTasks): what `service
ls` shows as REPLICAS and the metrics' desired/running tasks."""

from __future__ import annotations

from collections import Counter

from manager.rules.uptodate import is_current
from proto import objects_pb2 as pb
from shoal.api import service_json as sjson


def service_status(svc: pb.Service, tasks: list[pb.Task]) -> dict[str, int]:
    """ServiceStatus {RunningTasks, DesiredTasks, CompletedTasks} over the service's
    up-to-date tasks (what `service ls` shows as REPLICAS)."""
    current = [t for t in tasks if is_current(svc, t)]
    states = Counter(t.status.state for t in current
                     if t.desired_state <= pb.COMPLETE)
    running, completed = states[pb.RUNNING], states[pb.COMPLETE]
    mode = sjson.mode_name(svc.spec)
    if mode == "replicated":
        desired = svc.spec.replicated.replicas
    elif mode == "replicated_job":
        job = svc.spec.replicated_job
        desired = max(0, min(job.max_concurrent, job.total_completions - completed))
    else:  # global: the nodes with a task; global job: those whose task is not done yet
        live = [t for t in current if t.desired_state <= pb.COMPLETE and
                (mode == "global" or t.status.state != pb.COMPLETE)]
        desired = len({t.node_id for t in live})
    return {"RunningTasks": running, "DesiredTasks": desired, "CompletedTasks": completed}
