"""The allocator controller (leader only): gives services their published ports and moves
new tasks to PENDING with a copy of their service's endpoint.

On every relevant store change (a service whose endpoint is not current, a NEW task) it
brings every service's `endpoint` up to date with its spec
(`ports.resolve_endpoint`), then moves the NEW tasks of services whose endpoint is current
to PENDING ("pending task scheduling"). Writes are version-checked Raft batches of ≤200
actions, fenced by the leadership epoch; a lost race leaves the object for the next pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from manager.allocator.ports import resolve_endpoint
from manager.errors import ManagerError
from manager.manager import Manager
from manager.orchestrator.controller import write_each
from manager.rules.ports import PortKey, in_use_by_others
from manager.runtime import Controller
from manager.scheduler.filters import wants_to_run
from manager.store.memory import Event, StoreView
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

RETRY = 0.5  # seconds before a pass after a write that lost a race
PENDING_MESSAGE = "pending task scheduling"


def needs_endpoint(service: pb.Service) -> bool:
    return bool(service.endpoint.spec != service.spec.endpoint
                or len(service.endpoint.ports) != len(service.spec.endpoint.ports))


def is_new(task: pb.Task) -> bool:
    return task.status.state == pb.NEW and wants_to_run(task)


def relevant(event: Event) -> bool:
    if event.table == "service":
        return event.new is not None and needs_endpoint(event.new)
    return event.table == "task" and event.new is not None and is_new(event.new)


def allocate_services(services: Sequence[pb.Service]) -> dict[str, pb.Service]:
    """Copies of the services whose endpoint must change, with the new endpoint (pure).
    A service that can't be given its ports is left out (and logged)."""
    changed: dict[str, pb.Service] = {}
    chosen: set[PortKey] = set()
    for service in sorted(services, key=lambda s: (s.meta.created_at_ns, s.id)):
        if service.pending_delete or not needs_endpoint(service):
            continue
        used = in_use_by_others(services, service.id) | chosen
        try:
            endpoint = resolve_endpoint(service, used)
        except ManagerError as err:
            log.warning("allocator: %s", err)
            continue
        chosen |= {(p.protocol, p.published_port) for p in endpoint.ports
                   if p.publish_mode == pb.PortConfig.INGRESS}
        new = pb.Service()
        new.CopyFrom(service)
        new.endpoint.CopyFrom(endpoint)
        changed[service.id] = new
    return changed


def pending_tasks(tasks: Sequence[pb.Task], services: dict[str, pb.Service],
                  now_ns: int) -> list[pb.Task]:
    """Copies of the NEW tasks that can move to PENDING, with their service's endpoint.
    Tasks of a missing service, or one whose endpoint is not allocated, stay NEW."""
    out: list[pb.Task] = []
    for task in tasks:
        if not is_new(task):
            continue
        service = services.get(task.service_id) if task.service_id else None
        if task.service_id and (service is None or needs_endpoint(service)):
            continue
        new = pb.Task()
        new.CopyFrom(task)
        if service is not None:
            new.endpoint.CopyFrom(service.endpoint)
        new.status.state = pb.PENDING
        new.status.message = PENDING_MESSAGE
        new.status.timestamp_ns = now_ns
        out.append(new)
    return out


class Allocator(Controller):
    name = "allocator"
    coalesce = 0.2  # a pass reads every task

    def __init__(self, manager: Manager) -> None:
        self.mgr = manager

    def relevant(self, event: Event) -> bool:
        return relevant(event)

    async def run(self, view: StoreView) -> float | None:
        changed = allocate_services(view.list(pb.Service))
        if changed:
            if not await write_each(self.mgr, list(changed.values())):
                return RETRY
            view = self.mgr.view()  # the tasks' decision reads the endpoints just written
        current = dict(view.table(pb.Service))
        tasks = pending_tasks(view.list(pb.Task), current, time.time_ns())
        if tasks and not await write_each(self.mgr, tasks):
            return RETRY
        return None
