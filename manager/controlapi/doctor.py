"""`shoal network doctor` (pure): for each node that should be on a network, what the store
says it should have against what the node last found in its kernel, and every difference.

The node checks its data plane on every reconcile (each change and every 10 s), repairs
what differs, and reports the check in its heartbeats when it changed (`Node.network_report`).
A difference it could not repair shows again in the next check; a node that stopped
reporting is called out with the age of its last check (a node reports a check only when it
differs from the last one, so the age is that of the last change; a node that stopped is
shown by its state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from manager.dispatcher.netstate import records
from manager.store.view import StoreView
from netdriver.ipam import is_encrypted
from proto import cluster_pb2
from proto import objects_pb2 as pb

STALE_HANDSHAKE_S = 180.0  # WireGuard re-handshakes every 2 min while traffic flows


@dataclass
class PeerView:
    node_id: str
    hostname: str
    public_key: str
    endpoint: str
    handshake_age_s: float | None  # None: never


@dataclass
class NodeView:
    node_id: str
    hostname: str
    checked_age_s: float | None
    wanted: dict[str, int] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    peers: list[PeerView] = field(default_factory=list)
    tunnel_error: str = ""


def wanted_counts(network: pb.Network, node_id: str, local: int, remote: int,
                  peers: int) -> dict[str, int]:
    """What a node on the network should have, counted by kind."""
    wanted = {"interfaces": 2 + local, "fdb": remote, "neighbours": remote}
    if is_encrypted(network):
        wanted["wireguard peers"] = peers
    return wanted


def diagnose(view: StoreView, network: pb.Network, now_ns: int,
             only_node: str | None = None) -> list[NodeView]:
    rec = records(view).get(network.id)
    on_network = set(rec.nodes) if rec is not None else set()
    reporting = {n.id for n in view.list(pb.Node)
                 if any(c.network_id == network.id for c in n.network_report.networks)}
    out = []
    for node_id in sorted(on_network | reporting):
        node = view.get(pb.Node, node_id)
        if node is None or (only_node and only_node not in (node.id, node.description.hostname)):
            continue
        out.append(_node_view(view, network, node, rec.endpoints if rec else [],
                              on_network, now_ns))
    return out


def _node_view(view: StoreView, network: pb.Network, node: pb.Node,
               endpoints: Sequence[cluster_pb2.EndpointTask],
               on_network: set[str], now_ns: int) -> NodeView:
    report = node.network_report
    age = (now_ns - report.checked_ns) / 1e9 if report.checked_ns else None
    result = NodeView(node.id, node.description.hostname, age,
                      tunnel_error=report.tunnel_error or node.tunnel.error)
    local = sum(1 for e in endpoints if e.node_id == node.id)
    remote = len(endpoints) - local
    others = on_network - {node.id}
    result.wanted = wanted_counts(network, node.id, local, remote, len(others))
    check = next((c for c in report.networks if c.network_id == network.id), None)
    if node.id not in on_network:
        result.problems.append("the node still has this network but no task of it: it "
                               "should remove it at its next check")
    if check is None:
        result.problems.append("the node has not reported this network yet")
    else:
        result.found = dict(check.found)
        result.differences = list(check.differences)
        for kind, count in sorted(result.wanted.items()):
            if kind in result.found and result.found[kind] != count:
                result.problems.append(f"{kind}: {result.found[kind]} found, {count} wanted")
    if age is None:
        result.problems.append("no check reported ever: is shoald running on the node and "
                               "in touch with a manager?")
    if is_encrypted(network):
        _peers(view, node, others, now_ns, result)
    if node.status.state != pb.NODE_READY:
        result.problems.append(f"the node is {pb.NodeState.Name(node.status.state).lower()}")
    return result


def _peers(view: StoreView, node: pb.Node, others: set[str], now_ns: int,
           result: NodeView) -> None:
    if result.tunnel_error:
        result.problems.append(f"tunnel down: {result.tunnel_error}; traffic of this "
                               "encrypted network is dropped, never sent in clear")
    checks = {p.public_key: p for p in node.network_report.peers}
    if "wireguard peers" in result.wanted:
        result.found.setdefault("wireguard peers", 0)
    for peer_id in sorted(others):
        peer = view.get(pb.Node, peer_id)
        if peer is None:
            continue
        check = checks.get(peer.tunnel.public_key)
        age = ((now_ns - check.last_handshake_ns) / 1e9
               if check is not None and check.last_handshake_ns else None)
        result.peers.append(PeerView(peer.id, peer.description.hostname,
                                     peer.tunnel.public_key,
                                     check.endpoint if check else "", age))
        if check is not None and check.endpoint:
            # Counted here (the node reports peers, not per network): without it the
            # "wireguard peers" line said "found ?" next to the wanted number.
            result.found["wireguard peers"] = result.found.get("wireguard peers", 0) + 1
        if check is None:
            result.problems.append(f"WireGuard peer {peer.description.hostname or peer.id} "
                                   "is not configured on the node")
        elif age is None or age > STALE_HANDSHAKE_S:
            result.problems.append(
                f"no WireGuard handshake with {peer.description.hostname or peer.id} "
                + ("ever" if age is None else f"for {age:.0f} s"))
