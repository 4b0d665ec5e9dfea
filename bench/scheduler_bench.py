"""Scheduler decision core: place N pending tasks on M nodes in one pass, in memory.

    .venv/bin/python bench/scheduler_bench.py [--nodes 1000] [--tasks 10000] [--services 10]
        [--spread] [--reserve]

Measures `manager.scheduler.decide.schedule` alone (no store, no Raft, no gRPC); with
--controller, one pass of the Scheduler controller over a MemoryStore (reading the store,
deciding, building the updates, applying them in 200-action batches, without Raft). The
end-to-end figure with fake agents over gRPC is a separate benchmark. Docker's scheduler did about
4,400 tasks/s in memory (swarmkit, 100k tasks on 1k nodes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from manager.manager import Manager, ManagerAddrs
from manager.scheduler.decide import schedule
from manager.scheduler.scheduler import Scheduler
from manager.store.memory import MemoryStore, wrap
from proto import objects_pb2 as pb
from proto import store_pb2

GIB = 1 << 30


def make_nodes(count: int, zones: int = 3) -> list[pb.Node]:
    nodes = []
    for i in range(count):
        n = pb.Node(id=f"node{i:05d}", role=pb.WORKER)
        n.status.state = pb.NODE_READY
        n.description.hostname = f"host{i}"
        n.description.platform.os = "linux"
        n.description.platform.architecture = "x86_64"
        n.description.resources.nano_cpus = 8 * 10**9
        n.description.resources.memory_bytes = 32 * GIB
        n.spec.annotations.labels["zone"] = f"z{i % zones}"
        n.spec.annotations.labels["rack"] = f"r{i % 20}"
        nodes.append(n)
    return nodes


def make_tasks(count: int, services: int, spread: bool, reserve: bool) -> list[pb.Task]:
    tasks = []
    per = max(1, count // services)
    for i in range(count):
        svc = f"svc{i // per:04d}"
        t = pb.Task(id=f"task{i:06d}", service_id=svc, slot=i % per + 1)
        t.status.state = pb.PENDING
        t.desired_state = pb.RUNNING
        t.spec.placement.constraints.append("node.role==worker")
        t.spec.placement.constraints.append("node.platform.os==linux")
        if spread:
            t.spec.placement.preferences.add().spread.spread_descriptor = "node.labels.zone"
            t.spec.placement.preferences.add().spread.spread_descriptor = "node.labels.rack"
        if reserve:
            t.spec.resources.reservations.nano_cpus = 10**8
            t.spec.resources.reservations.memory_bytes = 64 << 20
        tasks.append(t)
    return tasks


def run(nodes: int, tasks: int, services: int, spread: bool, reserve: bool,
        repeat: int) -> dict[str, object]:
    node_list = make_nodes(nodes)
    pending = make_tasks(tasks, services, spread, reserve)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        decisions = schedule(node_list, {}, pending)
        times.append(time.perf_counter() - start)
        assert len(decisions.assignments) == tasks, decisions.unplaceable
    best, median = min(times), statistics.median(times)
    return {"nodes": nodes, "tasks": tasks, "services": services, "spread": spread,
            "reserve": reserve, "median_s": round(median, 4),
            "tasks_per_s": round(tasks / median), "best_tasks_per_s": round(tasks / best)}


class _LocalReplica:
    """Applies batches to the store directly: a one-manager Raft with no log."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def is_leader(self) -> bool:
        return True

    async def propose(self, batch: store_pb2.StoreBatch, timeout: float = 10.0) -> int:
        result = self.store.apply(batch)
        if result.error is not None:
            raise result.error
        return result.version


def run_controller(nodes: int, tasks: int, services: int, spread: bool, reserve: bool,
                   repeat: int) -> dict[str, object]:
    times = []
    for _ in range(repeat):
        store = MemoryStore()
        batch = store_pb2.StoreBatch(timestamp_ns=1)
        for obj in (*make_nodes(nodes), *make_tasks(tasks, services, spread, reserve)):
            batch.actions.append(store_pb2.StoreAction(kind=store_pb2.PUT, object=wrap(obj)))
        store.apply(batch)
        mgr = Manager("m", ManagerAddrs("", ""), store, _LocalReplica(store))  # type: ignore[arg-type]
        sched = Scheduler(mgr)
        start = time.perf_counter()
        decisions = asyncio.run(sched.run_once())
        times.append(time.perf_counter() - start)
        assert len(decisions.assignments) == tasks
        assert all(t.status.state == pb.ASSIGNED for t in store.list_view(pb.Task))
    median = statistics.median(times)
    return {"controller": True, "nodes": nodes, "tasks": tasks, "services": services,
            "spread": spread, "reserve": reserve, "median_s": round(median, 4),
            "tasks_per_s": round(tasks / median)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--services", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--spread", action="store_true", help="spread over zone, then rack")
    ap.add_argument("--reserve", action="store_true", help="CPU and memory reservations")
    ap.add_argument("--controller", action="store_true",
                    help="one controller pass over a store instead of the pure core")
    ap.add_argument("--all", action="store_true", help="every combination, one JSON line each")
    args = ap.parse_args()
    combos = [(s, r) for s in (False, True) for r in (False, True)] if args.all \
        else [(args.spread, args.reserve)]
    bench = run_controller if args.controller else run
    for spread, reserve in combos:
        print(json.dumps(bench(args.nodes, args.tasks, args.services, spread, reserve,
                             args.repeat)))


if __name__ == "__main__":
    main()
