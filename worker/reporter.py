"""Task status reports from the worker to the dispatcher, batched.

Task managers call `report()` (never blocks); the reporter keeps the newest status per task
and sends what is pending through the sender of the current session (set by the agent with
`attach`): at once after a quiet spell, else everything that arrived meanwhile as the next
batch, once the last send returned and at least `min_gap` after it started. So a task's path
to Running waits for no timer, while a node starting many tasks at once sends a few batches,
not one call per state of each (1,000 nodes sending every state at once swamped the
leader). A failed send puts its statuses back unless a newer one arrived, and they go out
again over the next session: the last status of a task is never lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from proto import cluster_pb2
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

Sender = Callable[[list[cluster_pb2.TaskStatusUpdate]], Awaitable[None]]
MAX_BATCH = 1000  # updates per UpdateTaskStatus call
RETRY = 0.5
MIN_GAP = 0.1  # seconds from the start of one send to the start of the next, at least


def newer(a: pb.TaskStatus, b: pb.TaskStatus) -> bool:
    """Whether status `a` supersedes `b` (states only move forward)."""
    return (a.state, a.timestamp_ns) > (b.state, b.timestamp_ns)


class Reporter:
    def __init__(self, min_gap: float = MIN_GAP) -> None:
        self.min_gap = min_gap
        self._last_send = -min_gap
        self._pending: dict[str, pb.TaskStatus] = {}
        self._sender: Sender | None = None
        self._wake = asyncio.Event()

    def report(self, task_id: str, status: pb.TaskStatus) -> None:
        current = self._pending.get(task_id)
        if current is None or newer(status, current):
            self._pending[task_id] = status
        self._wake.set()

    def attach(self, sender: Sender | None) -> None:
        """The sender of the current session, or None while there is none."""
        self._sender = sender
        if sender is not None and self._pending:
            self._wake.set()

    def pending(self) -> dict[str, pb.TaskStatus]:
        return dict(self._pending)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            # At least one turn of the loop: reports made by the same wake-up go together.
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, self._last_send + self.min_gap - loop.time()))
            self._wake.clear()
            sender = self._sender
            if sender is None or not self._pending:
                continue
            self._last_send = loop.time()
            if not await self._flush(sender):
                await asyncio.sleep(RETRY)
                self._wake.set()

    async def _flush(self, sender: Sender) -> bool:
        batch, self._pending = self._pending, {}
        items = list(batch.items())
        for start in range(0, len(items), MAX_BATCH):
            chunk = items[start:start + MAX_BATCH]
            updates = [cluster_pb2.TaskStatusUpdate(task_id=tid, status=st) for tid, st in chunk]
            try:
                await sender(updates)
            except asyncio.CancelledError:
                self._restore(items[start:])
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the reporter itself is stopping
                # The call was cancelled with its session (grpc.aio raises CancelledError
                # when the channel closes under it): not our end. Re-raising here ended
                # the reporter for good, and every later status of the node stayed unsent
                # (its tasks shown Assigned while they ran).
                log.info("sending %d task statuses was cancelled with the session; they "
                         "go with the next one", len(items) - start)
                return False
            except Exception as err:
                log.info("sending %d task statuses failed, will retry: %s",
                         len(items) - start, _describe(err))
                self._restore(items[start:])
                return False
        return True

    def _restore(self, items: list[tuple[str, pb.TaskStatus]]) -> None:
        for task_id, status in items:
            current = self._pending.get(task_id)
            if current is None or newer(status, current):
                self._pending[task_id] = status


def _describe(err: Exception) -> str:
    details = getattr(err, "details", None)
    code = getattr(err, "code", None)
    if callable(details) and callable(code):
        return f"{code().name} {details()}"
    return str(err) or type(err).__name__
