"""The log broker (leader): clients subscribe to the logs of services or tasks; the broker asks
the nodes that ran those tasks to publish them, and relays what they send.

Beyond Docker: a subscription that follows also reaches nodes that get tasks of the service
later (replacements, scale-ups), so `service logs -f` keeps up with rescheduled tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from manager.errors import NotFound
from manager.identity import new_id
from manager.manager import Manager
from proto import cluster_pb2
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

RESCAN = 0.5  # seconds between looks for new tasks of a followed subscription


def selected_tasks(tasks: list[pb.Task], selector: cluster_pb2.LogSelector) -> list[pb.Task]:
    services, ids = set(selector.service_ids), set(selector.task_ids)
    return [t for t in tasks if t.id in ids or t.service_id in services]


def nodes_of(tasks: list[pb.Task]) -> set[str]:
    """Nodes that ran (or run) one of the tasks: only those have its logs."""
    return {t.node_id for t in tasks if t.node_id and t.status.state >= pb.ACCEPTED}


@dataclass
class Subscription:
    id: str
    message: cluster_pb2.SubscriptionMessage
    out: asyncio.Queue[list[cluster_pb2.LogMessage] | None] = field(
        default_factory=asyncio.Queue)
    asked: set[str] = field(default_factory=set)  # nodes sent the subscription
    done: set[str] = field(default_factory=set)  # nodes that sent everything (no follow)


class LogBroker:
    def __init__(self, manager: Manager) -> None:
        self.mgr = manager
        self.agents: dict[str, asyncio.Queue[cluster_pb2.SubscriptionMessage]] = {}
        self.subs: dict[str, Subscription] = {}

    # -- agents --

    def agent_connected(self, node_id: str) -> asyncio.Queue[cluster_pb2.SubscriptionMessage]:
        queue: asyncio.Queue[cluster_pb2.SubscriptionMessage] = asyncio.Queue()
        self.agents[node_id] = queue
        for sub in self.subs.values():  # a node that reconnects gets what it was asked again
            if node_id in sub.asked and node_id not in sub.done:
                queue.put_nowait(sub.message)
        return queue

    def agent_gone(self, node_id: str, queue: object) -> None:
        if self.agents.get(node_id) is queue:
            del self.agents[node_id]

    def publish(self, node_id: str, msg: cluster_pb2.PublishLogsMessage) -> None:
        sub = self.subs.get(msg.subscription_id)
        if sub is None:
            return
        if msg.messages:
            sub.out.put_nowait(list(msg.messages))
        if msg.close:
            sub.done.add(node_id)
            self._maybe_finish(sub)

    # -- clients --

    async def subscribe(self, selector: cluster_pb2.LogSelector, options: cluster_pb2.LogOptions
                        ) -> AsyncIterator[list[cluster_pb2.LogMessage]]:
        tasks = selected_tasks(self.mgr.store.list_view(pb.Task), selector)
        if not tasks and not selector.service_ids:
            raise NotFound(f"no task {', '.join(selector.task_ids)} to read logs from")
        sub = Subscription(new_id(), cluster_pb2.SubscriptionMessage(
            selector=selector, options=options))
        sub.message.id = sub.id
        self.subs[sub.id] = sub
        try:
            self._ask(sub, nodes_of(tasks))
            self._maybe_finish(sub)
            rescan = asyncio.create_task(self._follow(sub)) if options.follow else None
            try:
                while (batch := await sub.out.get()) is not None:
                    yield batch
            finally:
                if rescan is not None:
                    rescan.cancel()
        finally:
            self._close(sub)

    def _ask(self, sub: Subscription, nodes: set[str]) -> None:
        for node_id in nodes - sub.asked:
            sub.asked.add(node_id)
            queue = self.agents.get(node_id)
            if queue is None:
                log.info("logs of node %s unavailable: it has no session", node_id)
                sub.done.add(node_id)  # nothing will come; don't wait for it
                continue
            queue.put_nowait(sub.message)

    def _maybe_finish(self, sub: Subscription) -> None:
        if not sub.message.options.follow and sub.asked <= sub.done:
            sub.out.put_nowait(None)

    async def _follow(self, sub: Subscription) -> None:
        while True:
            await asyncio.sleep(RESCAN)
            tasks = selected_tasks(self.mgr.store.list_view(pb.Task), sub.message.selector)
            self._ask(sub, nodes_of(tasks))

    def _close(self, sub: Subscription) -> None:
        self.subs.pop(sub.id, None)
        closing = cluster_pb2.SubscriptionMessage(id=sub.id, close=True)
        for node_id in sub.asked - sub.done:
            queue = self.agents.get(node_id)
            if queue is not None:
                queue.put_nowait(closing)
