"""A node's metrics: one CollectorRegistry per shoald (never prometheus_client's global one,
so several nodes in one test process keep their own series), owned by the Node and handed
down to the manager role and the API.

Counters and histograms are incremented where things happen (API requests here, store
writes and scheduler passes in manager/metrics.py); everything else is read from the node
when Prometheus scrapes (NodeCollector): the cluster's state only on a manager, the
agent's session and the data plane on every node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from manager.metrics import ManagerInstruments
from manager.store.memory import StoreView
from shoal.metrics.cluster import cluster_families
from shoal.metrics.node import (
    agent_families,
    dispatcher_families,
    network_families,
    raft_families,
)

if TYPE_CHECKING:
    from shoal.node import Node

API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
               30.0)


@dataclass(frozen=True)
class ApiInstruments:
    requests: Counter
    duration: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ApiInstruments:
        return cls(
            Counter("shoal_api_requests_total",
                    "HTTP API requests answered, by method, route pattern and status code.",
                    ["method", "route", "code"], registry=registry),
            Histogram("shoal_api_request_duration_seconds",
                      "Time to answer an HTTP API request (a stream: until it ends), by "
                      "method and route pattern.", ["method", "route"],
                      buckets=API_BUCKETS, registry=registry),
        )

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        self.requests.labels(method, route, str(code)).inc()
        self.duration.labels(method, route).observe(seconds)


@dataclass
class NodeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    manager: ManagerInstruments = field(init=False)
    api: ApiInstruments = field(init=False)

    collector: NodeCollector | None = field(init=False, default=None)
    _scrapes: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)
    # The cluster's families of the last store view scraped (scrapers in step reuse them).
    _cluster: tuple[StoreView | None, list[Metric]] = field(init=False, default=(None, []))

    def __post_init__(self) -> None:
        self.manager = ManagerInstruments.create(self.registry)
        self.api = ApiInstruments.create(self.registry)

    def watch(self, node: Node) -> None:
        self.collector = NodeCollector(node)
        self.registry.register(self.collector)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """Every family, in the format the scraper's Accept header asks for (Prometheus'
        text format by default, or OpenMetrics), and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def scrape(self, accept: str = "") -> tuple[bytes, str]:
        """`exposition`, with the work over every task (the cluster's families, from an
        immutable store view) and the encoding in a thread: on the event loop a scrape of a
        leader with 50,000 tasks took it for most of a second, and heartbeats and status
        reports waited. What the node keeps live (sessions, Raft, agent, data plane) is
        read on the loop."""
        collector = self.collector
        if collector is None:
            return await asyncio.to_thread(self.exposition, accept)
        async with self._scrapes:
            view = collector.view()
            cluster: list[Metric] = []
            if view is not None:
                if self._cluster[0] is not view:
                    self._cluster = (view, await asyncio.to_thread(cluster_families, view))
                cluster = self._cluster[1]
            collector.prepared = [*cluster, *collector.live_families()]
            try:
                return await asyncio.to_thread(self.exposition, accept)
            finally:
                collector.prepared = None


class NodeCollector(Collector):
    """Families read from the node at scrape time."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.prepared: list[Metric] | None = None  # set by NodeMetrics.scrape

    def describe(self) -> list[Metric]:
        return []  # families come and go with the node's roles: not checked at register

    def collect(self) -> Iterator[Metric]:
        if self.prepared is not None:
            yield from self.prepared
            return
        view = self.view()
        if view is not None:
            yield from cluster_families(view)
        yield from self.live_families()

    def view(self) -> StoreView | None:
        """The manager's store (None on a worker)."""
        role = self.node.manager_role
        return role.store.view() if role is not None else None

    def live_families(self) -> Iterator[Metric]:
        """What the node keeps in memory and changes in place: read on its event loop."""
        node = self.node
        role = node.manager_role
        if role is not None:
            leader = role.replica.is_leader()
            yield from raft_families(role.replica.progress(), leader)
            dispatcher = role.dispatcher
            sessions = dispatcher.sessions.values() if leader else []
            yield from dispatcher_families(list(sessions), time.monotonic(),
                                           dispatcher.queue_wait() if leader else 0.0)
        agent = node.agent
        if agent is not None:
            yield from agent_families(agent.connected_to is not None, agent.last_heartbeat,
                                      agent.heartbeat_rtt, time.monotonic())
        plane = node.plane
        if plane is not None and node.state is not None:
            yield from network_families(node.state.node_id, plane.assignments, plane.report,
                                        time.time_ns())
