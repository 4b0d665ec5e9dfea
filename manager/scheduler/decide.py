"""The scheduler's decision core: a pure function from a snapshot (nodes, the tasks on them,
the pending tasks) to assignments and, for tasks that fit nowhere, the reason why.

Pending tasks are grouped by their requirements (a service's replicas share one group) and
the static filters run once per node per constraint set. Nodes are chosen by (tasks of this
service, all tasks, id), the least loaded first:
- without spread, from one heap of eligible nodes by (all tasks, id) shared by every group
  of the pass, plus a small heap of the nodes that already have some of the service's tasks;
- with spread, from a tree of heaps: one level per preference (label values, fewest tasks of
  the service first; nodes without the label form one more value), nodes at the bottom.
Either way a placement costs O(levels × log nodes); a node that no longer fits is dropped
from the group's heaps (within a group, free room only shrinks).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from manager.errors import InvalidArgument
from manager.rules.ports import host_ports
from manager.scheduler.constraint import Constraint, node_value, parse_constraints, parse_spread
from manager.scheduler.filters import (
    DYNAMIC,
    STATIC,
    NodeInfo,
    Reason,
    Requirements,
    explain,
    first_failure,
    fits,
    normalize_arch,
)
from proto import objects_pb2 as pb


class Decisions(NamedTuple):
    assignments: dict[str, str]  # task id -> node id
    unplaceable: dict[str, str]  # task id -> "no suitable node (...)"


class _Branch:
    """One label value at one spread level: its subtree's heap and task count."""
    __slots__ = ("value", "count", "heap")

    def __init__(self, value: str, count: int, heap: list[Any]) -> None:
        self.value, self.count, self.heap = value, count, heap


class _Parser:
    """Requirements of a task, parsing each distinct constraint list only once."""

    def __init__(self) -> None:
        self._constraints: dict[tuple[str, ...], tuple[Constraint, ...]] = {}
        self._spread: dict[tuple[str, ...], tuple[str, ...]] = {}

    def requirements(self, task: pb.Task) -> Requirements:
        placement = task.spec.placement
        exprs = tuple(placement.constraints)
        cons = self._constraints.get(exprs)
        if cons is None:
            cons = self._constraints[exprs] = tuple(parse_constraints(list(exprs)))
        descs = tuple(p.spread.spread_descriptor for p in placement.preferences)
        spread = self._spread.get(descs)
        if spread is None:
            spread = self._spread[descs] = tuple(parse_spread(d) for d in descs if d)
        reserved = task.spec.resources.reservations
        platforms = tuple((p.os.lower(), normalize_arch(p.architecture))
                          for p in placement.platforms)
        return Requirements(task.service_id, reserved.nano_cpus, reserved.memory_bytes, cons,
                            platforms, host_ports(task), placement.max_replicas, spread,
                            task.node_id)


@dataclass
class _Eligible:
    """The nodes that pass the static filters for one (constraints, platforms), the reasons
    of the others, and (built on first use) those nodes in a heap by (all tasks, id) that
    the groups of a pass share: see _Pass.place_flat."""
    nodes: list[NodeInfo]
    failed: dict[str, Reason]
    heap: list[tuple[int, str, NodeInfo]] | None = None

    def shared_heap(self) -> list[tuple[int, str, NodeInfo]]:
        if self.heap is None:
            self.heap = [(i.total, i.id, i) for i in self.nodes]
            heapq.heapify(self.heap)
        return self.heap


def _split(req: Requirements, infos: Iterable[NodeInfo]) -> _Eligible:
    eligible = _Eligible([], {})
    for info in infos:
        reason = first_failure(req, info, STATIC)
        if reason is None:
            eligible.nodes.append(info)
        else:
            eligible.failed[info.id] = reason
    return eligible


def schedule(nodes: Iterable[pb.Node], tasks_by_node: Mapping[str, Iterable[pb.Task]],
             pending: Iterable[pb.Task]) -> Decisions:
    """Place `pending` (PENDING tasks, in priority order) on `nodes`, given the tasks already
    on each node (terminal ones are ignored). Inputs are not modified."""
    return schedule_on({n.id: NodeInfo.build(n, tasks_by_node.get(n.id, ())) for n in nodes},
                       pending)


def schedule_on(infos: dict[str, NodeInfo], pending: Iterable[pb.Task]) -> Decisions:
    """`schedule` over the nodes as already built (changed as tasks are placed)."""
    run = _Pass(infos)
    groups: dict[Requirements, list[pb.Task]] = {}
    parser = _Parser()
    for task in pending:
        try:
            req = parser.requirements(task)
        except InvalidArgument as err:
            run.result.unplaceable[task.id] = f"no suitable node ({err})"
            continue
        groups.setdefault(req, []).append(task)
    for req, tasks in groups.items():
        run.schedule_group(req, tasks)
    return run.result


