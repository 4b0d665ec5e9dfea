"""One node's own state as metric families, computed when Prometheus scrapes (pure functions
of what the Raft replica, the dispatcher, the agent and the data plane hold)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from manager.dispatcher.sessions import NodeSession
from proto import cluster_pb2
from proto import objects_pb2 as pb


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def raft_families(status: Mapping[str, Any], leader: bool) -> list[Metric]:
    """From pysyncobj's status (raft_term, commit_idx, last_applied)."""
    return [
        _gauge("shoal_raft_term", "The Raft term this manager is in.", status["raft_term"]),
        _gauge("shoal_raft_commit_index", "The highest Raft log index known committed.",
               status["commit_idx"]),
        _gauge("shoal_raft_applied_index", "The highest Raft log index applied to the store.",
               status["last_applied"]),
        _gauge("shoal_raft_leader", "1 if this manager is the Raft leader, else 0.",
               1 if leader else 0),
    ]


def dispatcher_families(sessions: Iterable[NodeSession], now: float,
                        queue_wait: float = 0.0) -> list[Metric]:
    """The leader's dispatcher: open sessions, how long since each node's last heartbeat
    (`now` and the sessions' times are monotonic), and the longest a heartbeat lately
    waited in the leader's gRPC queue."""
    open_sessions = [s for s in sessions if s.ended_at is None]
    age = GaugeMetricFamily("shoal_dispatcher_heartbeat_age_seconds",
                            "Seconds since the leader last heard a node's heartbeat.",
                            labels=["node_id"])
    for session in sorted(open_sessions, key=lambda s: s.node_id):
        age.add_metric([session.node_id], max(0.0, now - session.last_seen))
    return [_gauge("shoal_dispatcher_sessions",
                   "Node sessions open with this manager's dispatcher (the leader's).",
                   len(open_sessions)), age,
            _gauge("shoal_dispatcher_heartbeat_queue_wait_seconds",
                   "The longest a node's heartbeat waited in this leader's gRPC queue within "
                   "the nodes' grace period; nodes are marked down twice that later.",
                   queue_wait)]


def agent_families(connected: bool, last_heartbeat: float | None, rtt: float,
                   now: float) -> list[Metric]:
    """The node's agent: its session with the leader and its heartbeats (monotonic times;
    no heartbeat answered yet: an infinite age)."""
    age = math.inf if last_heartbeat is None else max(0.0, now - last_heartbeat)
    return [
        _gauge("shoal_agent_session_up",
               "1 while this node has a session with the leader's dispatcher, else 0.",
               1 if connected else 0),
        _gauge("shoal_agent_heartbeat_age_seconds",
               "Seconds since the leader last answered this node's heartbeat.", age),
        _gauge("shoal_agent_heartbeat_latency_seconds",
               "How long the leader took to answer the last heartbeat.", rtt),
    ]


def network_families(node_id: str, message: cluster_pb2.AssignmentsMessage,
                     report: pb.NetworkReport, now_ns: int) -> list[Metric]:
    """Per overlay network, the other nodes this node sends its traffic to (those holding
    a task address on it: the overlay's FDB peers); per WireGuard peer, the age of its
    last handshake (never: infinite)."""
    peers = GaugeMetricFamily("shoal_network_peers",
                              "Other nodes with a task address on an overlay network this "
                              "node is on.", labels=["network", "network_id"])
    for state in sorted(message.networks, key=lambda s: s.network.spec.annotations.name):
        others = {e.node_id for e in state.endpoints if e.node_id and e.node_id != node_id}
        peers.add_metric([state.network.spec.annotations.name, state.network.id], len(others))
    handshake = GaugeMetricFamily("shoal_network_tunnel_handshake_age_seconds",
                                  "Seconds since the last WireGuard handshake with a peer "
                                  "node (+Inf: never).", labels=["peer_node_id"])
    for peer in sorted(report.peers, key=lambda p: p.node_id):
        age = math.inf if not peer.last_handshake_ns else \
            max(0.0, (now_ns - peer.last_handshake_ns) / 1e9)
        handshake.add_metric([peer.node_id], age)
    tunnel = _gauge("shoal_network_tunnel_peers",
                    "WireGuard peers of this node (encrypted overlay networks).",
                    len(report.peers))
    return [peers, tunnel, handshake]
