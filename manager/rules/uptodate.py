"""When a task is up to date with its service, and which spec changes make tasks out of date.

The two halves of one rule: the API bumps `spec_version` exactly when `needs_new_tasks` says
so (and on every run of a job), and `is_current` relies on that for its fast path. The
orchestrators (restart, rolling update) and the API (`_up-to-date`, `service ps`) all ask
`is_current`, so they never disagree about which tasks an update still has to replace.
"""

from __future__ import annotations

from proto import objects_pb2 as pb

JOB_MODES = ("replicated_job", "global_job")


def is_job(spec: pb.ServiceSpec) -> bool:
    return spec.WhichOneof("mode") in JOB_MODES


def needs_new_tasks(old: pb.ServiceSpec, new: pb.ServiceSpec) -> bool:
    """Whether running tasks are out of date: the task template or the endpoint changed."""
    return old.task != new.task or old.endpoint != new.endpoint


def is_current(service: pb.Service, task: pb.Task) -> bool:
    """Made from the service's current task spec and, once the allocator gave it one, its
    current endpoint spec (published ports), as swarmkit decides; for jobs: from the current
    run (spec_version)."""
    if task.spec_version == service.spec_version:
        return True  # the API bumps spec_version whenever the task spec or endpoint changes
    if is_job(service.spec) or task.spec != service.spec.task:
        return False
    return not task.HasField("endpoint") or task.endpoint.spec == service.spec.endpoint
