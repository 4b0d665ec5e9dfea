"""The API alone at full size, for bench/api_load.py --store-only: the node's real HTTP API
(shoal.api.server.make_app, every middleware) on a unix socket, over an in-memory store of
N nodes, S services and T running tasks, in a process of its own.

What it leaves out: Raft (a write applies to the store at once) and the leader's
controllers, dispatcher and sessions. In their place one coroutine on the same event loop
plays a rolling update of the first --update-services services, with the store writes the
real one makes per task (the old task shut down; the new one created, then PENDING, ASSIGNED
and RUNNING, each a batch of its own), --update-parallelism tasks every --update-delay
seconds, over and over. Prints one JSON line {"ready": ...} on stdout once it serves.

    .venv/bin/python bench/api_load_server.py --socket /tmp/x.sock --nodes 5000 \
        --tasks 100000 --services 1000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402

from manager.identity import new_id  # noqa: E402
from manager.orchestrator.tasks import new_task  # noqa: E402
from manager.store.memory import MemoryStore, wrap  # noqa: E402
from proto import objects_pb2 as pb  # noqa: E402
from proto import store_pb2  # noqa: E402
from shoal.api.server import make_app  # noqa: E402
from shoal.metrics.registry import NodeMetrics  # noqa: E402

IMAGE = "shoal/busybox:latest"
BATCH = 1000


class StoreManager:
    """What the API needs of a manager: the store and its write path, without Raft."""

    def __init__(self) -> None:
        self.store = MemoryStore()

    async def write(self, *actions: tuple[int, Any], fenced: bool = False) -> int:
        return self.apply(list(actions))

    async def update(self, obj: Any, fenced: bool = False) -> int:
        return self.apply([(store_pb2.UPDATE, obj)])

    async def modify(self, cls: type, obj_id: str, change: Any, fenced: bool = False) -> bool:
        obj = self.store.get(cls, obj_id)
        if obj is None or not change(obj):
            return False
        await self.update(obj)
        return True

    def apply(self, actions: Sequence[tuple[Any, Any]]) -> int:
        batch = store_pb2.StoreBatch(timestamp_ns=time.time_ns())
        for kind, obj in actions:
            batch.actions.append(store_pb2.StoreAction(kind=kind, object=wrap(obj)))
        result = self.store.apply(batch)
        if result.error:
            raise result.error
        return result.version


class StoreNode:
    """What the API needs of a node: a manager that is always there."""

    state = "active"
    manager_role = "manager"
    locked = False

    def __init__(self) -> None:
        self.mgr = StoreManager()
        self.metrics = NodeMetrics()

    def manager(self) -> StoreManager:
        return self.mgr


def fill(mgr: StoreManager, nodes: int, services: int, tasks: int) -> list[pb.Service]:
    node_ids = [new_id() for _ in range(nodes)]
    for i in range(0, nodes, BATCH):
        mgr.apply([(store_pb2.PUT, pb.Node(id=n, status=pb.NodeStatus(state=pb.NODE_READY)))
                   for n in node_ids[i:i + BATCH]])
    made = []
    per, extra = divmod(tasks, services)
    for i in range(services):
        svc = pb.Service(id=new_id(), spec_version=1)
        svc.spec.annotations.name = f"sim{i:02d}"
        svc.spec.task.container.image = IMAGE
        svc.spec.replicated.replicas = per + (1 if i < extra else 0)
        made.append(svc)
    mgr.apply([(store_pb2.PUT, s) for s in made])
    now, batch, n = time.time_ns(), [], 0
    for svc in made:
        for slot in range(1, svc.spec.replicated.replicas + 1):
            batch.append((store_pb2.PUT, running(new_task(svc, now, slot, node_ids[n % nodes]))))
            n += 1
            if len(batch) == BATCH:
                mgr.apply(batch)
                batch = []
    if batch:
        mgr.apply(batch)
    return made


def running(task: pb.Task) -> pb.Task:
    task.status.state = pb.RUNNING
    task.status.message = "started"
    task.status.timestamp_ns = time.time_ns()
    task.status.container.container_id = new_id() + new_id()
    return task


def fetch(mgr: StoreManager, cls: type, obj_id: str) -> Any:
    """A copy of a stored object, to change."""
    obj = mgr.store.get(cls, obj_id)
    if obj is None:
        raise RuntimeError(f"{cls.__name__} {obj_id} is gone")
    return obj


async def roll(mgr: StoreManager, service_ids: list[str], parallelism: int,
               delay: float) -> None:
    """Rolling updates of these services, one after the other, for ever."""
    while True:
        for sid in service_ids:
            svc = fetch(mgr, pb.Service, sid)
            svc.spec_version += 1
            svc.spec.task.force_update += 1
            mgr.apply([(store_pb2.UPDATE, svc)])
            svc = fetch(mgr, pb.Service, sid)
            old = sorted(mgr.store.view().tasks_of_service(sid), key=lambda t: t.slot)
            old = [t for t in old if t.desired_state == pb.RUNNING]
            for i in range(0, len(old), parallelism):
                await replace(mgr, svc, old[i:i + parallelism])
                await asyncio.sleep(delay)


async def replace(mgr: StoreManager, svc: pb.Service, old: list[pb.Task]) -> None:
    stopped = []
    for t in old:
        copy = pb.Task()
        copy.CopyFrom(t)
        copy.desired_state = pb.SHUTDOWN
        copy.status.state = pb.SHUTDOWN
        stopped.append((store_pb2.UPDATE, copy))
    mgr.apply(stopped)
    new = [new_task(svc, time.time_ns(), t.slot, t.node_id) for t in old]
    mgr.apply([(store_pb2.CREATE, t) for t in new])
    for state in (pb.PENDING, pb.ASSIGNED, pb.RUNNING):
        await asyncio.sleep(0)
        changed = []
        for t in new:
            current = fetch(mgr, pb.Task, t.id)
            current.status.state = state
            current.status.timestamp_ns = time.time_ns()
            changed.append((store_pb2.UPDATE, current))
        mgr.apply(changed)


async def serve(args: argparse.Namespace, profiler: cProfile.Profile | None) -> None:
    node = StoreNode()
    began = time.monotonic()
    made = fill(node.mgr, args.nodes, args.services, args.tasks)
    filled_s = time.monotonic() - began
    runner = web.AppRunner(make_app(node))  # type: ignore[arg-type]
    await runner.setup()
    await web.UnixSite(runner, args.socket).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    ids = [s.id for s in made[:args.update_services]]
    roller = asyncio.create_task(roll(node.mgr, ids, args.update_parallelism,
                                      args.update_delay)) if ids else None
    if profiler is not None:
        profiler.enable()
    print(json.dumps({"ready": True, "fill_s": round(filled_s, 1)}), flush=True)
    await stop.wait()
    if roller is not None:
        roller.cancel()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--update-services", type=int, default=1)
    p.add_argument("--update-parallelism", type=int, default=2)
    p.add_argument("--update-delay", type=float, default=1.0)
    p.add_argument("--profile", type=Path, default=None, metavar="PATH",
                   help="cProfile the process once it serves; pstats written at exit")
    args = p.parse_args()
    profiler = cProfile.Profile() if args.profile else None
    asyncio.run(serve(args, profiler))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(args.profile))


if __name__ == "__main__":
    main()
