"""Publishing task logs: the leader's broker sends subscriptions over a stream; for each, the
node reads the matching tasks' container output and streams it back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from proto import cluster_pb2, cluster_pb2_grpc
from proto import objects_pb2 as pb
from worker.executor.base import ExecutorError
from worker.worker import Worker

log = logging.getLogger(__name__)

BATCH_WINDOW = 0.05  # seconds to gather lines into one message
RESCAN = 0.5  # a following subscription picks up new tasks of the service this often

_DONE = object()


def matches(task: pb.Task, selector: cluster_pb2.LogSelector) -> bool:
    return task.id in selector.task_ids or task.service_id in selector.service_ids


class Subscription:
    """One subscription on this node: a reader per matching task, feeding one queue."""

    def __init__(self, worker: Worker, node_id: str, sub: cluster_pb2.SubscriptionMessage):
        self.worker, self.node_id, self.sub = worker, node_id, sub
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.readers: dict[str, asyncio.Task[None]] = {}

    def _scan(self) -> None:
        for tm in list(self.worker.managers.values()):
            task = tm.task
            if task.id not in self.readers and matches(task, self.sub.selector):
                self.readers[task.id] = asyncio.create_task(self._read(task))

    async def _read(self, task: pb.Task) -> None:
        opts = self.sub.options
        try:
            async for ts, stream, data in self.worker.executor.logs(
                    task.id, follow=opts.follow, tail=opts.tail, timestamps=True):
                if ts >= opts.since_ns:
                    self.queue.put_nowait(cluster_pb2.LogMessage(
                        task_id=task.id, service_id=task.service_id, node_id=self.node_id,
                        timestamp_ns=ts, stream=stream, data=data))
        except ExecutorError as err:
            log.info("no logs for task %s: %s", task.id, err)
        finally:
            self.queue.put_nowait(_DONE)

    async def messages(self) -> AsyncIterator[cluster_pb2.PublishLogsMessage]:
        self._scan()
        rescan = asyncio.create_task(self._rescan()) if self.sub.options.follow else None
        finished = 0
        try:
            while self.sub.options.follow or finished < len(self.readers):
                batch, ended = await self._gather()
                finished += ended
                if batch:
                    yield cluster_pb2.PublishLogsMessage(subscription_id=self.sub.id,
                                                         messages=batch)
            yield cluster_pb2.PublishLogsMessage(subscription_id=self.sub.id, close=True)
        finally:
            if rescan is not None:
                rescan.cancel()
            for reader in self.readers.values():
                reader.cancel()

    async def _gather(self) -> tuple[list[cluster_pb2.LogMessage], int]:
        first = await self.queue.get()
        items = [first]
        await asyncio.sleep(BATCH_WINDOW)
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        batch = [i for i in items if isinstance(i, cluster_pb2.LogMessage)]
        return batch, len(items) - len(batch)

    async def _rescan(self) -> None:
        while True:
            await asyncio.sleep(RESCAN)
            self._scan()


async def publish_logs(channel: grpc.aio.Channel, worker: Worker, node_id: str) -> None:
    """Serve the broker's subscriptions for as long as the session lasts."""
    broker = cluster_pb2_grpc.LogBrokerStub(channel)
    running: dict[str, asyncio.Task[None]] = {}

    async def serve(sub: cluster_pb2.SubscriptionMessage) -> None:
        try:
            await broker.PublishLogs(Subscription(worker, node_id, sub).messages())
        except grpc.aio.AioRpcError as err:
            log.info("publishing logs of subscription %s ended: %s", sub.id, err.details())
        finally:
            running.pop(sub.id, None)

    try:
        async for sub in broker.ListenSubscriptions(cluster_pb2.ListenSubscriptionsRequest()):
            if sub.close:
                if (task := running.pop(sub.id, None)) is not None:
                    task.cancel()
            elif sub.id not in running:
                running[sub.id] = asyncio.create_task(serve(sub))
    except grpc.aio.AioRpcError as err:
        log.info("log subscriptions stream ended: %s %s", err.code().name, err.details())
    finally:
        for task in running.values():
            task.cancel()
        for result in await asyncio.gather(*running.values(), return_exceptions=True):
            if isinstance(result, Exception):  # cancellations are expected, failures not
                log.warning("publishing logs failed: %r", result)
