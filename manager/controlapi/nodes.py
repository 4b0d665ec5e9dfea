"""Node operations of the control API: validation and decisions are pure functions here;
`NodeControl` reads the store and proposes the change."""

from __future__ import annotations

from manager.controlapi.limits import check_node_spec
from manager.controlapi.lookup import resolve
from manager.errors import FailedPrecondition
from manager.store.memory import MemoryStore
from proto import objects_pb2 as pb


def find_node(nodes: list[pb.Node], ref: str) -> pb.Node:
    """Resolve a node by full ID, hostname (or name), or unique ID prefix, like Docker."""
    return resolve(nodes, ref, "node",
                   lambda n: (n.spec.annotations.name, n.description.hostname))


def raft_members(nodes: list[pb.Node]) -> list[pb.Node]:
    return [n for n in nodes if n.HasField("manager_status") and n.manager_status.raft_addr]


def quorum_after_removal(nodes: list[pb.Node], leaving: pb.Node) -> str | None:
    """Why removing `leaving` from Raft would break the cluster, or None if it is safe."""
    members = raft_members(nodes)
    if leaving.id not in {m.id for m in members}:
        return None
    remaining = [m for m in members if m.id != leaving.id]
    if not remaining:
        return (f"node {leaving.id} is the last manager of the swarm; removing it would leave "
                "the swarm without managers. Promote another node first.")
    reachable = [m for m in remaining if m.manager_status.reachability == pb.REACHABLE]
    needed = len(remaining) // 2 + 1
    if len(reachable) < needed:
        return (f"removing manager {leaving.id} would lose quorum: {len(reachable)} of the "
                f"{len(remaining)} remaining managers are reachable and {needed} are needed. "
                "Bring the unreachable managers back first.")
    return None


def check_spec_change(nodes: list[pb.Node], node: pb.Node, spec: pb.NodeSpec) -> None:
    if node.spec.desired_role == pb.MANAGER and spec.desired_role == pb.WORKER:
        reason = quorum_after_removal(nodes, node)
        if reason:
            raise FailedPrecondition(f"can't demote {node.description.hostname or node.id}: "
                                     f"{reason}")


def check_remove(nodes: list[pb.Node], node: pb.Node, force: bool) -> None:
    name = node.description.hostname or node.id
    if node.spec.desired_role == pb.MANAGER or node.role == pb.MANAGER:
        reason = quorum_after_removal(nodes, node)
        if reason:
            raise FailedPrecondition(f"can't remove {name}: {reason}")
        raise FailedPrecondition(
            f"node {name} is a cluster manager and is a member of the raft cluster. It must be "
            "demoted to worker before removal (`docker node demote`)")
    if node.status.state != pb.NODE_DOWN and not force:
        raise FailedPrecondition(
            f"node {name} is not down and can't be removed; stop it and wait until it is "
            "Down, or use --force")


class NodeControl:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def nodes(self) -> list[pb.Node]:
        return list(self.store.list(pb.Node))

    def get(self, ref: str) -> pb.Node:
        return find_node(self.nodes(), ref)

    def updated(self, ref: str, version: int, spec: pb.NodeSpec) -> pb.Node:
        """The node object to write for an update of its spec (checks only; no write)."""
        check_node_spec(spec)
        nodes = self.nodes()
        node = find_node(nodes, ref)
        check_spec_change(nodes, node, spec)
        node.spec.CopyFrom(spec)
        node.meta.version.index = version
        return node

    def removable(self, ref: str, force: bool) -> pb.Node:
        nodes = self.nodes()
        node = find_node(nodes, ref)
        check_remove(nodes, node, force)
        return node
