"""The worker: reconciles the node's assignment set into one task manager per task.

On start it lists the engine's containers of this node (label com.docker.swarm.node.id), so
that when the first assignment set arrives, task managers attach to the containers that are
already there instead of starting new ones (a restarted shoald does not restart its tasks).
Containers of this node whose task is not in that first set are stopped and removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Coroutine
from typing import Any

from netdriver.attachments import is_attachment
from proto import cluster_pb2
from proto import objects_pb2 as pb
from worker.executor.base import ContainerState, EngineInfo, Executor, ExecutorError
from worker.files import TaskFiles
from worker.network import NodeNetwork
from worker.reporter import Reporter
from worker.task_manager import TaskManager

log = logging.getLogger(__name__)

ENGINE_RETRY = 10.0
# How often a described engine is asked again: a dockerd restarted with other labels or
# version shows in `node inspect` (the agent sends a changed description with a heartbeat).
ENGINE_REFRESH = 30.0


async def remove_node_containers(executor: Executor, node_id: str) -> int:
    """What leaving the swarm does to this node's task containers (as Docker: force-removed).
    Returns how many were removed."""
    try:
        found = await executor.list_tasks(node_id)
        for task_id in found:
            await executor.remove(task_id)
    except ExecutorError as err:
        log.warning("could not remove this node's task containers: %s", err)
        return 0
    finally:
        await executor.close()
    return len(found)


class Worker:
    def __init__(self, node_id: str, executor: Executor, reporter: Reporter | None = None,
                 network: NodeNetwork | None = None) -> None:
        self.node_id = node_id
        self.executor = executor
        self.network = network
        self.reporter = reporter or Reporter()
        self.files = TaskFiles()
        executor.use_files(self.files)
        self.engine: EngineInfo | None = None  # None until the engine answered
        self.managers: dict[str, TaskManager] = {}
        self._adoptable: dict[str, ContainerState] | None = None  # until the first set
        self._listed = asyncio.Event()
        self._described = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle --

    async def run(self) -> None:
        """Learn the engine and this node's containers, then send reports until cancelled."""
        self._spawn(self._describe_loop())
        try:
            self._adoptable = await self.executor.list_tasks(self.node_id)
            if self._adoptable:
                log.info("found %d containers of this node to adopt", len(self._adoptable))
        except ExecutorError as err:
            log.warning("could not list this node's containers (nothing adopted): %s", err)
            self._adoptable = {}
        else:  # only when the engine answered: never unmount a live container's files
            await self.executor.prune_files(
                self.node_id, {t for t, state in self._adoptable.items() if not state.exited})
        self._listed.set()
        await self.reporter.run()

    async def wait_engine(self, timeout: float) -> EngineInfo | None:
        """The engine's description, waiting up to `timeout` for the first answer."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._described.wait(), timeout)
        return self.engine

    async def stop(self) -> None:
        """Stop managing tasks; containers keep running (a restart adopts them)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(tm.stop() for tm in self.managers.values()))
        self.managers.clear()
        await self.executor.close()

    # -- assignments --

    async def assign(self, tasks: list[pb.Task],
                     message: cluster_pb2.AssignmentsMessage | None = None,
                     resync: bool = False) -> None:
        """The full set of this node's tasks (and the state of their networks), from the
        dispatcher; `resync` for a session's first set (a status it shows behind ours is
        reported again)."""
        if self.network is not None and message is not None:
            self.network.update(message)
        if message is not None:
            self.files.update(message)
        await self._listed.wait()
        # A container attached to a network runs already: the data plane plumbs it.
        tasks = [t for t in tasks if not is_attachment(t)]
        wanted = {t.id: t for t in tasks}
        for task in tasks:
            tm = self.managers.get(task.id)
            if tm is None:
                self._start_manager(task)
            elif not tm.done:
                tm.update(task, resync)
        for task_id, tm in list(self.managers.items()):
            if task_id not in wanted:
                if tm.done:
                    del self.managers[task_id]
                else:
                    tm.close()
        self._remove_orphans()

    def _start_manager(self, task: pb.Task) -> None:
        adopted = self._adoptable.pop(task.id, None) if self._adoptable else None
        if adopted is not None and adopted.running and task.networks:
            self._spawn(self._adopt_network(task))
        tm = TaskManager(task, self.executor, self.reporter.report, adopted)
        self.managers[task.id] = tm
        tm.start().add_done_callback(functools.partial(self._finished, task.id))

    @staticmethod
    def _finished(task_id: str, runner: asyncio.Task[None]) -> None:
        if not runner.cancelled() and runner.exception() is not None:
            log.error("task manager of %s crashed", task_id, exc_info=runner.exception(),
                      extra={"task": task_id})

    def _remove_orphans(self) -> None:
        """After the first set: containers of tasks this node no longer has."""
        orphans, self._adoptable = self._adoptable or {}, {}
        for task_id in orphans:
            log.info("removing the container of task %s: no longer assigned here", task_id,
                     extra={"task": task_id})
            self._spawn(self._remove(task_id))

    async def _adopt_network(self, task: pb.Task) -> None:
        try:
            await self.executor.adopt_network(task)
        except ExecutorError as err:
            log.warning("task %s: plumbing its sandbox again failed: %s", task.id, err,
                        extra={"task": task.id, "service": task.service_id})

    async def _remove(self, task_id: str) -> None:
        try:
            await self.executor.shutdown(task_id, 10.0)
            await self.executor.remove(task_id)
        except ExecutorError as err:
            log.warning("removing the container of task %s failed: %s", task_id, err,
                        extra={"task": task_id})

    # -- engine description --

    async def _describe_loop(self) -> None:
        while True:
            try:
                self.engine = await self.executor.describe()
                wait = ENGINE_REFRESH
            except ExecutorError as err:
                log.warning("container engine unreachable, retrying in %.0f s: %s",
                            ENGINE_RETRY, err)
                wait = ENGINE_RETRY
            self._described.set()  # answered or not: don't hold the agent back
            await asyncio.sleep(wait)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
