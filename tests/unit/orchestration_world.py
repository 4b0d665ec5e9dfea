"""A small simulated cluster for the orchestrator tests: a real MemoryStore written with
batches stamped by a fake clock, the decision cores run over its snapshots, and crude
stand-ins for the allocator, scheduler and agents (which only move task status)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

from manager.errors import ManagerError
from manager.orchestrator import global_, jobs, reaper, replicated, restart, update
from manager.orchestrator.snapshot import Decision, Snapshot
from manager.orchestrator.tasks import SECOND, holds_slot
from manager.store.memory import MemoryStore, wrap
from proto import objects_pb2 as pb
from proto import store_pb2

Core = Callable[[Snapshot], Decision]
ALL_CORES: tuple[Core, ...] = (replicated.decide, global_.decide, jobs.decide, restart.decide,
                               update.decide, reaper.decide)


def node(node_id: str, state: int = pb.NODE_READY, availability: int = pb.ACTIVE,
         **labels: str) -> pb.Node:
    n = pb.Node(id=node_id)
    n.description.hostname = f"host-{node_id}"
    n.status.state = state  # type: ignore[assignment]
    n.spec.availability = availability  # type: ignore[assignment]
    n.spec.annotations.labels.update(labels)
    return n


def service(name: str = "web", replicas: int | None = 3, mode: str = "replicated",
            image: str = "busybox:1", **fields: Any) -> pb.Service:
    s = pb.Service(id=f"svc-{name}", spec_version=1)
    s.spec.annotations.name = name
    s.spec.task.container.image = image
    if mode == "replicated":
        s.spec.replicated.replicas = replicas or 0
    elif mode == "global":
        getattr(s.spec, "global").SetInParent()
    elif mode == "global_job":
        s.spec.global_job.SetInParent()
    elif mode == "replicated_job":
        s.spec.replicated_job.total_completions = replicas or 0
    for key, value in fields.items():
        setter = _SETTERS[key]
        setter(s, value)
    return s


def _restart(s: pb.Service, value: dict[str, Any]) -> None:
    policy = s.spec.task.restart
    policy.condition = value.get("condition", pb.RestartPolicy.ANY)
    if "delay" in value:
        policy.delay.ns = int(value["delay"] * SECOND)
    policy.max_attempts = value.get("max_attempts", 0)
    if "window" in value:
        policy.window.ns = int(value["window"] * SECOND)


def _update_config(field: str) -> Callable[[pb.Service, dict[str, Any]], None]:
    def set_config(s: pb.Service, value: dict[str, Any]) -> None:
        cfg = getattr(s.spec, field)
        cfg.SetInParent()
        cfg.parallelism = value.get("parallelism", 1)
        cfg.delay_ns = int(value.get("delay", 0) * SECOND)
        cfg.failure_action = value.get("failure_action", pb.UpdateConfig.PAUSE)
        cfg.monitor.ns = int(value.get("monitor", 5) * SECOND)
        cfg.max_failure_ratio = value.get("max_failure_ratio", 0.0)
        cfg.order = value.get("order", pb.UpdateConfig.STOP_FIRST)
    return set_config


_SETTERS: dict[str, Callable[[pb.Service, Any], None]] = {
    "restart": _restart,
    "update": _update_config("update"),
    "rollback": _update_config("rollback"),
    "constraints": lambda s, v: s.spec.task.placement.constraints.extend(v),
    "max_concurrent": lambda s, v: setattr(s.spec.replicated_job, "max_concurrent", v),
}


class World:
    def __init__(self, nodes: Iterable[pb.Node] = (), services: Iterable[pb.Service] = (),
                 history: int = 5) -> None:
        self.store = MemoryStore()
        self.now = 1_000 * SECOND
        self._rr = itertools.count()
        cluster = pb.Cluster(id="cluster")
        cluster.spec.orchestration.task_history_retention_limit = history
        self.write((store_pb2.CREATE, cluster))
        for obj in [*nodes, *services]:
            self.write((store_pb2.CREATE, obj))

    # -- store --

    def write(self, *actions: tuple[int, Any]) -> None:
        batch = store_pb2.StoreBatch(timestamp_ns=self.now)
        for kind, obj in actions:
            batch.actions.append(store_pb2.StoreAction(kind=kind, object=wrap(obj)))
        result = self.store.apply(batch)
        if result.error is not None:
            raise result.error

    def snap(self) -> Snapshot:
        return Snapshot(self.now, self.store.view())

    def service(self, name: str = "web") -> pb.Service:
        found = self.store.get(pb.Service, f"svc-{name}")
        assert found is not None
        return found  # type: ignore[no-any-return]

    def tasks(self, name: str = "web") -> list[pb.Task]:
        return sorted((t for t in self.store.list(pb.Task) if t.service_id == f"svc-{name}"),
                      key=lambda t: (t.slot, t.node_id, t.meta.created_at_ns))

    def holders(self, name: str = "web") -> list[pb.Task]:
        return [t for t in self.tasks(name) if holds_slot(t)]

    def running(self, name: str = "web") -> list[pb.Task]:
        return [t for t in self.tasks(name) if t.status.state == pb.RUNNING]

    def change(self, cls: type, obj_id: str, edit: Callable[[Any], None]) -> None:
        obj = self.store.get(cls, obj_id)
        edit(obj)
        self.write((store_pb2.UPDATE, obj))

    def update_service(self, edit: Callable[[pb.Service], None], name: str = "web") -> None:
        """What the API does on `service update`: new spec, spec_version+1, previous spec."""
        def apply(s: pb.Service) -> None:
            s.previous_spec.CopyFrom(s.spec)
            s.has_previous_spec = True
            edit(s)
            s.spec_version += 1
            s.ClearField("update_status")
        self.change(pb.Service, f"svc-{name}", apply)

    def set_status(self, task: pb.Task, state: int, err: str = "") -> None:
        def apply(t: pb.Task) -> None:
            t.status.state = state
            t.status.err = err
            t.status.timestamp_ns = self.now
        self.change(pb.Task, task.id, apply)

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * SECOND)

    # -- the orchestrators --

    def step(self, *cores: Core) -> Decision:
        """Run each core over a fresh snapshot and write its groups (all must succeed)."""
        total = Decision()
        for core in cores or ALL_CORES:
            decision = core(self.snap())
            for group in decision.groups:
                self.write(*group)
            total.merge(decision)
        return total

    # -- stand-ins for the allocator, scheduler and agents --

    def place(self) -> None:
        """NEW/PENDING tasks that should run get a node (round robin, or their preset one)."""
        usable = sorted(n.id for n in self.store.list(pb.Node)
                        if n.status.state == pb.NODE_READY and n.spec.availability == pb.ACTIVE)
        for task in self.store.list(pb.Task):
            if task.status.state >= pb.ASSIGNED or not holds_slot(task) or not usable:
                continue
            if not task.node_id:
                task.node_id = usable[next(self._rr) % len(usable)]
            task.status.state = pb.ASSIGNED
            self.write((store_pb2.UPDATE, task))

    def agents(self, fail: Callable[[pb.Task], int | None] = lambda t: None) -> None:
        """Agents on nodes that are up: start assigned tasks (RUNNING, or `fail(task)`) and
        stop tasks asked to stop."""
        up = {n.id for n in self.store.list(pb.Node) if n.status.state != pb.NODE_DOWN}
        for task in self.store.list(pb.Task):
            if task.node_id not in up or task.status.state >= pb.COMPLETE or \
                    task.status.state < pb.ASSIGNED:
                continue
            if task.desired_state > pb.COMPLETE:
                self.set_status(task, pb.SHUTDOWN)
            elif task.status.state < pb.RUNNING:
                outcome = fail(task)
                self.set_status(task, outcome if outcome is not None else pb.RUNNING)

    def settle(self, rounds: int = 10, fail: Callable[[pb.Task], int | None] = lambda t: None,
               cores: tuple[Core, ...] = ALL_CORES) -> None:
        """Orchestrate, place and run until nothing changes (time does not move)."""
        for _ in range(rounds):
            before = self.store.version
            self.step(*cores)
            self.place()
            self.agents(fail)
            if self.store.version == before:
                return
        raise AssertionError("the cluster did not settle")


def write_fails(world: World, *actions: tuple[int, Any]) -> bool:
    try:
        world.write(*actions)
    except ManagerError:
        return True
    return False
