"""The scheduler's filters: pure functions of a task group's requirements and one node's
state, each returning None (the node passes) or a Reason (why it does not).

Static filters (ready, availability, constraints, platform) depend only on the node and the
spec, so the scheduler runs them once per node per task group. Dynamic filters (resources,
host ports, max replicas) depend on what is already placed there and are checked at every
placement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from manager.rules.ports import PortKey, host_ports
from manager.scheduler.constraint import Constraint
from proto import objects_pb2 as pb

TERMINAL = pb.COMPLETE  # status.state at or past this: the task holds nothing on its node

_PROTOCOLS: dict[int, str] = {pb.PortConfig.TCP: "tcp", pb.PortConfig.UDP: "udp",
                              pb.PortConfig.SCTP: "sctp"}
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
                 "armv7l": "arm", "armel": "arm", "i386": "386", "i686": "386"}

# Order in which reasons are listed in the "no suitable node (...)" message.
R_READY, R_AVAILABILITY, R_RESOURCES, R_CONSTRAINT, R_PLATFORM, R_PORT, R_MAX = range(7)


@dataclass(frozen=True, order=True)
class Reason:
    rank: tuple[int, int]  # (category, position within it): the listing order
    text: str              # "insufficient memory"; the count is appended: " on 2 nodes"


def normalize_arch(arch: str) -> str:
    arch = arch.lower()
    return _ARCH_ALIASES.get(arch, arch)


def holds_node(task: pb.Task) -> bool:
    """Placed and not finished: its reservations and host ports still count on its node."""
    return bool(task.node_id) and pb.ASSIGNED <= task.status.state < TERMINAL


def wants_to_run(task: pb.Task) -> bool:
    """Desired RUNNING, or COMPLETE for a job's task (it must run to complete)."""
    return task.desired_state in (pb.RUNNING, pb.COMPLETE)


def is_active(task: pb.Task) -> bool:
    """Counts towards spread, least-loaded and max-replicas."""
    return holds_node(task) and wants_to_run(task)


@dataclass(eq=False)
class NodeInfo:
    """One node as the scheduler sees it during one pass; mutated as tasks are placed."""
    node: pb.Node
    id: str
    free_cpu: int
    free_mem: int
    total: int = 0
    by_service: dict[str, int] = field(default_factory=dict)
    ports: set[PortKey] = field(default_factory=set)

    @classmethod
    def build(cls, node: pb.Node, tasks: Iterable[pb.Task]) -> NodeInfo:
        res = node.description.resources
        info = cls(node, node.id, res.nano_cpus, res.memory_bytes)
        for task in tasks:
            if not holds_node(task):
                continue
            reserved = task.spec.resources.reservations
            info.free_cpu -= reserved.nano_cpus
            info.free_mem -= reserved.memory_bytes
            info.ports.update(host_ports(task))
            if wants_to_run(task):
                info.total += 1
                info.by_service[task.service_id] = info.by_service.get(task.service_id, 0) + 1
        return info

    def take(self, req: Requirements) -> None:
        self.free_cpu -= req.cpu
        self.free_mem -= req.mem
        self.ports.update(req.host_ports)
        self.total += 1
        self.by_service[req.service_id] = self.by_service.get(req.service_id, 0) + 1


@dataclass(frozen=True)
class Requirements:
    """What every task of one group needs; tasks with equal requirements share decisions."""
    service_id: str
    cpu: int
    mem: int
    constraints: tuple[Constraint, ...]
    platforms: tuple[tuple[str, str], ...]  # (os, normalized arch); "" matches anything
    host_ports: tuple[PortKey, ...]
    max_replicas: int
    spread: tuple[str, ...]  # normalized keys, outermost first
    node_id: str = ""        # preassigned (global services): only this node is considered


# -- static filters --

def ready(_req: Requirements, info: NodeInfo) -> Reason | None:
    state = info.node.status.state
    if state == pb.NODE_READY:
        return None
    word = {pb.NODE_DOWN: "down", pb.NODE_DISCONNECTED: "disconnected"}.get(state, "not ready")
    return Reason((R_READY, state), f"node {word}")


def availability(_req: Requirements, info: NodeInfo) -> Reason | None:
    avail = info.node.spec.availability
    if avail == pb.ACTIVE:
        return None
    word = "drained" if avail == pb.DRAIN else "paused"
    return Reason((R_AVAILABILITY, avail), f"node {word}")


def constraints(req: Requirements, info: NodeInfo) -> Reason | None:
    for i, c in enumerate(req.constraints):
        if not c.matches(info.node):
            return Reason((R_CONSTRAINT, i), f"{c.describe()} not met")
    return None


def platform(req: Requirements, info: NodeInfo) -> Reason | None:
    if not req.platforms:
        return None
    desc = info.node.description.platform
    node_os, node_arch = desc.os.lower(), normalize_arch(desc.architecture)
    for want_os, want_arch in req.platforms:
        if (not want_os or not node_os or want_os == node_os) and \
                (not want_arch or not node_arch or want_arch == node_arch):
            return None
    wanted = ", ".join(f"{o or '*'}/{a or '*'}" for o, a in req.platforms)
    return Reason((R_PLATFORM, 0), f"platform {wanted} not supported")


# -- dynamic filters --

def resources(req: Requirements, info: NodeInfo) -> Reason | None:
    if req.cpu > info.free_cpu:
        return Reason((R_RESOURCES, 0), "insufficient CPU")
    if req.mem > info.free_mem:
        return Reason((R_RESOURCES, 1), "insufficient memory")
    return None


def ports(req: Requirements, info: NodeInfo) -> Reason | None:
    for i, key in enumerate(req.host_ports):
        if key in info.ports:
            proto = _PROTOCOLS.get(key[0], str(key[0]))
            return Reason((R_PORT, i), f"host port {key[1]}/{proto} in use")
    return None


def max_replicas(req: Requirements, info: NodeInfo) -> Reason | None:
    if req.max_replicas and info.by_service.get(req.service_id, 0) >= req.max_replicas:
        return Reason((R_MAX, 0), f"max replicas per node ({req.max_replicas}) reached")
    return None


Filter = Callable[[Requirements, NodeInfo], Reason | None]
STATIC: tuple[Filter, ...] = (ready, availability, constraints, platform)
DYNAMIC: tuple[Filter, ...] = (resources, ports, max_replicas)
# Which failure a node is counted under: the first in this order, so a node is blamed on
# what would never change (wrong zone) before what might (memory in use).
PIPELINE: tuple[Filter, ...] = STATIC + DYNAMIC


def fits(req: Requirements, info: NodeInfo) -> bool:
    """The node passes the dynamic filters: the same rules that explain a failure, so what
    places a task and what says why it can't never disagree."""
    return all(f(req, info) is None for f in DYNAMIC)


def first_failure(req: Requirements, info: NodeInfo,
                  filters: tuple[Filter, ...] = PIPELINE) -> Reason | None:
    for f in filters:
        reason = f(req, info)
        if reason is not None:
            return reason
    return None


def explain(counts: dict[Reason, int]) -> str:
    """'no suitable node (insufficient memory on 2 nodes; constraint ... not met on 3 nodes)'"""
    if not counts:
        return "no suitable node (no nodes in the cluster)"
    parts = [f"{r.text} on {n} node{'s' if n != 1 else ''}" for r, n in sorted(counts.items())]
    return f"no suitable node ({'; '.join(parts)})"
