"""A fake container engine, scripted by the task's container labels, for tests and the
scheduling benchmark. Cheap: a container is a record plus at most a few loop timers (no
threads, no processes).

Labels (all optional; by default a container runs until it is stopped):
- `shoal.fake.fail=prepare|start`: that step raises ExecutorError with
  `shoal.fake.error` (default: "fake: <step> failed"): a PermanentError, or a TransientError
  with `shoal.fake.fail_kind=transient`; `shoal.fake.fail_times=N` fails only the first N
  calls of that step for the task (default: every call)
- `shoal.fake.prepare_for=S`: preparing takes S seconds (a slow pull)
- `shoal.fake.run_for=S` and `shoal.fake.exit=N`: exits with code N (default 0) S seconds
  after it started
- `shoal.fake.health=healthy@0.2,unhealthy@1`: the container has a health check; its health
  is "starting" from the start, then each state at its time (seconds after the start)
- `shoal.fake.ignore_stop=1`: ignores the stop signal, killed (137) after the grace period;
  otherwise it exits 143 at once
- `shoal.fake.output=TEXT`: lines written to stdout when it starts
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from proto import objects_pb2 as pb
from worker.executor.base import (
    LABEL_NODE_ID,
    MISSING,
    STDOUT,
    ContainerState,
    EngineInfo,
    Executor,
    ExecutorError,
    LogRecord,
    PermanentError,
    TransientError,
    swarm_labels,
    task_name,
)

PREFIX = "shoal.fake."
_ids = itertools.count(1)


@dataclass
class FakeContainer:
    task_id: str
    name: str
    labels: dict[str, str]
    state: ContainerState
    output: list[LogRecord] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def script(self, key: str, default: str = "") -> str:
        return self.labels.get(PREFIX + key, default)


class FakeExecutor(Executor):
    def __init__(self, version: str = "fake-1.0") -> None:
        self.version = version
        self.engine_down = False  # describe() fails, as an engine that is not up yet
        self.containers: dict[str, FakeContainer] = {}  # by task id
        self.calls: list[tuple[str, str]] = []  # (operation, task id), for tests
        self.failed: dict[tuple[str, str], int] = {}  # (step, task id) -> scripted failures

    async def describe(self) -> EngineInfo:
        if self.engine_down:
            raise ExecutorError("the fake engine is down")
        return EngineInfo(self.version, {"executor": "fake"})

    async def prepare(self, task: pb.Task) -> ContainerState:
        self.calls.append(("prepare", task.id))
        existing = self.containers.get(task.id)
        if existing is not None:
            return existing.state
        labels = swarm_labels(task)
        delay = float(labels.get(PREFIX + "prepare_for", "0"))
        if delay > 0:
            await asyncio.sleep(delay)
        self._maybe_fail("prepare", task.id, labels)
        state = ContainerState(container_id=f"fake{next(_ids):08d}", status="created")
        self.containers[task.id] = FakeContainer(task.id, task_name(task), labels, state)
        return state

    async def start(self, task_id: str) -> None:
        self.calls.append(("start", task_id))
        c = self._get(task_id)
        if c.state.running:
            return
        self._maybe_fail("start", task_id, c.labels)
        health = "starting" if c.script("health") else ""
        self._set(c, replace(c.state, status="running", pid=next(_ids), health=health))
        now = time.time_ns()
        c.output.extend((now, STDOUT, line.encode() + b"\n")
                        for line in c.script("output").splitlines())
        loop = asyncio.get_running_loop()
        if c.script("run_for"):
            code = int(c.script("exit", "0"))
            c.timers.append(loop.call_later(float(c.script("run_for")), self._exit, c, code))
        for item in filter(None, c.script("health").split(",")):
            value, _, at = item.partition("@")
            c.timers.append(loop.call_later(float(at or 0), self._health, c, value.strip()))

    async def inspect(self, task_id: str) -> ContainerState:
        c = self.containers.get(task_id)
        return c.state if c is not None else MISSING

    async def observe(self, task_id: str, last: ContainerState) -> ContainerState:
        c = self.containers.get(task_id)
        while c is not None and c.state == last:
            waiter = asyncio.get_running_loop().create_future()
            c.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in c.waiters:
                    c.waiters.remove(waiter)
            c = self.containers.get(task_id)
        return c.state if c is not None else MISSING

    async def shutdown(self, task_id: str, grace: float) -> None:
        self.calls.append(("shutdown", task_id))
        c = self.containers.get(task_id)
        if c is None or not c.state.running:
            return
        if c.script("ignore_stop"):
            await asyncio.sleep(grace)
            if c.state.running:
                self._exit(c, 137)
        else:
            self._exit(c, 143)

    async def remove(self, task_id: str) -> None:
        self.calls.append(("remove", task_id))
        c = self.containers.pop(task_id, None)
        if c is not None:
            for timer in c.timers:
                timer.cancel()
            self._wake(c)

    async def logs(self, task_id: str, follow: bool = False, tail: int = -1,
                   timestamps: bool = False) -> AsyncIterator[LogRecord]:
        c = self._get(task_id)
        records = list(c.output)
        for record in records[-tail:] if tail >= 0 else records:
            yield record
        if follow:
            await self.wait(task_id)

    async def list_tasks(self, node_id: str) -> dict[str, ContainerState]:
        return {tid: c.state for tid, c in self.containers.items()
                if c.labels.get(LABEL_NODE_ID) == node_id}

    # -- scripted behaviour --

    def _maybe_fail(self, step: str, task_id: str, labels: dict[str, str]) -> None:
        if labels.get(PREFIX + "fail") != step:
            return
        times = labels.get(PREFIX + "fail_times")
        done = self.failed.get((step, task_id), 0)
        if times is not None and done >= int(times):
            return
        self.failed[(step, task_id)] = done + 1
        kind = TransientError if labels.get(PREFIX + "fail_kind") == "transient" \
            else PermanentError
        raise kind(labels.get(PREFIX + "error", f"fake: {step} failed"))

    def _get(self, task_id: str) -> FakeContainer:
        c = self.containers.get(task_id)
        if c is None:
            raise PermanentError(f"No such container: task {task_id}")
        return c

    def _exit(self, c: FakeContainer, code: int) -> None:
        if c.state.running:
            self._set(c, replace(c.state, status="exited", exit_code=code, pid=0))
            for timer in c.timers:
                timer.cancel()

    def _health(self, c: FakeContainer, value: str) -> None:
        if c.state.running:
            self._set(c, replace(c.state, health=value))

    def _set(self, c: FakeContainer, state: ContainerState) -> None:
        c.state = state
        self._wake(c)

    @staticmethod
    def _wake(c: FakeContainer) -> None:
        for waiter in c.waiters:
            if not waiter.done():
                waiter.set_result(None)
        c.waiters.clear()
