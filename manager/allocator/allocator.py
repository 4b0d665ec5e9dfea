"""The allocator controller (leader only): gives networks their subnet and VNI, nodes their
WireGuard tunnel address, services their published ports and VIPs, and moves new tasks to
PENDING with a copy of their service's endpoint and their addresses on its networks.

On every relevant store change (a network or node not allocated yet, a service whose
endpoint is not current, a NEW task) it allocates networks and tunnel addresses
(`networks.py`), brings every service's `endpoint` up to date with its spec
(`ports.resolve_endpoint`, `networks.assign_vips`), then moves the NEW tasks of services
whose endpoint is current to PENDING ("pending task scheduling") with their addresses.
Writes are version-checked Raft batches of ≤200 actions, fenced by the leadership epoch;
a lost race leaves the object for the next pass.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping, MutableMapping, Sequence

from manager.allocator import networks as nets
from manager.allocator.ports import resolve_endpoint
from manager.errors import ManagerError
from manager.manager import Manager
from manager.orchestrator.controller import write_each
from manager.orchestrator.tasks import unplaced
from manager.rules.ports import PortKey, in_use_by_others
from manager.runtime import Controller
from manager.scheduler.filters import wants_to_run
from manager.store.memory import Event, StoreView
from netdriver.attachments import is_attachment
from netdriver.ipam import Addr, IPAMError
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

RETRY = 0.5  # seconds before a pass after a write that lost a race
PENDING_MESSAGE = "pending task scheduling"


def needs_endpoint(service: pb.Service, ingress: str | None = None) -> bool:
    return bool(service.endpoint.spec != service.spec.endpoint
                or len(service.endpoint.ports) != len(service.spec.endpoint.ports)
                or not nets.vips_current(service, ingress))


def is_new(task: pb.Task) -> bool:
    return task.status.state == pb.NEW and wants_to_run(task)


def relevant(event: Event) -> bool:
    new = event.new
    if event.table == "node":
        return node_relevant(event.old, new)
    if new is None:
        return False
    if event.table == "service":
        return needs_endpoint(new)
    if event.table == "network":
        return not new.pending_delete and not (new.vni and new.ipam)
    return event.table == "task" and is_new(new)


def node_relevant(old: pb.Node | None, new: pb.Node | None) -> bool:
    """A node that joined without its addresses, or lost one; a node leaving frees its own.
    Not every status change of a node still waiting for an address (the ingress network can
    be full): those would make a pass each."""
    if new is None:
        return old is not None and bool(old.ingress_addr or old.tunnel.addr)
    if new.tunnel.addr and new.ingress_addr:
        return False
    return old is None or (old.tunnel.addr, old.ingress_addr) != (new.tunnel.addr,
                                                                  new.ingress_addr)


def allocate_services(services: Sequence[pb.Service],
                      networks: dict[str, pb.Network] | None = None,
                      used: MutableMapping[str, set[Addr]] | None = None,
                      ingress: str | None = None) -> dict[str, pb.Service]:
    """Copies of the services whose endpoint must change, with the new endpoint (pure).
    A service that can't be given its ports or VIPs is left out (and logged)."""
    changed: dict[str, pb.Service] = {}
    chosen: set[PortKey] = set()
    used = defaultdict(set) if used is None else used
    for service in sorted(services, key=lambda s: (s.meta.created_at_ns, s.id)):
        if service.pending_delete or not needs_endpoint(service, ingress):
            continue
        taken = in_use_by_others(services, service.id) | chosen
        try:
            endpoint = resolve_endpoint(service, taken)
            if not nets.assign_vips(service, endpoint, networks or {}, used, ingress):
                continue  # a network of it is not allocated yet
        except (ManagerError, IPAMError) as err:
            log.warning("allocator: %s", err)
            continue
        chosen |= {(p.protocol, p.published_port) for p in endpoint.ports
                   if p.publish_mode == pb.PortConfig.INGRESS}
        new = pb.Service()
        new.CopyFrom(service)
        new.endpoint.CopyFrom(endpoint)
        changed[service.id] = new
    return changed


def pending_tasks(tasks: Sequence[pb.Task], services: Mapping[str, pb.Service],
                  now_ns: int, networks: dict[str, pb.Network] | None = None,
                  used: MutableMapping[str, set[Addr]] | None = None,
                  ingress: str | None = None) -> list[pb.Task]:
    """Copies of the NEW tasks that can move to PENDING, with their service's endpoint and
    their addresses. Tasks of a missing service, or one whose endpoint or networks are not
    allocated, stay NEW."""
    out: list[pb.Task] = []
    used = defaultdict(set) if used is None else used
    for task in tasks:
        if not is_new(task):
            continue
        service = services.get(task.service_id) if task.service_id else None
        if task.service_id and (service is None or needs_endpoint(service, ingress)):
            continue
        new = pb.Task()
        new.CopyFrom(task)
        try:
            if not nets.attach_task(new, service, networks or {}, used, ingress):
                continue
        except IPAMError as err:
            log.warning("allocator: %s", err)
            continue
        if service is not None:
            new.endpoint.CopyFrom(service.endpoint)
        new.status.state = pb.PENDING
        new.status.message = PENDING_MESSAGE
        if is_attachment(new):  # its node is the container's: nothing to schedule
            new.status.state = pb.ASSIGNED
            new.status.message = "attached"
        new.status.timestamp_ns = now_ns
        out.append(new)
    return out


class Allocator(Controller):
    name = "allocator"
    coalesce = 0.2  # a pass reads every node and service

    def __init__(self, manager: Manager) -> None:
        self.mgr = manager

    def relevant(self, event: Event) -> bool:
        return relevant(event)

    async def run(self, view: StoreView) -> float | None:
        nodes = view.list(pb.Node)
        cluster = next(iter(view.list(pb.Cluster)), None)
        changes: list[object] = [*nets.allocate_networks(view.list(pb.Network), cluster, nodes),
                                 *nets.tunnel_addresses(nodes)]
        if changes:
            if not await write_each(self.mgr, changes):
                return RETRY
            view = self.mgr.view()
        networks = dict(view.table(pb.Network))
        ingress = nets.ingress_id(networks.values())
        used = nets.UsedAddresses(view, ingress)
        placed = nets.ingress_addresses(view.list(pb.Node), networks.get(ingress or ""), used)
        if placed:
            if not await write_each(self.mgr, placed):
                return RETRY
            view = self.mgr.view()
        changed = allocate_services(view.list(pb.Service), networks, used, ingress)
        if changed:
            if not await write_each(self.mgr, list(changed.values())):
                return RETRY
            view = self.mgr.view()  # the tasks' decision reads the endpoints just written
        current = dict(view.table(pb.Service))
        tasks = pending_tasks(unplaced(view), current, time.time_ns(), networks, used,
                              ingress)
        if tasks and not await write_each(self.mgr, tasks):
            return RETRY
        return None
