"""The kernel state a node should have for its overlay networks: pure, no kernel access.

From the assignments message (networks, their service records, the peers) and the sandboxes
attached on this node, `desired_networks` says per network: the namespace, its bridge, its
VXLAN device, the static FDB and neighbour entries for every REMOTE address (learning is
off, so these come from the store), and each local sandbox's veth. MACs follow Docker's
scheme (02:42 + the IPv4 bytes), so every node computes a remote task's MAC by itself.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from netdriver.ipam import bare, is_encrypted, is_ipv6, wireguard_overhead
from proto import cluster_pb2
from proto import objects_pb2 as pb

VXLAN_OVERHEAD = 50      # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
DEFAULT_VXLAN_PORT = 4789
BRIDGE = "br0"
VXLAN = "vxlan0"


@dataclass(frozen=True, order=True)
class FdbEntry:
    mac: str
    dst: str   # the remote node's underlay (or tunnel) address


@dataclass(frozen=True, order=True)
class NeighEntry:
    ip: str
    mac: str


@dataclass(frozen=True)
class Bridge:
    name: str
    address: str   # gateway, CIDR form
    mtu: int


@dataclass(frozen=True)
class Vxlan:
    name: str
    vni: int
    local: str
    port: int
    mtu: int
    # The device's own GRO pass: only over WireGuard, whose TUN device hands packets over
    # one by one; a plain network's underlay merged the stream already (see overlay.py).
    gro: bool = False


@dataclass(frozen=True)
class Veth:
    """One sandbox's leg on one network: `ifname` inside the sandbox, `peer` (attached to
    the bridge) inside the network's namespace."""
    key: str
    netns_path: str
    ifname: str
    peer: str
    address: str   # CIDR form
    mac: str
    mtu: int
    netns_inode: int = 0   # the namespace attached (0: not known); a /proc/PID path can be
                           # reused by another process's namespace after PID reuse


@dataclass(frozen=True)
class NetworkDesired:
    network_id: str
    netns: str
    bridge: Bridge
    vxlan: Vxlan | None          # None: not programmed (see problems)
    fdb: tuple[FdbEntry, ...]
    neighbours: tuple[NeighEntry, ...]
    veths: tuple[Veth, ...]
    encrypted: bool
    problems: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Sandbox:
    """A sandbox attached on this node: its namespace and its attachments, in order."""
    netns_path: str
    attachments: tuple[pb.NetworkAttachment, ...]
    netns_inode: int = 0


def mac_of(address: str) -> str:
    """Docker's MAC for an IPv4 address: 02:42 then the four address bytes."""
    packed = ipaddress.IPv4Interface(address).ip.packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed)


def ip_of(address: str) -> str:
    return str(ipaddress.IPv4Interface(address).ip)


def netns_name(prefix: str, network_id: str) -> str:
    return f"{prefix}{network_id[:12]}"


def veth_peer_name(key: str) -> str:
    """The sandbox veth's peer in the network namespace: unique per sandbox, ≤15 chars."""
    return "vt" + hashlib.sha256(key.encode()).hexdigest()[:10]


def overlay_mtu(underlay_mtu: int, encrypted: bool, underlay_ip: str = "") -> int:
    """The MTU of a network's bridge, VXLAN device and task interfaces: room for VXLAN, and
    on an encrypted network for WireGuard (sized by the node's underlay address family, as
    the WireGuard interface's MTU is by its peers')."""
    wireguard = wireguard_overhead(is_ipv6(underlay_ip)) if encrypted else 0
    return underlay_mtu - VXLAN_OVERHEAD - wireguard


def gateway_cidr(network: pb.Network) -> str | None:
    """The bridge's address: the allocated gateway with the subnet's prefix length."""
    if not network.ipam or not network.ipam[0].subnet or not network.ipam[0].gateway:
        return None
    subnet = ipaddress.IPv4Network(network.ipam[0].subnet, strict=False)
    return f"{network.ipam[0].gateway}/{subnet.prefixlen}"


def wanted_network_ids(message: cluster_pb2.AssignmentsMessage, node_id: str,
                       sandboxes: Mapping[str, Sandbox]) -> list[str]:
    """Networks this node is on: listed in the message and used by a local sandbox, or by
    a task of this node that is still meant to run (so the namespace is ready before its
    sandbox is attached)."""
    used = {a.network_id for box in sandboxes.values() for a in box.attachments}
    used |= {a.network_id for task in message.tasks
             if task.node_id in ("", node_id) and task.desired_state <= pb.RUNNING
             for a in task.networks}
    return [state.network.id for state in message.networks if state.network.id in used]


def remote_addresses(state: cluster_pb2.NetworkState, node_id: str,
                     peers: Mapping[str, cluster_pb2.NetworkPeer]
                     ) -> list[tuple[str, str]]:
    """(address CIDR, node id) of every task of this network on another node, and on the
    ingress network every other node's routing-mesh address."""
    # Every placed address (`endpoints`: running or not, so a starting task is reachable
    # from its first packet); service records list only the serving ones.
    tasks = state.endpoints or [t for record in state.services for t in record.tasks]
    found = {(task.addr, task.node_id) for task in tasks
             if task.addr and task.node_id and task.node_id != node_id}
    if state.network.spec.ingress:
        found |= {(peer.ingress_addr, peer.node_id) for peer in peers.values()
                  if peer.ingress_addr and peer.node_id != node_id}
    return sorted(found)


