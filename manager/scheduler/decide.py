"""The scheduler's decision core: a pure function from a snapshot (nodes, the tasks on them,
the pending tasks) to assignments and, for tasks that fit nowhere, the reason why.

Pending tasks are grouped by their requirements (a service's replicas share one group), the
static filters run once per node per group, and each group's eligible nodes sit in a tree
of heaps: one level per spread preference (label values, fewest tasks of the service first)
and, at the bottom, the nodes ordered by (tasks of this service, all tasks, id). Placing a
task walks down the heads of the heaps and re-keys them: O(levels × log nodes) per task.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from manager.errors import InvalidArgument
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
    host_ports,
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


class _Static:
    """Static filter results per (constraints, platforms), shared by groups within a pass."""

    def __init__(self, infos: Sequence[NodeInfo]) -> None:
        self.infos = infos
        self._cache: dict[tuple[Any, ...], tuple[list[NodeInfo], dict[str, Reason]]] = {}

    def evaluate(self, req: Requirements) -> tuple[list[NodeInfo], dict[str, Reason]]:
        key = (req.constraints, req.platforms)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = _split(req, self.infos)
        return hit


def _split(req: Requirements, infos: Iterable[NodeInfo]) -> tuple[list[NodeInfo],
                                                                   dict[str, Reason]]:
    eligible: list[NodeInfo] = []
    failed: dict[str, Reason] = {}
    for info in infos:
        reason = first_failure(req, info, STATIC)
        if reason is None:
            eligible.append(info)
        else:
            failed[info.id] = reason
    return eligible, failed


def schedule(nodes: Iterable[pb.Node], tasks_by_node: Mapping[str, Iterable[pb.Task]],
             pending: Iterable[pb.Task]) -> Decisions:
    """Place `pending` (PENDING tasks, in priority order) on `nodes`, given the tasks already
    on each node (terminal ones are ignored). Inputs are not modified."""
    infos = {n.id: NodeInfo.build(n, tasks_by_node.get(n.id, ())) for n in nodes}
    static = _Static(list(infos.values()))
    result = Decisions({}, {})
    groups: dict[Requirements, list[pb.Task]] = {}
    parser = _Parser()
    for task in pending:
        try:
            req = parser.requirements(task)
        except InvalidArgument as err:
            result.unplaceable[task.id] = f"no suitable node ({err})"
            continue
        groups.setdefault(req, []).append(task)
    for req, tasks in groups.items():
        _schedule_group(req, tasks, infos, static, result)
    return result


def _schedule_group(req: Requirements, tasks: list[pb.Task], infos: dict[str, NodeInfo],
                    static: _Static, result: Decisions) -> None:
    if req.node_id:
        info = infos.get(req.node_id)
        if info is None:
            reason = f"no suitable node (node {req.node_id} not found)"
            result.unplaceable.update((t.id, reason) for t in tasks)
            return
        eligible, failed = _split(req, [info])
        candidates: Sequence[NodeInfo] = [info]
    else:
        eligible, failed = static.evaluate(req)
        candidates = static.infos
    root = _tree(req, eligible, 0)
    placed = 0
    for task in tasks:
        chosen = _place(root, req)
        if chosen is None:
            break
        result.assignments[task.id] = chosen.id
        placed += 1
    if placed < len(tasks):
        reason = explain(_failures(req, candidates, failed))
        result.unplaceable.update((t.id, reason) for t in tasks[placed:])


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


def _place(root: list[Any], req: Requirements) -> NodeInfo | None:
    """Take the best node that fits, update its state and re-key the heaps on the path."""
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
    info.take(req)
    heapq.heapreplace(heap, (_leaf_key(req.service_id, info), info))
    for level in reversed(path):
        branch: _Branch = level[0][1]
        branch.count += 1
        heapq.heapreplace(level, ((branch.count, branch.value), branch))
    return info
