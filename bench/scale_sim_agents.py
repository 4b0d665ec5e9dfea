"""One process of fake nodes for bench/scale_sim.py (not meant to be run by hand).

Each fake node is a real `shoal.node.Node` over a fake executor: it joins (root CA fetched and
checked against the worker token, a CSR traded for its own certificate on the bootstrap
port) and then holds the agent's Session/Heartbeat/Assignments/UpdateTaskStatus streams to
the leader over gRPC with mTLS, like a real worker's shoald. All the nodes of this process
share one asyncio loop.

    python bench/scale_sim_agents.py --remote IP:PORT[,IP:PORT...] --token SWMTKN-...
        --first 1 --count 250 --data-dir DIR --out FILE [--concurrency 16]

Stdout: one JSON object per line (`{"joined": n, "failed": k, "t": wall}` as joins finish,
then `{"joined_all": ...}`). On SIGTERM (or stdin closing) it writes FILE: for every task
its nodes saw, the wall-clock time its first `prepare` was called (the task reached its node
in an assignment set) and the time its fake container started, then stops its nodes.

A node whose agent task has ended for good is restarted as a restarted shoald would be
(`Node.stop()` then `Node.start()`, which adopts its containers), and counted
(`{"agent_restarts": n}` lines, and in FILE): the agent ends when a session of its own is
dropped (a heartbeat or the Assignments stream fails, the agent cancels the Session call,
and grpc.aio raises CancelledError out of `Agent.run`), so without this a node that lost its
session once would stay down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proto import objects_pb2 as pb  # noqa: E402
from shoal.errors import JoinFailed  # noqa: E402
from shoal.joining import JoinRequest  # noqa: E402
from shoal.node import Node  # noqa: E402
from worker.executor.fake import FakeExecutor  # noqa: E402

LOOPBACK = "127.0.0.1"
JOIN_ATTEMPTS = 10  # a real node is retried by its operator; here, up to 10 times
STOP_TIMEOUT = 10.0
SUPERVISE_EVERY = 1.0


class Recorder:
    """When each task reached its node and when its container started (wall clock)."""

    def __init__(self) -> None:
        self.prepared: dict[str, float] = {}
        self.started: dict[str, float] = {}


class RecordingExecutor(FakeExecutor):
    """The fake executor (tasks start at once and run until stopped), noting the times."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    async def prepare(self, task: pb.Task):  # type: ignore[no-untyped-def]
        self.recorder.prepared.setdefault(task.id, time.time())
        return await super().prepare(task)

    async def start(self, task_id: str) -> None:
        await super().start(task_id)
        self.recorder.started.setdefault(task_id, time.time())


def hostname(index: int) -> str:
    return f"fake-{index:04d}"


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def join_one(node: Node, req: JoinRequest, limit: asyncio.Semaphore) -> bool:
    async with limit:
        for attempt in range(JOIN_ATTEMPTS):
            try:
                await node.join(req)
                return True
            except JoinFailed as err:
                logging.warning("%s: join attempt %d failed: %s", node.hostname, attempt + 1,
                                err)
                await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
    return False


async def join_all(nodes: list[Node], reqs: list[JoinRequest], concurrency: int) -> int:
    limit = asyncio.Semaphore(concurrency)
    joined = failed = 0
    step = max(1, len(nodes) // 10)

    async def one(node: Node, req: JoinRequest) -> None:
        nonlocal joined, failed
        if await join_one(node, req, limit):
            joined += 1
        else:
            failed += 1
        if (joined + failed) % step == 0:
            emit(joined=joined, failed=failed, t=time.time())

    await asyncio.gather(*(one(n, r) for n, r in zip(nodes, reqs, strict=True)))
    return failed


class Supervisor:
    """Restarts the nodes whose agent task ended (see the module docstring)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.restarts = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_EVERY)
            dead = [n for n in self.nodes if n.state is not None and n.services is not None
                    and not n.services.alive("agent")]
            for node in dead:
                logging.warning("%s: its agent ended; restarting the node", node.hostname)
                await node.stop()
                await node.start()
            if dead:
                self.restarts += len(dead)
                emit(agent_restarts=self.restarts, t=time.time())


async def wait_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    def on_stdin() -> None:  # stdin closing (the driver died) stops us too
        if not os.read(sys.stdin.fileno(), 4096):
            stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await stop.wait()


LAG_TICK = 0.5  # seconds between the lag probe's wake-ups
LAG_REPORT = 2.0  # a wake-up this late is logged: the fake nodes, not the leader, are slow


async def watch_lag() -> None:
    """Log when this process's event loop wakes late: 250 agents in one process share a
    fraction of the machine's cores with the leader, and an agent whose loop lags misses
    its own heartbeat deadlines."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while True:
        before = loop.time()
        await asyncio.sleep(LAG_TICK)
        lag = loop.time() - before - LAG_TICK
        if lag >= LAG_REPORT and lag > worst / 2:
            logging.getLogger("scale_sim.agents").warning("event loop %.1f s late", lag)
        worst = max(worst, lag)


async def run(args: argparse.Namespace) -> None:
    lag_probe = asyncio.create_task(watch_lag())
    recorder = Recorder()
    nodes = [Node(os.path.join(args.data_dir, hostname(i)), hostname(i),
                  executor=RecordingExecutor(recorder))
             for i in range(args.first, args.first + args.count)]
    # Spread the joins over the managers: a node's session starts with the manager it
    # joined through, so the followers' "leader=" hint is followed too.
    remotes = args.remote.split(",")
    reqs = [JoinRequest(remotes[i % len(remotes)], args.token, LOOPBACK, LOOPBACK, 2377)
            for i in range(args.first, args.first + args.count)]
    supervisor = Supervisor(nodes)
    supervising = asyncio.create_task(supervisor.run())
    started = time.time()
    failed = await join_all(nodes, reqs, args.concurrency)
    emit(joined_all=len(nodes) - failed, failed=failed, t=time.time(),
         join_s=round(time.time() - started, 3))
    await wait_stop()
    supervising.cancel()
    lag_probe.cancel()
    Path(args.out).write_text(json.dumps({"prepared": recorder.prepared,
                                          "started": recorder.started,
                                          "agent_restarts": supervisor.restarts}))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(n.stop() for n in nodes),
                                              return_exceptions=True), STOP_TIMEOUT)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--remote", required=True,
                   help="the managers' cluster addresses IP:PORT[,IP:PORT...]")
    p.add_argument("--token", required=True, help="the worker join token")
    p.add_argument("--first", type=int, required=True, help="index of the first node")
    p.add_argument("--count", type=int, required=True, help="nodes in this process")
    p.add_argument("--data-dir", required=True, help="the nodes' data roots go under it")
    p.add_argument("--out", required=True, help="where to write the task times on SIGTERM")
    p.add_argument("--concurrency", type=int, default=16, help="joins in flight")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("worker.agent").setLevel(logging.INFO)  # sessions that end, and why
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