def _entries(state: cluster_pb2.NetworkState, node_id: str,
             peers: Mapping[str, cluster_pb2.NetworkPeer], encrypted: bool
             ) -> tuple[list[FdbEntry], list[NeighEntry], list[str]]:
    fdb: set[FdbEntry] = set()
    neigh: set[NeighEntry] = set()
    problems: set[str] = set()
    for address, owner in remote_addresses(state, node_id, peers):
        peer = peers.get(owner)
        # The store keeps a tunnel address with its prefix ("100.127.0.2/16"): VXLAN wants
        # the bare address.
        dst = (bare(peer.tunnel_addr) if encrypted else peer.addr) if peer else ""
        if not dst:
            what = "tunnel address" if encrypted and peer else "peer entry"
            problems.add(f"node {owner}: no {what} yet (its tasks are unreachable)")
            continue
        mac = mac_of(address)
        fdb.add(FdbEntry(mac, dst))
        neigh.add(NeighEntry(ip_of(address), mac))
    return sorted(fdb), sorted(neigh), sorted(problems)


def _veths(network_id: str, sandboxes: Mapping[str, Sandbox], mtu: int) -> list[Veth]:
    veths = []
    for key, box in sorted(sandboxes.items()):
        for position, attachment in enumerate(box.attachments):
            if attachment.network_id != network_id or not attachment.addresses:
                continue
            address = attachment.addresses[0]
            veths.append(Veth(key=key, netns_path=box.netns_path, ifname=f"eth{position}",
                              peer=veth_peer_name(key), address=address,
                              mac=mac_of(address), mtu=mtu, netns_inode=box.netns_inode))
    return veths


@dataclass(frozen=True)
class Node:
    """What the node knows of itself."""
    node_id: str
    underlay_ip: str
    underlay_mtu: int
    netns_prefix: str


def desired_network(node: Node, state: cluster_pb2.NetworkState,
                    peers: Mapping[str, cluster_pb2.NetworkPeer], data_path_port: int,
                    sandboxes: Mapping[str, Sandbox]) -> NetworkDesired | None:
    """One network's desired state; None when it is not allocated yet (no gateway)."""
    network = state.network
    gateway = gateway_cidr(network)
    if gateway is None:
        return None
    encrypted = is_encrypted(network)
    mtu = overlay_mtu(node.underlay_mtu, encrypted, node.underlay_ip)
    fdb, neigh, problems = _entries(state, node.node_id, peers, encrypted)
    own = peers.get(node.node_id)
    local = (bare(own.tunnel_addr) if own else "") if encrypted else node.underlay_ip
    vxlan = None
    if local:
        vxlan = Vxlan(VXLAN, network.vni, local, data_path_port or DEFAULT_VXLAN_PORT, mtu,
                      gro=encrypted)
    else:
        # Never fall back to clear text: no tunnel address, no VXLAN device.
        problems = ["no tunnel address yet", *problems]
    return NetworkDesired(network_id=network.id,
                          netns=netns_name(node.netns_prefix, network.id),
                          bridge=Bridge(BRIDGE, gateway, mtu), vxlan=vxlan,
                          fdb=tuple(fdb), neighbours=tuple(neigh),
                          veths=tuple(_veths(network.id, sandboxes, mtu)),
                          encrypted=encrypted, problems=tuple(problems))


def desired_networks(node: Node, message: cluster_pb2.AssignmentsMessage,
                     sandboxes: Mapping[str, Sandbox]) -> dict[str, NetworkDesired]:
    """Per network id, the state this node should have (only networks it is on)."""
    peers = {peer.node_id: peer for peer in message.peers}
    wanted = set(wanted_network_ids(message, node.node_id, sandboxes))
    out: dict[str, NetworkDesired] = {}
    for state in message.networks:
        if state.network.id not in wanted:
            continue
        try:
            desired = desired_network(node, state, peers, message.data_path_port, sandboxes)
        except ValueError:  # a malformed address from the store: skip it, program the rest
            continue
        if desired is not None:
            out[state.network.id] = desired
    return out


def sandbox_veths(desired: Mapping[str, NetworkDesired], key: str) -> list[Veth]:
    return [veth for net in desired.values() for veth in net.veths if veth.key == key]


def owned_netns(names: Sequence[str], prefix: str) -> list[str]:
    """The namespaces among `names` that are network namespaces of this data plane: the
    prefix and a 12-character base36 id (so `<prefix>ingress` and others are left alone)."""
    alphabet = set("0123456789abcdefghijklmnopqrstuvwxyz")
    return [name for name in names if name.startswith(prefix)
            and len(name) == len(prefix) + 12 and set(name[len(prefix):]) <= alphabet]


def withdrawn(old: cluster_pb2.AssignmentsMessage, new: cluster_pb2.AssignmentsMessage
              ) -> cluster_pb2.AssignmentsMessage:
    """`new` with only what it takes away from `old`: each service keeps those of its tasks
    that `old` listed too, and a service or network `old` did not have is left out. The
    load balancers and resolvers apply this before the slower kernel reconcile, so a
    leaving task stops getting connections and answers at once, while nothing is added
    before its FDB and neighbour entries are there."""
    before = {(state.network.id, record.service_id): {t.task_id for t in record.tasks}
              for state in old.networks for record in state.services}
    out = cluster_pb2.AssignmentsMessage()
    out.CopyFrom(new)
    del out.networks[:]
    known = {state.network.id for state in old.networks}
    for state in new.networks:
        if state.network.id not in known:
            continue
        kept = out.networks.add()
        kept.network.CopyFrom(state.network)
        kept.endpoints.extend(state.endpoints)
        for record in state.services:
            tasks = before.get((state.network.id, record.service_id))
            if tasks is None:
                continue
            copy = kept.services.add()
            copy.CopyFrom(record)
            del copy.tasks[:]
            copy.tasks.extend(t for t in record.tasks if t.task_id in tasks)
    return out
