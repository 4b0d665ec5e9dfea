"""Network allocation decisions (pure): subnets and VNIs of networks, VIPs of services, the
addresses of tasks, and nodes' WireGuard tunnel addresses.

What is taken is read from the objects every time (see netdriver/ipam.py): a network's
gateway, its services' VIPs and the addresses of its tasks that have not ended. A task's
address is released when its task reaches a final state; a VIP when its service is deleted.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, MutableMapping, Sequence

from manager.store.view import StoreView
from netdriver import ipam
from netdriver.attachments import is_attachment
from netdriver.ipam import Addr, IPAMError, Net
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

INGRESS_NAME = "ingress"


def holds_address(task: pb.Task) -> bool:
    """A task keeps its addresses until it has ended (its sandbox is then removed)."""
    return task.status.state < pb.COMPLETE


def route_list(nodes: Iterable[pb.Node]) -> list[tuple[Net, str]]:
    out = []
    for node in nodes:
        for route in node.description.routes:
            try:
                net = Net(route.dst)
            except ValueError:
                continue
            out.append((net, f"route {route.dst} dev {route.dev} on node "
                             f"{node.description.hostname or node.id}"))
    return out


def network_subnets(networks: Iterable[pb.Network], but: str = "") -> list[tuple[Net, str]]:
    return [(Net(n.ipam[0].subnet), f"network {n.spec.annotations.name} ({n.ipam[0].subnet})")
            for n in networks if n.ipam and n.id != but]


def allocate_networks(networks: Sequence[pb.Network], cluster: pb.Cluster | None,
                      nodes: Sequence[pb.Node]) -> list[pb.Network]:
    """Copies of the networks that had no subnet or VNI yet, with them."""
    if all(n.pending_delete or (n.vni and n.ipam) for n in networks):
        return []  # the common case: nothing to allocate (the routes of every node unread)
    # Subnets users asked for are taken even before their network is allocated.
    asked = [(Net(n.spec.ipam[0].subnet), f"network {n.spec.annotations.name}")
             for n in networks if not n.ipam and n.spec.ipam and _is_cidr(n.spec.ipam[0].subnet)]
    taken = network_subnets(networks) + asked + route_list(nodes)
    vnis = {n.vni for n in networks if n.vni}
    pools = list(cluster.default_addr_pool) if cluster else []
    size = (cluster.subnet_size if cluster else 0) or ipam.DEFAULT_SUBNET_SIZE
    out = []
    for network in sorted(networks, key=lambda n: (n.meta.created_at_ns, n.id)):
        if network.pending_delete or (network.vni and network.ipam):
            continue
        new = pb.Network()
        new.CopyFrom(network)
        try:
            if not new.ipam:
                if network.spec.ipam:
                    config = ipam.check_ipam(network.spec.ipam[0])
                else:
                    subnet = ipam.next_subnet(pools, size, taken)
                    config = ipam.check_ipam(pb.IPAMConfig(subnet=str(subnet)))
                new.ipam.append(config)
                taken.append((Net(config.subnet), f"network {network.spec.annotations.name}"))
            if not new.vni:
                new.vni = ipam.next_vni(vnis)
                vnis.add(new.vni)
        except IPAMError as err:
            log.warning("allocator: network %s: %s", network.spec.annotations.name, err)
            continue
        out.append(new)
    return out


def _is_cidr(text: str) -> bool:
    try:
        Net(text)
    except ValueError:
        return False
    return True


def used_addresses(services: Iterable[pb.Service], tasks: Iterable[pb.Task],
                   nodes: Iterable[pb.Node] = (), ingress_id: str | None = None
                   ) -> defaultdict[str, set[Addr]]:
    """network ID → addresses held by VIPs, by tasks that have not ended and by nodes'
    ingress namespaces."""
    used: defaultdict[str, set[Addr]] = defaultdict(ipam.Held)
    if ingress_id:
        used[ingress_id] = ipam.Held(ipam.host_of(n.ingress_addr) for n in nodes
                                     if n.ingress_addr)
    for service in services:
        for vip in service.endpoint.virtual_ips:
            used[vip.network_id].add(ipam.host_of(vip.addr))
    for task in tasks:
        if holds_address(task):
            for att in task.networks:
                for cidr in att.addresses:
                    used[att.network_id].add(ipam.host_of(cidr))
    return used


class UsedAddresses(dict[str, set[Addr]]):
    """`used_addresses` of a store view, read one network at a time when first asked for:
    only the tasks attached to that network (the view's index), so a pass that gives no
    address reads no task."""

    def __init__(self, view: StoreView, ingress_id: str | None) -> None:
        super().__init__()
        self.view, self.ingress_id = view, ingress_id

    def __missing__(self, network_id: str) -> set[Addr]:
        nodes = self.view.list(pb.Node) if network_id == self.ingress_id else []
        found = used_addresses(self.view.list(pb.Service),
                               self.view.tasks_on_network(network_id), nodes,
                               self.ingress_id)[network_id]
        self[network_id] = found
        return found


def has_ingress_ports(spec: pb.ServiceSpec) -> bool:
    return any(p.publish_mode == pb.PortConfig.INGRESS for p in spec.endpoint.ports)


def service_networks(spec: pb.ServiceSpec, ingress_id: str | None) -> list[str]:
    """The networks a service's tasks attach to: its own, and ingress when it publishes a
    port (as Docker does for the routing mesh; a mode=host port is reached through the
    node's ingress namespace too, so the host needs no route into the overlays)."""
    ids = [n.target for n in spec.task.networks]
    if ingress_id and spec.endpoint.ports and ingress_id not in ids:
        ids.append(ingress_id)
    return ids


def wanted_vips(service: pb.Service, ingress_id: str | None) -> list[str]:
    if service.spec.endpoint.mode != pb.EndpointSpec.VIP:
        return []
    ids = service_networks(service.spec, ingress_id)
    if ingress_id in ids and not has_ingress_ports(service.spec):
        ids.remove(ingress_id)  # host-mode ports only: no load balancing on ingress
    return ids


def vips_current(service: pb.Service, ingress_id: str | None) -> bool:
    have = [v.network_id for v in service.endpoint.virtual_ips]
    return have == wanted_vips(service, ingress_id)


def assign_vips(service: pb.Service, endpoint: pb.Endpoint, networks: dict[str, pb.Network],
                used: MutableMapping[str, set[Addr]], ingress_id: str | None) -> bool:
    """Give `endpoint` one VIP per network the service wants one on, keeping the ones it
    had; False when a network is not allocated yet (or gone)."""
    kept = {v.network_id: v.addr for v in service.endpoint.virtual_ips}
    del endpoint.virtual_ips[:]
    for net_id in wanted_vips(service, ingress_id):
        network = networks.get(net_id)
        if network is None or not network.ipam:
            return False
        addr = kept.get(net_id) or ipam.next_address(
            network.ipam[0], used[net_id],
            f"the VIP of service {service.spec.annotations.name}")
        endpoint.virtual_ips.append(pb.VirtualIP(network_id=net_id, addr=addr))
    return True


def attach_task(task: pb.Task, service: pb.Service | None, networks: dict[str, pb.Network],
                used: MutableMapping[str, set[Addr]], ingress_id: str | None) -> bool:
    """Give a NEW task its addresses on its service's networks (an attached container's
    task: on its own); False when one of them is not allocated yet."""
    if task.networks:
        return True
    if service is not None:
        configs = list(service.spec.task.networks)
        wanted = service_networks(service.spec, ingress_id)
    elif is_attachment(task):
        configs = list(task.spec.networks)
        wanted = [n.target for n in configs]
    else:
        return True
    aliases = {n.target: list(n.aliases) for n in configs}
    if any(n not in networks or not networks[n].ipam for n in wanted):
        return False
    for net_id in wanted:
        addr = ipam.next_address(networks[net_id].ipam[0], used[net_id],
                                 f"task {task.id}")
        task.networks.append(pb.NetworkAttachment(network_id=net_id, addresses=[addr],
                                                  aliases=aliases.get(net_id, [])))
    return True


def tunnel_addresses(nodes: Sequence[pb.Node]) -> list[pb.Node]:
    """Copies of the nodes without a WireGuard tunnel address, with one."""
    missing = [n for n in nodes if not n.tunnel.addr]
    if not missing:
        return []
    used = ipam.Held(ipam.host_of(n.tunnel.addr) for n in nodes if n.tunnel.addr)
    out = []
    for node in sorted(missing, key=lambda n: (n.meta.created_at_ns, n.id)):
        addr = ipam.first_free(ipam.TUNNEL_POOL, used)
        if addr is None:
            log.warning("allocator: no WireGuard tunnel address left for node %s", node.id)
            break
        used.add(addr)
        new = pb.Node()
        new.CopyFrom(node)
        new.tunnel.addr = f"{addr}/{ipam.TUNNEL_POOL.prefixlen}"
        out.append(new)
    return out


def ingress_addresses(nodes: Sequence[pb.Node], ingress: pb.Network | None,
                      used: MutableMapping[str, set[Addr]]) -> list[pb.Node]:
    """Copies of the nodes without an address on the ingress network (their routing-mesh
    namespace), with one."""
    missing = [n for n in nodes if not n.ingress_addr]
    if ingress is None or not ingress.ipam or not missing:
        return []
    out = []
    for node in sorted(missing, key=lambda n: (n.meta.created_at_ns, n.id)):
        try:
            addr = ipam.next_address(ingress.ipam[0], used[ingress.id],
                                     f"the ingress namespace of node {node.id}")
        except IPAMError as err:
            log.warning("allocator: %s", err)
            break
        new = pb.Node()
        new.CopyFrom(node)
        new.ingress_addr = addr
        out.append(new)
    return out


def ingress_id(networks: Iterable[pb.Network]) -> str | None:
    return next((n.id for n in networks if n.spec.ingress and not n.pending_delete), None)
