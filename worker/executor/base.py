"""What a task manager asks of a container engine, one step at a time.

An executor is keyed by task id: `prepare(task)` creates the task's container (pulling the
image if it is missing), and every later call names the task. Executors never decide task
states; they report the container's state (`ContainerState`) and raise `ExecutorError` with
the engine's message when an operation fails: a `TransientError` when the same call may work
later (engine unreachable, timed out, a server error), a `PermanentError` when it can't
(no such image, an invalid spec), so the task manager knows whether to retry. Unknown
tasks are not an error for `shutdown`/`remove` (they are no-ops), so a task manager can
always clean up.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from proto import objects_pb2 as pb
from worker.files import TaskFiles

# Docker's swarm labels on every task container.
LABEL_SERVICE_ID = "com.docker.swarm.service.id"
LABEL_SERVICE_NAME = "com.docker.swarm.service.name"
LABEL_TASK_ID = "com.docker.swarm.task.id"
LABEL_TASK_NAME = "com.docker.swarm.task.name"
LABEL_NODE_ID = "com.docker.swarm.node.id"

STDOUT, STDERR = 1, 2
LogRecord = tuple[int, int, bytes]  # (timestamp_ns, STDOUT|STDERR, data)


class ExecutorError(Exception):
    """An engine operation failed; `str(err)` is the engine's message, for `status.err`.
    Raise one of the two subclasses: `transient` says whether retrying can help."""

    transient = False


class TransientError(ExecutorError):
    """The engine could not do it now (unreachable, timed out, server error): retry."""

    transient = True


class PermanentError(ExecutorError):
    """The task can't run as specified (no such image, invalid spec): retrying won't help."""


@dataclass(frozen=True)
class ContainerState:
    container_id: str = ""
    status: str = "missing"  # Docker's State.Status (created, running, exited, ...) or missing
    exit_code: int = 0
    health: str = ""  # "" (no health check), "starting", "healthy", "unhealthy"
    pid: int = 0
    error: str = ""  # the engine's State.Error, if any

    @property
    def missing(self) -> bool:
        return self.status == "missing"

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused", "restarting")

    @property
    def exited(self) -> bool:
        return self.status in ("exited", "dead")


MISSING = ContainerState()


@dataclass(frozen=True)
class EngineInfo:
    version: str
    labels: dict[str, str] = field(default_factory=dict)


def task_name(task: pb.Task) -> str:
    """The container name: the task's name `<service>.<slot>.<id>`, else its id."""
    return task.annotations.name or task.id


def swarm_labels(task: pb.Task) -> dict[str, str]:
    """The spec's container labels plus Docker's swarm labels (which win)."""
    labels = dict(task.spec.container.labels)
    labels.update({
        LABEL_SERVICE_ID: task.service_id,
        LABEL_SERVICE_NAME: task.service_name,
        LABEL_TASK_ID: task.id,
        LABEL_TASK_NAME: task_name(task),
        LABEL_NODE_ID: task.node_id,
    })
    return labels


def stop_grace(task: pb.Task, default: float = 10.0) -> float:
    """Seconds between the stop signal and SIGKILL (Docker's default 10 s)."""
    container = task.spec.container
    if container.HasField("stop_grace_period"):
        return max(container.stop_grace_period.ns / 1e9, 0.0)
    return default


class Executor(abc.ABC):
    """A container engine as the worker sees it. All methods are coroutines that never block
    the event loop."""

    @abc.abstractmethod
    async def describe(self) -> EngineInfo:
        """The engine's version and labels (for the node description)."""

    @abc.abstractmethod
    async def prepare(self, task: pb.Task) -> ContainerState:
        """Pull the image if missing and create the container (idempotent: an existing
        container of this task is reused). Raises ExecutorError (→ REJECTED)."""

    @abc.abstractmethod
    async def start(self, task_id: str) -> None:
        """Start the prepared container (a running one is left alone)."""

    @abc.abstractmethod
    async def inspect(self, task_id: str) -> ContainerState:
        """The container's state now; MISSING if it does not exist."""

    @abc.abstractmethod
    async def observe(self, task_id: str, last: ContainerState) -> ContainerState:
        """Return the container's state as soon as it differs from `last` (at once if it
        already does): it exited, its health changed, it vanished."""

    @abc.abstractmethod
    async def shutdown(self, task_id: str, grace: float) -> None:
        """Send the stop signal, SIGKILL after `grace` seconds; return once it stopped."""

    @abc.abstractmethod
    async def remove(self, task_id: str) -> None:
        """Remove the (stopped) container and its anonymous volumes."""

    @abc.abstractmethod
    def logs(self, task_id: str, follow: bool = False, tail: int = -1,
             timestamps: bool = False) -> AsyncIterator[LogRecord]:
        """The container's output as (timestamp_ns, stream, bytes) records, oldest first;
        `tail` ≥ 0 keeps only the last lines; `follow` keeps going until it exits."""

    @abc.abstractmethod
    async def list_tasks(self, node_id: str) -> dict[str, ContainerState]:
        """Containers of this node's tasks (label com.docker.swarm.node.id == node_id), by
        task id: what a restarted worker adopts."""

    async def wait(self, task_id: str) -> int:
        """Wait until the container exits; its exit code."""
        state = await self.inspect(task_id)
        while not (state.exited or state.missing):
            state = await self.observe(task_id, state)
        if state.missing:
            raise PermanentError(f"container of task {task_id} is gone")
        return state.exit_code

    async def adopt_network(self, task: pb.Task) -> None:  # noqa: B027 - optional hook
        """A restarted worker found the task's container running: plumb its sandbox again
        (the data plane's attach is idempotent)."""

    async def release_network(self, task_id: str) -> None:  # noqa: B027 - optional hook
        """The task ended: give back its network attachments (idempotent). Executors
        without networking have nothing to give back."""

    async def release_files(self, task_id: str) -> None:  # noqa: B027 - optional hook
        """The task ended: remove its secrets and configs from the host (idempotent; never
        raises)."""

    async def prune_files(self, node_id: str, keep: set[str]) -> None:  # noqa: B027
        """At start: remove the secrets and configs left on the host for this node's tasks
        other than `keep` (those whose container still runs)."""

    def use_files(self, files: TaskFiles) -> None:  # noqa: B027 - optional hook
        """Where prepare finds the secrets and configs of a task (the worker's, in memory).
        Executors that run no real containers have nothing to place."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads (containers keep running)."""
