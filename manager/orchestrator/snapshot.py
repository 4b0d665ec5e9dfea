"""What a decision core reads (a Snapshot of the store at one version, plus the time) and what
it returns (a Decision: groups of store actions, each group applied atomically, and when to
look again if nothing changes in the store meanwhile).

Snapshot objects are the store's own, shared and read-only: cores copy an object before
changing it (`tasks.clone`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from manager.errors import InvalidArgument
from manager.orchestrator.tasks import ended, stop_wait_ns
from manager.scheduler.constraint import Constraint, parse_constraints
from manager.store.view import StoreView
from proto import objects_pb2 as pb
from proto import store_pb2

log = logging.getLogger(__name__)

DEFAULT_HISTORY = 5

Action = tuple[int, Any]  # (store_pb2.CREATE/UPDATE/DELETE, object)
Group = list[Action]  # written in one batch: all or nothing


@dataclass(frozen=True)
class Snapshot:
    """The store at one version (a read-only view, shared, never copied) and the time."""

    now_ns: int
    view: StoreView

    @classmethod
    def of(cls, now_ns: int, services: Iterable[pb.Service] = (),
           tasks: Iterable[pb.Task] = (), nodes: Iterable[pb.Node] = (),
           cluster: pb.Cluster | None = None, version: int = 0) -> Snapshot:
        objs: list[Any] = [*services, *tasks, *nodes, *([cluster] if cluster else [])]
        return cls(now_ns, StoreView.of(objs, version))

    def at(self, now_ns: int) -> Snapshot:
        """The same view at another time."""
        return replace(self, now_ns=now_ns)

    @property
    def version(self) -> int:
        return self.view.version

    @property
    def services(self) -> Mapping[str, pb.Service]:
        return self.view.table(pb.Service)

    @property
    def nodes(self) -> Mapping[str, pb.Node]:
        return self.view.table(pb.Node)

    @property
    def cluster(self) -> pb.Cluster | None:
        return self.view.cluster()

    def tasks_of(self, service_id: str) -> list[pb.Task]:
        return self.view.tasks_of_service(service_id)

    def history_limit(self) -> int:
        """Tasks kept per slot (cluster task_history_retention_limit; 0 means the default)."""
        limit = self.cluster.spec.orchestration.task_history_retention_limit \
            if self.cluster is not None else 0
        return int(limit) if limit else DEFAULT_HISTORY

    # -- nodes, as the orchestrators see them --

    def node_lost(self, node_id: str) -> bool:
        """Tasks on this node must be replaced: it is down, drained or removed."""
        node = self.nodes.get(node_id)
        return node is None or node.status.state == pb.NODE_DOWN or \
            node.spec.availability == pb.DRAIN

    def stopping(self, task: pb.Task) -> bool:
        """Taken out of its slot but not stopped yet, on a node that will still stop it: the
        slot waits for it (stop-first)."""
        if task.desired_state <= pb.COMPLETE or ended(task):
            return False
        if task.status.state < pb.ASSIGNED or self.node_lost(task.node_id):
            return False
        return self.now_ns < stop_deadline(task)


def stop_deadline(task: pb.Task) -> int:
    return int(task.meta.updated_at_ns) + stop_wait_ns(task)


@lru_cache(maxsize=1024)
def _parsed(exprs: tuple[str, ...]) -> tuple[Constraint, ...] | None:
    try:
        return tuple(parse_constraints(list(exprs)))
    except InvalidArgument as err:
        log.warning("ignoring a task spec with bad constraints: %s", err)
        return None


def satisfies(node: pb.Node, spec: pb.TaskSpec) -> bool:
    """The node meets the spec's placement constraints (a spec whose constraints don't parse
    fits nowhere)."""
    if not spec.placement.constraints:
        return True
    constraints = _parsed(tuple(spec.placement.constraints))
    return constraints is not None and all(c.matches(node) for c in constraints)


@dataclass
class Decision:
    groups: list[Group] = field(default_factory=list)
    wake_at_ns: int | None = None  # look again then even if the store did not change

    def add(self, *actions: Action) -> None:
        if actions:
            self.groups.append(list(actions))

    def wake(self, at_ns: int | None) -> None:
        if at_ns is not None and (self.wake_at_ns is None or at_ns < self.wake_at_ns):
            self.wake_at_ns = at_ns

    def merge(self, other: Decision) -> None:
        self.groups.extend(other.groups)
        self.wake(other.wake_at_ns)

    def actions(self) -> list[Action]:
        return [a for g in self.groups for a in g]


def create(obj: Any) -> Action:
    return (store_pb2.CREATE, obj)


def update(obj: Any) -> Action:
    return (store_pb2.UPDATE, obj)


def delete(obj: Any) -> Action:
    return (store_pb2.DELETE, obj)


class SnapshotCache:
    """One Snapshot per store view, shared by the orchestrators (each pass of each reads the
    same view when nothing changed between them)."""

    def __init__(self) -> None:
        self._snap: Snapshot | None = None

    def get(self, view: StoreView, now_ns: int) -> Snapshot:
        snap = self._snap
        if snap is None or snap.view is not view:
            snap = self._snap = Snapshot(now_ns, view)
        return snap.at(now_ns)


ServiceCore = Callable[[pb.Service, list[pb.Task], "Snapshot"], Decision]


def for_each_service(snap: Snapshot, core: ServiceCore) -> Decision:
    """Run a per-service decision core over every service of the snapshot."""
    decision = Decision()
    for service in snap.services.values():
        decision.merge(core(service, snap.tasks_of(service.id), snap))
    return decision
