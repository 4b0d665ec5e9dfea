"""The node's long-running services (agent, worker, certificate renewal, role changes) under
one TaskGroup the node owns: each is supervised (a crash is logged with its traceback and
the service restarted with backoff, manager/runtime.py `supervise`), and one-off jobs started
later join the same group, so nothing the node starts can fail unseen or outlive it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from manager.runtime import supervise

log = logging.getLogger(__name__)

Service = Callable[[], Awaitable[None]]


class ServiceGroup:
    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        self._started = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self, services: dict[str, Service]) -> None:
        self._task = asyncio.create_task(self._run(services), name=self.name)
        await self._started.wait()

    async def _run(self, services: dict[str, Service]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for name, run in services.items():
                    self._tasks[name] = group.create_task(
                        supervise(name, run, passthrough=()), name=name)
                self._started.set()
        finally:
            self._group = None
            self._started.set()

    def spawn(self, name: str, job: Awaitable[None]) -> asyncio.Task[None] | None:
        """Run a one-off job in the group; its failure is logged, never lost."""
        if self._group is None:
            log.warning("%s: not running; %s not started", self.name, name)
            if asyncio.iscoroutine(job):
                job.close()
            return None
        return self._group.create_task(_logged(name, job), name=name)

    def alive(self, name: str) -> bool:
        """Whether the service `name` is still being run or about to be (it has not ended
        for good)."""
        task = self._tasks.get(name)
        if task is None:  # the group is still starting it
            return self._task is not None and not self._task.done()
        return not task.done()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _logged(name: str, job: Awaitable[None]) -> None:
    try:
        await job
    except Exception:
        log.exception("%s failed", name)
