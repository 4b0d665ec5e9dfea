"""A node's session as the dispatcher judges it: pure decisions, no gRPC and no store.

How often nodes heartbeat (stretched in a large swarm), when a silent node is down and how
many may be marked down at once, which node changes the session messages carry, and how a
node's record changes when its session opens, it heartbeats or it goes down.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from manager.store.memory import Event
from proto import cluster_pb2
from proto import objects_pb2 as pb

DEFAULT_HEARTBEAT_NS = 5_000_000_000
# All nodes together heartbeat at most this often (as Nomad's servers cap theirs): on this
# 2-core VM a heartbeat costs the leader about 1.5 ms of CPU, most of it gRPC's own per-call
# work, so 5,000 nodes at the swarm's 5 s period would take a whole core for heartbeats
# alone. Past MAX_HEARTBEATS_PER_S x period nodes the period stretches (1,000 nodes: 10 s);
# a crashed node's connection still resets at once, only a silent one is found later.
MAX_HEARTBEATS_PER_S = 100.0
GRACE_MULTIPLIER = 3
QUEUE_WAIT_MULTIPLIER = 2  # (down_reason)
LIVENESS_MIN_PASS = 1.0
RECONNECT_GRACE = 5.0  # seconds a node may take to reopen a dropped session (a restart)
# At most this share of the nodes (and at least DOWN_PER_PASS_MIN) is marked down per check,
# the longest silent first (as Kubernetes' node controller slows evictions when many nodes
# look unhealthy at once): when hundreds fall silent together the likelier cause is a leader
# too busy to read their heartbeats, and marking them all down at once (their sessions
# dropped, their tasks replaced) is what turned such an overload into a collapse at 2,000
# nodes. A node that really died is marked down a few seconds later.
DOWN_PER_PASS_SHARE = 0.01
DOWN_PER_PASS_MIN = 3


def liveness_pass(period: float) -> float:
    """Seconds between the leader's checks for silent nodes: every second, or a tenth of a
    stretched heartbeat period (each check reads every node: at 5,000 nodes, with a 50 s
    period, checking every second was 4 % of the leader for nothing). A node is judged
    after GRACE_MULTIPLIER periods, so this adds at most a thirtieth to that."""
    return max(LIVENESS_MIN_PASS, period / 10)


def heartbeat_period(configured: float, nodes: int) -> float:
    """The period nodes are told to heartbeat at: the swarm's, or longer in a swarm so large
    that its nodes would together send more than MAX_HEARTBEATS_PER_S."""
    return max(configured, nodes / MAX_HEARTBEATS_PER_S)


@dataclass
class NodeSession:
    session_id: str
    node_id: str
    period: float
    jitter: float = 1.0  # this node's share of the period, spreading the nodes' heartbeats
    last_seen: float = field(default_factory=time.monotonic)
    ended_at: float | None = None


def down_reason(session: NodeSession | None, now: float, since_leader: float,
                period: float, queue_wait: float = 0.0) -> str | None:
    """Why a READY node should now be DOWN, or None. Pure, for the tests. `queue_wait`: how
    long the nodes' calls lately waited for the leader to take them in (QueueWaits); every
    grace is twice that longer, as the node's silence may be the leader's: a heartbeat that
    gave up in the queue (never measured) is sent again and waits again. At 100,000 tasks
    heartbeats were measured waiting up to 90 s while nodes went up to 323 s unheard with a
    50 s period, and 5 live nodes were marked Down with the wait added once."""
    held = QUEUE_WAIT_MULTIPLIER * queue_wait
    if now - since_leader <= period * GRACE_MULTIPLIER + held:
        # A new leader gives every node time to find it (and sessions it held in an earlier
        # term, or that raced its election, their next heartbeat) before judging any.
        return None
    if session is None:
        return "no session with the leader since it was elected"
    if session.ended_at is not None and now - session.ended_at > RECONNECT_GRACE + held:
        return "the node's session ended and it did not reconnect"
    if now - session.last_seen > session.period * GRACE_MULTIPLIER + held:
        return "heartbeat failure"
    return None


def queue_wait(timeout_ns: int, time_remaining: float | None) -> float:
    """Seconds a call waited before the leader's handler took it: gRPC starts the call's
    deadline when it arrives, so the timeout the node gave, less what is left of it (0 when
    the node gave none). A lower bound: gRPC rounds the timeout it sends up, by up to a
    hundredth of it (a 10 s timeout arrives as 10.1 s)."""
    if not timeout_ns or time_remaining is None:
        return 0.0
    return max(0.0, timeout_ns / 1e9 - time_remaining)


class QueueWaits:
    """The longest that nodes' heartbeats waited in the leader's gRPC queue over a recent
    window (a sliding maximum). A busy leader's asyncio server takes in about one call per
    turn of its event loop, so at 5,000 nodes heartbeats waited there for tens of seconds
    (and many gave up there); that wait counted as the nodes' silence marked up to 93 live
    nodes down at once."""

    def __init__(self) -> None:
        self._waits: deque[tuple[float, float]] = deque()  # (when, wait): waits falling

    def note(self, wait: float, now: float) -> None:
        while self._waits and self._waits[-1][1] <= wait:
            self._waits.pop()  # a later, longer wait outlives it as the maximum
        self._waits.append((now, wait))

    def longest(self, now: float, window: float) -> float:
        while self._waits and now - self._waits[0][0] > window:
            self._waits.popleft()
        return self._waits[0][1] if self._waits else 0.0


def down_limit(nodes: int) -> int:
    """How many nodes one liveness check may mark down."""
    return max(DOWN_PER_PASS_MIN, int(nodes * DOWN_PER_PASS_SHARE))


def silent_since(session: NodeSession | None) -> float:
    """When the node was last heard of (no session: never), to mark the longest silent first."""
    if session is None:
        return float("-inf")
    return session.ended_at if session.ended_at is not None else session.last_seen


def changes_sessions(event: Event) -> bool:
    """The change touches a session message: the managers' addresses or a node's role (the
    heartbeat period follows the swarm's size through the heartbeat answers)."""
    if event.table != "node":
        return False
    if event.old is None or event.new is None:
        return any(bool(n.manager_status.addr) or n.role == pb.MANAGER
                   for n in (event.old, event.new) if n is not None)
    return bool(event.old.manager_status.addr != event.new.manager_status.addr or
                event.old.role != event.new.role)


def session_opened(node: pb.Node, *, request: cluster_pb2.SessionRequest) -> bool:
    """The node as its new session describes it, Ready; False when that is how it is stored:
    a node that reconnects as it was (its session dropped under load) costs no Raft write,
    where a leader's reconnect storm was one node write per session."""
    before = node.SerializeToString(deterministic=True)
    node.description.CopyFrom(request.description)
    if request.addr:
        node.status.addr = request.addr
    node.status.state = pb.NODE_READY
    node.status.message = ""
    return node.SerializeToString(deterministic=True) != before


def mark_ready_again(node: pb.Node, *, message: str) -> bool:
    if node.status.state == pb.NODE_READY and node.status.message == message:
        return False
    node.status.state = pb.NODE_READY
    node.status.message = message
    return True


def reports_news(node: pb.Node, request: cluster_pb2.HeartbeatRequest) -> bool:
    """Whether the heartbeat changes the node's tunnel, its data-plane report or its
    description (the node sends the report and the description only when they changed; its
    key and tunnel error every time)."""
    return (node.tunnel.public_key != request.public_key
            or node.tunnel.error != request.tunnel_error
            or node.tunnel.key_created_ns != request.key_created_ns
            or (request.HasField("network_report")
                and node.network_report != request.network_report)
            or (request.HasField("description")
                and node.description != request.description))


def take_news(node: pb.Node, *, request: cluster_pb2.HeartbeatRequest) -> bool:
    if not reports_news(node, request):
        return False
    node.tunnel.public_key = request.public_key
    node.tunnel.error = request.tunnel_error
    node.tunnel.key_created_ns = request.key_created_ns
    if request.HasField("network_report"):
        node.network_report.CopyFrom(request.network_report)
    if request.HasField("description"):
        node.description.CopyFrom(request.description)
    return True


def mark_down(node: pb.Node, *, reason: str) -> bool:
    if node.status.state != pb.NODE_READY:
        return False
    node.status.state = pb.NODE_DOWN
    node.status.message = reason
    return True
