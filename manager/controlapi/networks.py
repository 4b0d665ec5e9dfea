"""Network operations of the control API (pure decisions over a snapshot; nothing writes).

- create: a new Network with the user's spec, checked (driver, options, IPAM, name) and,
  with --subnet, refused when it overlaps another network or a node's route. The subnet
  from the default pool and the VNI are the allocator's (leader) decision.
- remove: refused while a service uses the network or a task that is not leaving still holds
  an address on it (the message names them); the ingress network is refused while a service
  publishes a port through the routing mesh. While leaving tasks still hold addresses the
  network is only marked `pending_delete` (allocator/network_reaper.py deletes it later).
- a service's networks: each target resolved to a network ID, or a clear error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from manager.allocator.network_reaper import on_network, staying_tasks
from manager.allocator.networks import network_subnets, route_list
from manager.controlapi.lookup import resolve
from manager.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from manager.identity import new_id
from manager.store.memory import MemoryStore
from netdriver import ipam
from netdriver.attachments import CONTAINER_LABEL, container_of, is_attachment
from netdriver.ipam import IPAMError, Net
from proto import objects_pb2 as pb

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
PREDEFINED = {"bridge", "host", "none"}


def visible(networks: Iterable[pb.Network]) -> list[pb.Network]:
    return [n for n in networks if not n.pending_delete]


def find_network(networks: Sequence[pb.Network], ref: str) -> pb.Network:
    return resolve(visible(networks), ref, "network", lambda n: (n.spec.annotations.name,))


def validate_spec(spec: pb.NetworkSpec) -> None:
    name = spec.annotations.name
    if not NAME_RE.match(name):
        raise InvalidArgument(f"invalid network name {name!r}: use 1 to 63 letters, digits, "
                              '"_", "." or "-", starting with a letter or digit')
    if name in PREDEFINED:
        raise InvalidArgument(f"network name {name!r} is reserved for the engine's own "
                              "networks; choose another name")
    try:
        ipam.check_options(spec)
        for config in spec.ipam:
            ipam.check_ipam(config)
    except IPAMError as err:
        raise InvalidArgument(str(err)) from None


def new_network(networks: Sequence[pb.Network], nodes: Sequence[pb.Node],
                spec: pb.NetworkSpec, cluster: pb.Cluster | None = None) -> pb.Network:
    spec = _copy(spec)
    spec.driver = spec.driver or "overlay"
    validate_spec(spec)
    live = visible(networks)
    name = spec.annotations.name
    if any(n.spec.annotations.name == name for n in live):
        raise AlreadyExists(f"network with name {name} already exists: choose another name, "
                            "or use the existing network")
    if spec.ingress and any(n.spec.ingress for n in live):
        raise AlreadyExists("an ingress network already exists; remove it first (no service "
                            "may publish a port through the routing mesh while you do)")
    if spec.ipam:
        config = ipam.check_ipam(spec.ipam[0])
        spec.ipam[0].CopyFrom(config)
        subnet = Net(config.subnet)
        hit = ipam.overlap(subnet, network_subnets(networks) + route_list(nodes))
        if hit is not None:
            raise InvalidArgument(f"subnet {subnet} overlaps {hit}; choose another --subnet")
    else:  # the allocator picks the subnet; say now if the pools have none left
        pools = list(cluster.default_addr_pool) if cluster else []
        size = (cluster.subnet_size if cluster else 0) or ipam.DEFAULT_SUBNET_SIZE
        try:
            ipam.next_subnet(pools, size, network_subnets(networks) + route_list(nodes))
        except IPAMError as err:
            raise FailedPrecondition(str(err)) from None
    return pb.Network(id=new_id(), spec=spec)


def removed_network(networks: Sequence[pb.Network], services: Iterable[pb.Service],
                    tasks: Iterable[pb.Task], ref: str) -> pb.Network:
    network = find_network(networks, ref)
    name = network.spec.annotations.name
    users = sorted(s.spec.annotations.name for s in services if not s.pending_delete and
                   any(n.target == network.id for n in s.spec.task.networks))
    if network.spec.ingress:
        users += sorted(s.spec.annotations.name for s in services if not s.pending_delete
                        and any(p.publish_mode == pb.PortConfig.INGRESS
                                for p in s.spec.endpoint.ports))
    if users:
        raise FailedPrecondition(f"network {name} is in use by service(s) "
                                 f"{', '.join(sorted(set(users)))}; remove them from the "
                                 "network (docker service update --network-rm) or remove them "
                                 "first")
    tasks = list(tasks)
    by_id = {s.id: s for s in services}
    staying = sorted(t.id for t in staying_tasks(network.id, tasks, by_id))
    if staying:
        raise FailedPrecondition(f"network {name} still has {len(staying)} task(s) attached "
                                 f"(e.g. {staying[0]}); retry once they have stopped")
    if any(on_network(t, network.id) for t in tasks):  # stopping: the reaper deletes it
        marked = pb.Network()
        marked.CopyFrom(network)
        marked.pending_delete = True
        return marked
    return network


def attachment_task(networks: Sequence[pb.Network], tasks: Iterable[pb.Task], ref: str,
                    container_id: str, node_id: str, aliases: Sequence[str]) -> pb.Task:
    """The task that attaches a running container to an attachable network."""
    network = find_network(networks, ref)
    name = network.spec.annotations.name
    if not network.spec.attachable:
        raise FailedPrecondition(f"network {name} is not attachable: only services can use "
                                 "it; create a network with --attachable for containers")
    if attachment_of(tasks, network.id, container_id) is not None:
        raise AlreadyExists(f"container {container_id[:12]} is already on network {name}")
    task = pb.Task(id=new_id(), node_id=node_id, desired_state=pb.RUNNING)
    task.annotations.name = f"attachment.{container_id[:12]}.{task.id}"
    task.annotations.labels[CONTAINER_LABEL] = container_id
    task.spec.networks.append(pb.NetworkAttachmentConfig(target=network.id, aliases=aliases))
    return task


def attachment_of(tasks: Iterable[pb.Task], network_id: str, container_id: str
                  ) -> pb.Task | None:
    return next((t for t in tasks if is_attachment(t) and container_of(t) == container_id
                 and any(n.target == network_id for n in t.spec.networks)), None)


def resolve_attachments(spec: pb.ServiceSpec, networks: Sequence[pb.Network]) -> None:
    """Replace each network target of the service (name, ID or ID prefix) with the
    network's ID; refuse unknown networks, the ingress network and duplicates."""
    seen: set[str] = set()
    for attachment in spec.task.networks:
        try:
            network = find_network(networks, attachment.target)
        except NotFound:
            raise NotFound(f"network {attachment.target} not found: create it first "
                           f"(docker network create -d overlay {attachment.target})") from None
        if network.spec.ingress:
            raise InvalidArgument(f"service {spec.annotations.name} can't be attached to the "
                                  f"ingress network {network.spec.annotations.name}: publish "
                                  "a port (--publish) to use the routing mesh")
        if network.id in seen:
            raise InvalidArgument(f"network {network.spec.annotations.name} is given more "
                                  "than once")
        seen.add(network.id)
        attachment.target = network.id


