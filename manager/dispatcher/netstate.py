"""What a node's data plane needs with its tasks (pure, from one store view): the state of
every network its tasks are on — the network, each service on it as resolvers and load
balancers see it, every task address placed on a node — and the nodes it must reach.

Service records list only tasks that serve: running, still wanted running, not unhealthy,
and on a node whose session has not ended (a killed node's connection resets at once; it is
marked down only after a grace for restarts). A task told to stop leaves the records at
once, before its container stops (the worker keeps it serving for a moment), so load
balancers drop it first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from manager.allocator.networks import holds_address
from manager.store.view import StoreView
from proto import cluster_pb2
from proto import objects_pb2 as pb

_KEY = "network-records"
_PUBLISHED = "publishes-ports"


def serves(task: pb.Task) -> bool:
    return (task.status.state == pb.RUNNING and task.desired_state <= pb.RUNNING
            and task.status.health not in ("starting", "unhealthy"))


@dataclass
class NetworkRecords:
    network: pb.Network
    services: dict[str, cluster_pb2.ServiceRecord] = field(default_factory=dict)
    endpoints: list[cluster_pb2.EndpointTask] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)


def build_records(view: StoreView) -> dict[str, NetworkRecords]:
    networks = {n.id: NetworkRecords(n) for n in view.list(pb.Network)}
    ingress = next((r for r in networks.values() if r.network.spec.ingress), None)
    if ingress is not None:  # every node's routing-mesh namespace is on the ingress network
        for node in view.list(pb.Node):
            if node.ingress_addr:
                ingress.endpoints.append(cluster_pb2.EndpointTask(
                    task_id=f"ingress-{node.id}", node_id=node.id, addr=node.ingress_addr,
                    name=f"ingress-endpoint.{node.id}"))
                ingress.nodes.add(node.id)
    services = view.table(pb.Service)
    attached = {t.id: t for net_id in networks for t in view.tasks_on_network(net_id)}
    for task in attached.values():
        if not holds_address(task):
            continue
        for att in task.networks:
            records = networks.get(att.network_id)
            if records is None or not att.addresses:
                continue
            endpoint = cluster_pb2.EndpointTask(task_id=task.id, node_id=task.node_id,
                                                addr=att.addresses[0],
                                                name=task.annotations.name,
                                                aliases=list(att.aliases))
            if task.node_id and task.status.state >= pb.ASSIGNED:
                records.endpoints.append(endpoint)
                records.nodes.add(task.node_id)
            service = services.get(task.service_id)
            if service is None or service.pending_delete:
                continue
            record = records.services.get(service.id)
            if record is None:
                record = records.services[service.id] = _service_record(service, att)
            if serves(task):
                record.tasks.append(endpoint)
    return networks


def _service_record(service: pb.Service, att: pb.NetworkAttachment
                    ) -> cluster_pb2.ServiceRecord:
    vip = next((v.addr for v in service.endpoint.virtual_ips
                if v.network_id == att.network_id), "")
    aliases = next((list(n.aliases) for n in service.spec.task.networks
                    if n.target == att.network_id), [])
    return cluster_pb2.ServiceRecord(service_id=service.id, name=service.spec.annotations.name,
                                     mode=service.spec.endpoint.mode, vip=vip, aliases=aliases,
                                     ports=list(service.endpoint.ports))


def publishes_ports(view: StoreView) -> bool:
    """Some service publishes a port: its tasks are on the ingress network, which every node
    then serves."""
    return any(s.spec.endpoint.ports and not s.pending_delete for s in view.list(pb.Service))


def records(view: StoreView) -> dict[str, NetworkRecords]:
    result: dict[str, NetworkRecords] = view.derived(_KEY, lambda: build_records(view))
    return result


def _serving(record: cluster_pb2.ServiceRecord, gone: frozenset[str]
             ) -> cluster_pb2.ServiceRecord:
    """The record without the tasks of nodes whose session ended (they may be dead)."""
    if not gone or not any(t.node_id in gone for t in record.tasks):
        return record
    out = cluster_pb2.ServiceRecord()
    out.CopyFrom(record)
    del out.tasks[:]
    out.tasks.extend(t for t in record.tasks if t.node_id not in gone)
    return out


def node_networks(tasks: Iterable[pb.Task]) -> set[str]:
    return {att.network_id for t in tasks if holds_address(t) for att in t.networks}


def network_message(view: StoreView, node_id: str, tasks: list[pb.Task],
                    gone: frozenset[str] = frozenset()) -> cluster_pb2.AssignmentsMessage:
    """The node's assignments: its tasks, the networks they are on (and the ingress network
    while a service publishes a port), and the peers."""
    msg = cluster_pb2.AssignmentsMessage(tasks=tasks)
    wanted = node_networks(tasks)
    if not wanted and not view.derived(_PUBLISHED, lambda: publishes_ports(view)):
        return msg  # no network to describe: the records (a pass over every task) can wait
    all_records = records(view)
    mesh = next((r for r in all_records.values() if r.network.spec.ingress), None)
    if mesh is not None and mesh.services:  # a port is published: every node serves it
        wanted.add(mesh.network.id)
    if not wanted:
        return msg
    peers = {node_id}
    for net_id in sorted(wanted):
        rec = all_records.get(net_id)
        if rec is None:
            continue
        services = [_serving(r, gone) for r in sorted(rec.services.values(),
                                                      key=lambda r: r.name)]
        msg.networks.append(cluster_pb2.NetworkState(
            network=rec.network, services=services, endpoints=rec.endpoints))
        peers |= rec.nodes
    for peer_id in sorted(peers):
        node = view.get(pb.Node, peer_id)
        if node is not None:
            msg.peers.append(cluster_pb2.NetworkPeer(
                node_id=node.id, addr=node.status.addr, tunnel_addr=node.tunnel.addr,
                public_key=node.tunnel.public_key, ingress_addr=node.ingress_addr))
    cluster = next(iter(view.list(pb.Cluster)), None)
    msg.data_path_port = cluster.data_path_port if cluster else 0
    return msg
