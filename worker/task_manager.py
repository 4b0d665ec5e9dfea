"""One task manager per assigned task: it drives the executor one step at a time and reports
each new status.

    ASSIGNED → ACCEPTED → PREPARING → READY → STARTING → RUNNING → COMPLETE | FAILED
    errors before STARTING → REJECTED; desired SHUTDOWN/REMOVE → stop → SHUTDOWN

Rules: the state only moves forward; an action of ours never takes the task past its desired
state (desired READY stops at READY); a container's exit is a fact and is reported whatever
the desired state. A task whose desired state is REMOVE, or that left the assignment set, is
stopped and its container removed; a finished task's container is kept until then (its logs
stay readable). Health checks: the task stays STARTING until the container is healthy; an
unhealthy container is stopped and the task FAILED ("task: container unhealthy").

Engine errors: a transient one (engine unreachable, timed out, a server error) while
preparing or starting is retried with exponential backoff, up to `Backoff.attempts` tries,
before the task is rejected or failed; a permanent one (no such image, invalid spec) rejects
or fails it at once. Stopping and removing are retried until they succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from proto import objects_pb2 as pb
from worker.executor.base import ContainerState, Executor, ExecutorError, stop_grace, task_name

log = logging.getLogger(__name__)

Report = Callable[[str, pb.TaskStatus], None]
RETRY = 1.0  # seconds before retrying an engine call that failed for a reason not the task's
# A task on overlay networks that is told to stop keeps serving this long first: the leader
# has already taken it out of every node's load-balancer backends and resolvers, and this
# lets those nodes apply that before its connections are refused. 2 s, not 1: with the
# test suite's load on 2 cores, a node's withdrawal still came late 2 times in ~700 tries
# (the assignments reach a node through a busy leader, then nft runs once per sandbox).
BACKEND_DRAIN = 2.0


@dataclass(frozen=True)
class Backoff:
    """How a transient engine error while preparing or starting is retried: `first` seconds
    after the first failure, doubling up to `most`, `attempts` tries in all (about 15 s of
    retrying by default: long enough for a dockerd restart, short enough that the
    orchestrator soon places the task elsewhere)."""
    first: float = 0.5
    most: float = 8.0
    attempts: int = 6


def retry_delay(backoff: Backoff, failures: int) -> float | None:
    """Seconds to wait after the `failures`-th failure in a row (1-based); None: give up."""
    if failures >= backoff.attempts:
        return None
    return float(min(backoff.first * 2 ** (failures - 1), backoff.most))


class _Signal:
    """What a step returns when it has no new status."""

    def __init__(self, name: str) -> None:
        self.name = name


WAIT = _Signal("wait")  # nothing to do until the task changes
AGAIN = _Signal("again")  # step again (after a pause that already happened)
DONE = _Signal("done")  # container removed: the task manager is finished

Step = pb.TaskStatus | _Signal


def unhealthy_status() -> tuple[int, str, str]:
    """(state, message, err)"""
    return pb.FAILED, "unhealthy", "task: container unhealthy"


def exit_status(state: ContainerState) -> tuple[int, str, str]:
    """COMPLETE for exit 0, else FAILED with Docker's "task: non-zero exit (N)"."""
    if state.exit_code == 0:
        return pb.COMPLETE, "finished", ""
    err = f"task: non-zero exit ({state.exit_code})"
    if state.error:
        err += f": {state.error}"
    return pb.FAILED, "failed", err