class _Pass:
    """The mutable state of one scheduling pass."""

    def __init__(self, infos: dict[str, NodeInfo]) -> None:
        self.infos = infos
        self.all = list(infos.values())
        self.result = Decisions({}, {})
        self._static: dict[tuple[Any, ...], _Eligible] = {}
        self.hosting: dict[str, dict[str, NodeInfo]] = {}  # service -> nodes with its tasks
        for info in self.all:
            for svc in info.by_service:
                self.hosting.setdefault(svc, {})[info.id] = info

    def eligible(self, req: Requirements) -> _Eligible:
        key = (req.constraints, req.platforms)
        hit = self._static.get(key)
        if hit is None:
            hit = self._static[key] = _split(req, self.all)
        return hit

    def take(self, req: Requirements, info: NodeInfo, *, task: pb.Task) -> None:
        info.take(req)
        self.hosting.setdefault(req.service_id, {})[info.id] = info
        self.result.assignments[task.id] = info.id

    def schedule_group(self, req: Requirements, tasks: list[pb.Task]) -> None:
        candidates: Sequence[NodeInfo] = self.all
        if req.node_id:
            info = self.infos.get(req.node_id)
            if info is None:
                reason = f"no suitable node (node {req.node_id} not found)"
                self.result.unplaceable.update((t.id, reason) for t in tasks)
                return
            eligible, candidates = _split(req, [info]), [info]
        else:
            eligible = self.eligible(req)
        if req.spread or req.node_id:
            placed = self.place_tree(req, tasks, eligible)
        else:
            placed = self.place_flat(req, tasks, eligible)
        if placed < len(tasks):
            reason = explain(_failures(req, candidates, eligible.failed))
            self.result.unplaceable.update((t.id, reason) for t in tasks[placed:])

    def place_tree(self, req: Requirements, tasks: list[pb.Task], eligible: _Eligible) -> int:
        root = _tree(req, eligible.nodes, 0)
        for placed, task in enumerate(tasks):
            if _place(root, req, partial(self.take, req, task=task)) is None:
                return placed
        return len(tasks)

    def place_flat(self, req: Requirements, tasks: list[pb.Task], eligible: _Eligible) -> int:
        """Without spread: the nodes that have none of the service's tasks come from the
        shared heap (by all tasks, id), so a small group costs O(its size × log nodes), not
        O(nodes); the few that have some sit in a heap of the group's own."""
        svc = req.service_id
        shared = eligible.shared_heap()
        own = [((i.by_service[svc], i.total, i.id), i)
               for i in self.hosting.get(svc, {}).values() if i.id not in eligible.failed]
        heapq.heapify(own)
        popped: list[NodeInfo] = []  # taken off the shared heap; put back for later groups
        placed = 0
        for task in tasks:
            chosen = _from_shared(shared, req, popped) or _from_own(own, req)
            if chosen is None:
                break
            fresh = svc not in chosen.by_service
            self.take(req, chosen, task=task)
            entry = ((chosen.by_service[svc], chosen.total, chosen.id), chosen)
            if fresh:
                heapq.heappush(own, entry)
            else:
                heapq.heapreplace(own, entry)
            placed += 1
        for info in popped:
            heapq.heappush(shared, (info.total, info.id, info))
        return placed


def _from_shared(heap: list[tuple[int, str, NodeInfo]], req: Requirements,
                 popped: list[NodeInfo]) -> NodeInfo | None:
    """The node with fewest tasks that has none of this service's and fits."""
    while heap:
        total, node_id, info = heap[0]
        if total != info.total:  # another group placed a task there since it was pushed
            heapq.heapreplace(heap, (info.total, node_id, info))
            continue
        heapq.heappop(heap)
        popped.append(info)
        if req.service_id not in info.by_service and fits(req, info):
            return info
    return None


def _from_own(heap: list[Any], req: Requirements) -> NodeInfo | None:
    """The node with fewest tasks of this service (then fewest tasks) that fits; it stays
    at the head of the heap for the caller to re-key."""
    while heap:
        info: NodeInfo = heap[0][1]
        if fits(req, info):
            return info
        heapq.heappop(heap)  # resources only shrink within a group: never fits again
    return None


def _failures(req: Requirements, candidates: Iterable[NodeInfo],
              failed: dict[str, Reason]) -> dict[Reason, int]:
    counts: dict[Reason, int] = {}
    for info in candidates:
        reason = failed.get(info.id) or first_failure(req, info, DYNAMIC)
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def _leaf_key(svc: str, info: NodeInfo) -> tuple[int, int, str]:
    return info.by_service.get(svc, 0), info.total, info.id


def _tree(req: Requirements, infos: list[NodeInfo], level: int) -> list[Any]:
    """A heap of (key, child): nodes at the bottom level, _Branch per label value above."""
    svc = req.service_id
    if level == len(req.spread):
        heap: list[Any] = [((i.by_service.get(svc, 0), i.total, i.id), i) for i in infos]
        heapq.heapify(heap)
        return heap
    by_value: dict[str, list[NodeInfo]] = {}
    key = req.spread[level]
    for info in infos:
        by_value.setdefault(node_value(key, info.node) or "", []).append(info)
    heap = []
    for value, members in by_value.items():
        count = sum(i.by_service.get(svc, 0) for i in members)
        heap.append(((count, value), _Branch(value, count, _tree(req, members, level + 1))))
    heapq.heapify(heap)
    return heap


def _place(root: list[Any], req: Requirements,
           take: Callable[[NodeInfo], None]) -> NodeInfo | None:
    """Take the best node that fits (`take` updates its state), re-key the heaps on the
    path."""
    path: list[list[Any]] = []
    heap = root
    while True:
        if not heap:  # this subtree is full for the group: drop it from its parent
            if not path:
                return None
            heap = path.pop()
            heapq.heappop(heap)
            continue
        child = heap[0][1]
        if isinstance(child, _Branch):
            path.append(heap)
            heap = child.heap
            continue
        if fits(req, child):
            break
        heapq.heappop(heap)  # resources only shrink within a group: never fits again
    info: NodeInfo = child
    take(info)
    heapq.heapreplace(heap, (_leaf_key(req.service_id, info), info))
    for level in reversed(path):
        branch: _Branch = level[0][1]
        branch.count += 1
        heapq.heapreplace(level, ((branch.count, branch.value), branch))
    return info
