"""The engine's container events of task containers, for the Docker executor's observers.

One long-lived call (on the executor's pool) follows the events; each event of a task's
container wakes whoever waits on that task. After the stream broke, every waiter is woken
(something may have been missed) and the stream is opened again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import requests

from worker.executor.base import LABEL_TASK_ID, ExecutorError

log = logging.getLogger(__name__)

RETRY = 1.0  # seconds before the stream is opened again

Call = Callable[..., Awaitable[Any]]  # runs a blocking function on the executor's pool


class ContainerEvents:
    def __init__(self, call: Call, api: Callable[[], Any]) -> None:
        self._call = call
        self._api = api
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stream: Any = None

    def follow(self) -> None:
        """Follow the events from now on (once; again if the follower ended)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._follow(), name="docker-events")

    def waiter(self, task_id: str) -> asyncio.Future[None]:
        """A future done at the next event of the task's container; `forget` it after."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, set()).add(waiter)
        return waiter

    def forget(self, task_id: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(task_id, set())
        waiters.discard(waiter)
        if not waiters:
            self._waiters.pop(task_id, None)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:  # unblocks the pool thread reading it; its connection may be gone already
                stream.close()
            except (OSError, requests.RequestException) as err:
                log.debug("closing the engine event stream: %s", err)
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._call(self._read, loop)
            except ExecutorError as err:
                log.info("engine events interrupted, reconnecting: %s", err)
            for task_id in list(self._waiters):  # something may have been missed
                self._wake(task_id)
            await asyncio.sleep(RETRY)

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a pool thread: follow container events of task containers until closed."""
        stream = self._api().events(decode=True,
                                    filters={"type": "container", "label": LABEL_TASK_ID})
        self._stream = stream
        for event in stream:
            attrs = (event.get("Actor") or {}).get("Attributes") or {}
            task_id = attrs.get(LABEL_TASK_ID)
            if task_id:
                try:
                    loop.call_soon_threadsafe(self._wake, task_id)
                except RuntimeError:  # the loop closed
                    return

    def _wake(self, task_id: str) -> None:
        for waiter in self._waiters.get(task_id, ()):
            if not waiter.done():
                waiter.set_result(None)
