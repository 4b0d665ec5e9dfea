"""The metrics' pure conversions: a store view, Raft status, sessions, the agent and the data
plane in; Prometheus families out (read back through prometheus_client's own parser)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from manager.dispatcher.sessions import NodeSession
from manager.metrics import ManagerInstruments
from manager.scheduler import filters
from manager.scheduler.constraint import parse_constraints
from manager.store.memory import StoreView
from proto import cluster_pb2
from proto import objects_pb2 as pb
from shoal.metrics.cluster import REASONS, cluster_families, unplaceable_reasons
from shoal.metrics.node import (
    agent_families,
    dispatcher_families,
    network_families,
    raft_families,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def scrape(families: list[Metric]) -> Samples:
    """Through the text format and back, as Prometheus would read it."""
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def node(node_id: str, state: int, avail: int = pb.ACTIVE) -> pb.Node:
    n = pb.Node(id=node_id)
    n.status.state = state  # type: ignore[assignment]
    n.spec.availability = avail  # type: ignore[assignment]
    return n


def service(service_id: str, name: str, replicas: int) -> pb.Service:
    svc = pb.Service(id=service_id, spec_version=1)
    svc.spec.annotations.name = name
    svc.spec.replicated.replicas = replicas
    return svc


def task(task_id: str, service_id: str, state: int, err: str = "") -> pb.Task:
    t = pb.Task(id=task_id, service_id=service_id, spec_version=1, desired_state=pb.RUNNING)
    t.status.state = state  # type: ignore[assignment]
    t.status.err = err
    return t


def _why(*reasons: filters.Reason | None) -> str:
    return filters.explain({r: 2 for r in reasons if r is not None})


def test_unplaceable_reasons_read_every_filters_words() -> None:
    req = filters.Requirements("s", cpu=4, mem=1 << 40,
                               constraints=tuple(parse_constraints(["node.labels.zone==b"])),
                               platforms=(("linux", "s390x"),), host_ports=((6, 80),),
                               max_replicas=1, spread=())
    down_node = node("n", pb.NODE_DOWN, pb.DRAIN)
    down_node.description.platform.os, down_node.description.platform.architecture = \
        "linux", "x86_64"
    down = filters.NodeInfo(down_node, "n", 0, 0)
    down.ports.add((6, 80))
    down.by_service["s"] = 1
    text = _why(filters.ready(req, down), filters.availability(req, down),
                filters.constraints(req, down), filters.platform(req, down),
                filters.resources(req, down), filters.ports(req, down),
                filters.max_replicas(req, down))
    assert unplaceable_reasons(text) == ["node_not_ready", "node_drained",
                                         "insufficient_cpu", "constraint", "platform",
                                         "host_port", "max_replicas"]
    paused = filters.NodeInfo(node("p", pb.NODE_READY, pb.PAUSE), "p", 8, 0)
    req_mem = filters.Requirements("s", 0, 1, (), (), (), 0, ())
    assert unplaceable_reasons(_why(filters.availability(req_mem, paused),
                                    filters.resources(req_mem, paused))) == \
        ["node_paused", "insufficient_memory"]
    assert unplaceable_reasons(filters.explain({})) == ["no_nodes"]
    assert unplaceable_reasons("no suitable node (node abc not found)") == ["node_not_found"]
    assert unplaceable_reasons("no suitable node (invalid constraint x)") == ["invalid_spec"]
    assert unplaceable_reasons("") == []
    assert set(REASONS) >= {"node_not_ready", "constraint", "invalid_spec"}


def test_cluster_families_count_nodes_tasks_services_and_unplaceable() -> None:
    mem = "no suitable node (insufficient memory on 2 nodes; zone==b not met on 1 node)"
    view = StoreView.of([
        node("n1", pb.NODE_READY), node("n2", pb.NODE_READY, pb.DRAIN),
        node("n3", pb.NODE_DOWN),
        service("s1", "web", 3), service("s2", "db", 1),
        task("t1", "s1", pb.RUNNING), task("t2", "s1", pb.RUNNING),
        task("t3", "s1", pb.PENDING, mem), task("t4", "s2", pb.PENDING, mem),
        task("t5", "s2", pb.SHUTDOWN),
    ])
    s = scrape(cluster_families(view))
    assert value(s, "shoal_nodes", state="ready", availability="active") == 1
    assert value(s, "shoal_nodes", state="ready", availability="drain") == 1
    assert value(s, "shoal_nodes", state="down", availability="active") == 1
    assert value(s, "shoal_nodes", state="disconnected", availability="pause") == 0
    assert value(s, "shoal_tasks", state="running") == 2
    assert value(s, "shoal_tasks", state="pending") == 2
    assert value(s, "shoal_tasks", state="shutdown") == 1
    assert value(s, "shoal_tasks", state="failed") == 0
    assert value(s, "shoal_service_desired_tasks", service="web", service_id="s1") == 3
    assert value(s, "shoal_service_running_tasks", service="web", service_id="s1") == 2
    assert value(s, "shoal_service_desired_tasks", service="db", service_id="s2") == 1
    assert value(s, "shoal_service_running_tasks", service="db", service_id="s2") == 0
    assert value(s, "shoal_scheduler_unplaceable_tasks", reason="insufficient_memory") == 2
    assert value(s, "shoal_scheduler_unplaceable_tasks", reason="constraint") == 2
    assert value(s, "shoal_scheduler_unplaceable_tasks", reason="host_port") == 0


def test_a_pending_task_not_wanted_is_not_unplaceable() -> None:
    t = task("t1", "s1", pb.PENDING, "no suitable node (node down on 1 node)")
    t.desired_state = pb.SHUTDOWN
    s = scrape(cluster_families(StoreView.of([t])))
    assert value(s, "shoal_scheduler_unplaceable_tasks", reason="node_not_ready") == 0


def test_raft_families() -> None:
    s = scrape(raft_families({"raft_term": 3, "commit_idx": 42, "last_applied": 41}, True))
    assert value(s, "shoal_raft_term") == 3
    assert value(s, "shoal_raft_commit_index") == 42
    assert value(s, "shoal_raft_applied_index") == 41
    assert value(s, "shoal_raft_leader") == 1
    follower = scrape(raft_families({"raft_term": 3, "commit_idx": 1, "last_applied": 1},
                                    False))
    assert value(follower, "shoal_raft_leader") == 0


def test_dispatcher_families_count_open_sessions_and_heartbeat_age() -> None:
    sessions = [NodeSession("a", "n1", 5.0, last_seen=100.0),
                NodeSession("b", "n2", 5.0, last_seen=97.5),
                NodeSession("c", "n3", 5.0, last_seen=50.0, ended_at=60.0)]
    s = scrape(dispatcher_families(sessions, now=101.0, queue_wait=2.5))
    assert value(s, "shoal_dispatcher_sessions") == 2
    assert value(s, "shoal_dispatcher_heartbeat_queue_wait_seconds") == 2.5
    assert value(s, "shoal_dispatcher_heartbeat_age_seconds", node_id="n1") == 1.0
    assert value(s, "shoal_dispatcher_heartbeat_age_seconds", node_id="n2") == 3.5
    assert ("shoal_dispatcher_heartbeat_age_seconds", (("node_id", "n3"),)) not in s


def test_agent_families() -> None:
    s = scrape(agent_families(True, last_heartbeat=10.0, rtt=0.004, now=12.0))
    assert value(s, "shoal_agent_session_up") == 1
    assert value(s, "shoal_agent_heartbeat_age_seconds") == 2.0
    assert value(s, "shoal_agent_heartbeat_latency_seconds") == 0.004
    never = scrape(agent_families(False, None, 0.0, now=12.0))
    assert value(never, "shoal_agent_session_up") == 0
    assert math.isinf(value(never, "shoal_agent_heartbeat_age_seconds"))


def test_network_families_count_other_nodes_and_handshake_age() -> None:
    msg = cluster_pb2.AssignmentsMessage()
    net = msg.networks.add()
    net.network.id = "net1"
    net.network.spec.annotations.name = "backend"
    for task_id, node_id in [("t1", "self"), ("t2", "n2"), ("t3", "n2"), ("t4", "n3")]:
        net.endpoints.add(task_id=task_id, node_id=node_id)
    report = pb.NetworkReport()
    report.peers.add(node_id="n2", last_handshake_ns=7_000_000_000)
    report.peers.add(node_id="n3", last_handshake_ns=0)
    s = scrape(network_families("self", msg, report, now_ns=10_000_000_000))
    assert value(s, "shoal_network_peers", network="backend", network_id="net1") == 2
    assert value(s, "shoal_network_tunnel_peers") == 2
    assert value(s, "shoal_network_tunnel_handshake_age_seconds", peer_node_id="n2") == 3.0
    assert math.isinf(value(s, "shoal_network_tunnel_handshake_age_seconds",
                            peer_node_id="n3"))


def test_manager_instruments_use_their_own_registry() -> None:
    one, two = CollectorRegistry(), CollectorRegistry()
    a, b = ManagerInstruments.create(one), ManagerInstruments.create(two)
    a.decided(assigned=3, unplaceable=1)
    a.store_write_seconds.labels("committed").observe(0.02)
    b.decided(assigned=1, unplaceable=0)
    assert one.get_sample_value("shoal_scheduler_decisions_total",
                                {"decision": "assigned"}) == 3
    assert one.get_sample_value("shoal_scheduler_decisions_total",
                                {"decision": "unplaceable"}) == 1
    assert two.get_sample_value("shoal_scheduler_decisions_total",
                                {"decision": "assigned"}) == 1
    assert one.get_sample_value("shoal_store_write_duration_seconds_count",
                                {"outcome": "committed"}) == 1