class TaskManager:
    def __init__(self, task: pb.Task, executor: Executor, report: Report,
                 adopted: ContainerState | None = None, backoff: Backoff = Backoff()) -> None:
        self.task = pb.Task()
        self.task.CopyFrom(task)
        self.status = pb.TaskStatus()
        self.status.CopyFrom(task.status)  # the store's status: where we resume from
        self._executor = executor
        self._report = report
        self._container = adopted  # last known state of our container (None: not known)
        self._changed = asyncio.Event()
        self._closing = False  # left the assignment set: stop, remove, finish
        self._runner: asyncio.Task[None] | None = None
        self._backoff = backoff
        self._failures = 0  # transient engine errors in a row in the current state
        self._drained = False  # waited BACKEND_DRAIN before stopping
        self._network_released = False
        self._files_released = False
        self._log = logging.LoggerAdapter(log, {"task": task.id, "service": task.service_id})

    @property
    def task_id(self) -> str:
        return str(self.task.id)

    @property
    def done(self) -> bool:
        return self._runner is not None and self._runner.done()

    # -- driven by the worker --

    def start(self) -> asyncio.Task[None]:
        self._runner = asyncio.create_task(self.run(), name=f"task-{self.task_id}")
        return self._runner

    def update(self, task: pb.Task, resync: bool = False) -> None:
        """A new version of the task from the manager (desired state, spec); our status wins.
        `resync`: the first set of a session, whose statuses are the store's."""
        wake = task.desired_state != self.task.desired_state or task.spec != self.task.spec
        # The store is behind us (a report lost with a leader or a session): say it again.
        behind = resync and 0 < self.status.state and task.status.state < self.status.state
        status = pb.TaskStatus()
        status.CopyFrom(self.status)
        self.task.CopyFrom(task)
        self.task.status.CopyFrom(status)
        if behind:
            self._send()
        if wake:
            self._changed.set()

    def close(self) -> None:
        """The task left the assignment set: stop its container, remove it, finish."""
        self._closing = True
        self._changed.set()

    async def stop(self) -> None:
        """Stop managing (the process is going away); the container is left as it is."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    # -- the loop --

    async def run(self) -> None:
        if self.status.state >= pb.ACCEPTED:
            self._send()  # resumed (worker restart): say where it stands again
        while True:
            self._changed.clear()
            try:
                result = await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a bug or an engine failure we did not expect
                self._log.exception("task %s: step failed", self.task_id)
                result = self._error(err)
            if result is DONE:
                return
            if isinstance(result, pb.TaskStatus) and self._set(result):
                continue
            if result is not AGAIN:
                await self._changed.wait()

    async def _step(self) -> Step:
        state, desired = self.status.state, self.task.desired_state
        if state >= pb.COMPLETE:
            if self._closing or desired >= pb.REMOVE:
                return await self._remove()
            return await self._release_network()
        if self._closing or desired >= pb.SHUTDOWN:
            return await self._shutdown()
        if state < pb.ACCEPTED:
            return self._advance(pb.ACCEPTED, "accepted")
        if state == pb.ACCEPTED:
            return self._advance(pb.PREPARING, "preparing")
        if state == pb.PREPARING:
            return await self._prepare()
        if state == pb.READY:
            return self._advance(pb.STARTING, "starting")
        if state == pb.STARTING:
            return await self._start()
        return await self._watch()  # RUNNING

    # -- steps --

    def _advance(self, state: int, message: str) -> Step:
        if state > self.task.desired_state:
            return WAIT  # never past the desired state
        return self._status(state, message)

    async def _prepare(self) -> Step:
        try:
            self._container = await self._executor.prepare(self.task)
        except ExecutorError as err:
            retry = await self._retry(err, "preparing")
            return retry or self._status(pb.REJECTED, "preparing", err=str(err))
        return self._advance(pb.READY, "prepared")

    async def _start(self) -> Step:
        state = self._container
        if state is None or state.status != "created":  # resumed: ask the engine
            state = await self._executor.inspect(self.task_id)
        if not (state.running or state.exited):
            try:
                if state.missing:  # resumed at READY/STARTING without a container
                    await self._executor.prepare(self.task)
                await self._executor.start(self.task_id)
            except ExecutorError as err:
                retry = await self._retry(err, "starting")
                return retry or self._status(pb.FAILED, "starting", err=str(err))
            state = await self._executor.inspect(self.task_id)
        return await self._follow(state, starting=True)

    async def _watch(self) -> Step:
        last = self._container
        if last is None:
            try:
                last = await self._executor.inspect(self.task_id)
            except ExecutorError as err:
                self._log.warning("task %s: inspecting its container failed, retrying: %s",
                            self.task_id, err)
                await self._pause(RETRY)
                return AGAIN
        return await self._follow(last, starting=False)

    async def _follow(self, state: ContainerState, starting: bool) -> Step:
        """Watch the container until something to report happens, or the task changes."""
        while True:
            self._container = state
            if state.exited:
                return self._status(*exit_status(state))
            if state.missing:
                return self._status(pb.FAILED, "started",
                                    err=f"task: container {task_name(self.task)} is gone")
            if state.health == "unhealthy":
                await self._executor.shutdown(self.task_id, stop_grace(self.task))
                return self._status(*unhealthy_status())
            if starting and state.health in ("", "healthy"):
                return self._status(pb.RUNNING, "started")
            observed = await self._until_changed(self._executor.observe(self.task_id, state))
            if observed is None:
                return AGAIN  # the task changed (or the engine hiccuped): step again
            state = observed

    async def _release_network(self) -> Step:
        container = self.task.spec.container
        if not self._files_released and (container.secrets or container.configs):
            # As Docker unmounts a container's secrets when it stops: the data lives no
            # longer than the task runs.
            self._files_released = True
            await self._executor.release_files(self.task_id)
        if self._network_released or not self.task.networks:
            return WAIT
        try:
            await self._executor.release_network(self.task_id)
        except ExecutorError as err:
            self._log.warning("task %s: releasing its network failed, retrying: %s",
                              self.task_id, err)
            await self._pause(RETRY)
            return AGAIN
        self._network_released = True
        return WAIT

    async def _shutdown(self) -> Step:
        if self.task.networks and self.status.state == pb.RUNNING and not self._drained:
            self._drained = True
            await asyncio.sleep(BACKEND_DRAIN)
        try:
            await self._executor.shutdown(self.task_id, stop_grace(self.task))
        except ExecutorError as err:
            self._log.warning("task %s: stopping its container failed, retrying: %s",
                        self.task_id, err)
            await self._pause(RETRY)
            return AGAIN
        try:  # only to report the exit code; the task is shut down either way
            self._container = await self._executor.inspect(self.task_id)
        except ExecutorError as err:
            self._log.info("task %s: stopped, but inspecting its container failed: %s",
                     self.task_id, err)
        return self._status(pb.SHUTDOWN, "shutdown")

    async def _remove(self) -> Step:
        try:
            await self._executor.remove(self.task_id)
        except ExecutorError as err:
            self._log.warning("task %s: removing its container failed, retrying: %s",
                        self.task_id, err)
            await self._pause(RETRY)
            return AGAIN
        return DONE

    # -- helpers --

    async def _until_changed(self, aw: Coroutine[Any, Any, ContainerState]
                             ) -> ContainerState | None:
        """Await `aw` (an observe) unless the task changes first (then None). An engine
        error pauses and returns None, so the step runs again."""
        watch = asyncio.create_task(aw)
        changed = asyncio.create_task(self._changed.wait())
        try:
            await asyncio.wait({watch, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (watch, changed):
                if not fut.done():
                    fut.cancel()
        if not watch.done() or watch.cancelled():
            return None
        err = watch.exception()
        if err is None:
            return watch.result()
        if not isinstance(err, ExecutorError):
            raise err
        self._log.warning("task %s: watching its container failed, retrying: %s",
                          self.task_id, err)
        await self._pause(RETRY)
        return None

    async def _retry(self, err: ExecutorError, doing: str) -> _Signal | None:
        """After a transient error, pause (a change to the task cuts it short) and return
        AGAIN; None when the error is permanent or the retries are used up."""
        if not err.transient:
            return None
        self._failures += 1
        delay = retry_delay(self._backoff, self._failures)
        if delay is None:
            self._log.warning("task %s: %s failed %d times, giving up: %s", self.task_id, doing,
                        self._failures, err)
            return None
        self._log.warning("task %s: %s failed (transient, try %d of %d), retrying in %.1f s: %s",
                    self.task_id, doing, self._failures, self._backoff.attempts, delay, err)
        await self._pause(delay)
        return AGAIN

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)

    def _error(self, err: Exception) -> Step:
        message = str(err) or type(err).__name__
        if self.status.state < pb.STARTING:
            return self._status(pb.REJECTED, "preparing", err=message)
        if self.status.state >= pb.COMPLETE:
            return WAIT
        return self._status(pb.FAILED, "failed", err=message)

    def _status(self, state: int, message: str, err: str = "") -> pb.TaskStatus:
        status = pb.TaskStatus(state=state, message=message, err=err)  # type: ignore[arg-type]
        c = self._container
        if c is not None and not c.missing:
            status.container.container_id = c.container_id
            status.container.pid = c.pid
            status.container.exit_code = c.exit_code
            status.health = c.health
        if pb.STARTING <= state <= pb.RUNNING:  # Docker's PortStatus: what `service ps` shows
            status.port_status.ports.extend(
                p for p in self.task.endpoint.ports if p.publish_mode == pb.PortConfig.HOST)
        return status

    def _set(self, status: pb.TaskStatus) -> bool:
        if status.state < self.status.state:
            self._log.error("task %s: refusing to move back from %s to %s", self.task_id,
                      pb.TaskState.Name(self.status.state), pb.TaskState.Name(status.state))
            return False
        if status.state != self.status.state:
            self._failures = 0
            if status.state == pb.RUNNING or status.state >= pb.COMPLETE:
                self._log.info("task %s: %s%s", self.task_id,
                               pb.TaskState.Name(status.state).lower(),
                               f" ({status.err})" if status.err else "")
        self.status.CopyFrom(status)
        self.task.status.CopyFrom(status)
        self._send()
        return True

    def _send(self) -> None:
        self.status.timestamp_ns = time.time_ns()
        status = pb.TaskStatus()
        status.CopyFrom(self.status)
        self._report(self.task_id, status)