def _copy(spec: pb.NetworkSpec) -> pb.NetworkSpec:
    out = pb.NetworkSpec()
    out.CopyFrom(spec)
    return out


class NetworkControl:
    """Reads the store; returns the object to write (the caller proposes it)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def networks(self) -> list[pb.Network]:
        return list(self.store.list(pb.Network))

    def get(self, ref: str) -> pb.Network:
        return find_network(self.networks(), ref)

    def create(self, spec: pb.NetworkSpec) -> pb.Network:
        cluster = next(iter(self.store.list(pb.Cluster)), None)
        return new_network(self.networks(), list(self.store.list(pb.Node)), spec, cluster)

    def connect(self, ref: str, container_id: str, node_id: str,
                aliases: Sequence[str]) -> pb.Task:
        return attachment_task(self.networks(), self.store.list_view(pb.Task), ref,
                               container_id, node_id, aliases)

    def disconnect(self, ref: str, container_id: str) -> pb.Task:
        network = self.get(ref)
        task = attachment_of(self.store.list_view(pb.Task), network.id, container_id)
        if task is None:
            raise NotFound(f"container {container_id[:12]} is not on network "
                           f"{network.spec.annotations.name}")
        return task

    def remove(self, ref: str) -> pb.Network:
        return removed_network(self.networks(), self.store.list(pb.Service),
                               self.store.list_view(pb.Task), ref)
