"""Pure decision functions: quorum checks, node down detection, role reconciliation."""

import asyncio
import time

import pytest

from manager.controlapi.nodes import check_remove, check_spec_change, find_node
from manager.dispatcher.dispatcher import Dispatcher
from manager.dispatcher.sessions import (
    MAX_HEARTBEATS_PER_S,
    RECONNECT_GRACE,
    NodeSession,
    QueueWaits,
    changes_sessions,
    down_limit,
    down_reason,
    heartbeat_period,
    liveness_pass,
    queue_wait,
)
from manager.errors import FailedPrecondition, InvalidArgument, NotFound
from manager.manager import Manager, ManagerAddrs
from manager.roles import concerns_roles, demotions, promote, sync_manager_status
from manager.store.memory import Event, MemoryStore
from proto import cluster_pb2, store_pb2
from proto import objects_pb2 as pb
from tests.unit.passes import lead
from tests.unit.test_scheduler import FakeReplica, put


def manager(node_id: str, reachable: bool = True) -> pb.Node:
    n = pb.Node(id=node_id, role=pb.MANAGER)
    n.spec.desired_role = pb.MANAGER
    n.description.hostname = f"host-{node_id}"
    n.manager_status.addr = f"{node_id}:2377"
    n.manager_status.raft_addr = f"{node_id}:2379"
    n.manager_status.reachability = pb.REACHABLE if reachable else pb.UNREACHABLE
    return n


def worker(node_id: str, state: int = pb.NODE_READY) -> pb.Node:
    n = pb.Node(id=node_id)
    n.description.hostname = f"host-{node_id}"
    n.status.state = state  # type: ignore[assignment]
    return n


def demote_spec() -> pb.NodeSpec:
    return pb.NodeSpec(desired_role=pb.WORKER)


def test_demoting_the_last_manager_is_refused() -> None:
    only = manager("m1")
    with pytest.raises(FailedPrecondition, match="last manager"):
        check_spec_change([only], only, demote_spec())


def test_demoting_that_would_lose_quorum_is_refused() -> None:
    nodes = [manager("m1"), manager("m2", reachable=False), manager("m3")]
    with pytest.raises(FailedPrecondition, match="lose quorum"):
        check_spec_change(nodes, nodes[0], demote_spec())


def test_demoting_with_quorum_left_is_allowed() -> None:
    nodes = [manager("m1"), manager("m2"), manager("m3")]
    check_spec_change(nodes, nodes[2], demote_spec())


def test_removing_a_manager_needs_a_demotion_first() -> None:
    nodes = [manager("m1"), manager("m2"), manager("m3")]
    with pytest.raises(FailedPrecondition, match="must be demoted"):
        check_remove(nodes, nodes[1], force=True)


def test_removing_a_ready_worker_needs_force() -> None:
    w = worker("w1")
    with pytest.raises(FailedPrecondition, match="--force"):
        check_remove([w], w, force=False)
    check_remove([w], w, force=True)
    check_remove([worker("w2", pb.NODE_DOWN)], worker("w2", pb.NODE_DOWN), force=False)


def test_find_node_by_id_hostname_prefix() -> None:
    nodes = [worker("abc123"), worker("abd456")]
    assert find_node(nodes, "abc123").id == "abc123"
    assert find_node(nodes, "host-abd456").id == "abd456"
    assert find_node(nodes, "abc").id == "abc123"
    with pytest.raises(InvalidArgument, match="ambiguous"):
        find_node(nodes, "ab")
    with pytest.raises(NotFound):
        find_node(nodes, "zzz")


def test_down_reason() -> None:
    s = NodeSession("s", "n", period=5.0, last_seen=100.0)
    assert down_reason(s, 110.0, 0.0, 5.0) is None
    assert down_reason(s, 116.0, 0.0, 5.0) == "heartbeat failure"
    s.ended_at = 100.0
    assert down_reason(s, 100.0 + RECONNECT_GRACE - 0.1, 0.0, 5.0) is None
    assert "session ended" in (down_reason(s, 100.0 + RECONNECT_GRACE + 0.1, 0.0, 5.0) or "")
    # no session: grace after a leader change, then down
    assert down_reason(None, 10.0, 0.0, 5.0) is None
    assert down_reason(None, 16.0, 0.0, 5.0) is not None
    # A new leader judges no node before its grace, however stale a session it kept.
    assert down_reason(s, 200.0, 190.0, 5.0) is None
    assert down_reason(s, 206.0, 190.0, 5.0) is not None


def test_the_time_heartbeats_wait_in_the_leaders_queue_is_not_the_nodes_silence() -> None:
    # Twice the wait: a heartbeat that gave up in the queue is sent again and waits again.
    s = NodeSession("s", "n", period=10.0, last_seen=100.0)
    assert down_reason(s, 131.0, 0.0, 10.0) == "heartbeat failure"
    assert down_reason(s, 169.0, 0.0, 10.0, queue_wait=20.0) is None
    assert down_reason(s, 171.0, 0.0, 10.0, queue_wait=20.0) == "heartbeat failure"
    s.ended_at = 100.0  # reopening the session waits in the same queue
    assert down_reason(s, 100.0 + RECONNECT_GRACE + 3, 0.0, 10.0, queue_wait=2.0) is None
    assert down_reason(s, 100.0 + RECONNECT_GRACE + 5, 0.0, 10.0, queue_wait=2.0)
    # A new leader's grace too: the nodes' new sessions queue behind each other.
    assert down_reason(None, 31.0, 0.0, 10.0) is not None
    assert down_reason(None, 39.0, 0.0, 10.0, queue_wait=5.0) is None


def test_a_calls_wait_is_its_timeout_less_what_is_left_of_it() -> None:
    assert queue_wait(10_000_000_000, 7.5) == 2.5
    assert queue_wait(10_000_000_000, 10.001) == 0.0  # clocks: never negative
    assert queue_wait(0, 7.5) == 0.0  # the node gave no timeout
    assert queue_wait(10_000_000_000, None) == 0.0  # gRPC has no deadline for the call


def test_the_longest_recent_wait_is_kept_for_a_window() -> None:
    waits = QueueWaits()
    assert waits.longest(0.0, 30.0) == 0.0
    waits.note(2.0, now=0.0)
    waits.note(9.0, now=10.0)
    waits.note(4.0, now=20.0)
    waits.note(1.0, now=25.0)
    assert waits.longest(25.0, 30.0) == 9.0
    assert waits.longest(39.0, 30.0) == 9.0
    assert waits.longest(41.0, 30.0) == 4.0  # the 9 s wait left the window
    assert waits.longest(51.0, 30.0) == 1.0
    assert waits.longest(56.0, 30.0) == 0.0


def test_the_heartbeat_period_stretches_in_a_large_swarm() -> None:
    assert heartbeat_period(5.0, 10) == 5.0
    assert heartbeat_period(5.0, int(5 * MAX_HEARTBEATS_PER_S)) == 5.0
    assert heartbeat_period(5.0, 5000) == 5000 / MAX_HEARTBEATS_PER_S  # 50 s at 100/s
    assert heartbeat_period(1.0, 300) == 300 / MAX_HEARTBEATS_PER_S


def test_silent_nodes_are_looked_for_every_second_or_ten_times_a_period() -> None:
    assert liveness_pass(5.0) == 1.0  # the swarm's default period, up to 500 nodes
    assert liveness_pass(heartbeat_period(5.0, 5000)) == 5.0  # 50 s periods: every 5 s
    # Always well inside the time a silent node is given (3 periods).
    for period in (0.5, 5.0, 20.0, 50.0, 500.0):
        assert liveness_pass(period) <= max(1.0, 3 * period / 30)


async def test_the_dispatcher_gives_nodes_the_period_of_the_swarms_size() -> None:
    store = MemoryStore()
    mgr = Manager("m", ManagerAddrs("a:1", "a:2"), store, FakeReplica(store))  # type: ignore[arg-type]
    cluster = pb.Cluster(id="c")
    cluster.spec.dispatcher.heartbeat_period_ns = 1_000_000_000
    put(store, cluster, *(worker(f"w{i}") for i in range(300)))
    assert Dispatcher(mgr)._period() == 3.0  # 300 nodes at most 100 heartbeats/s


async def test_a_liveness_check_marks_few_nodes_down_at_once_the_longest_silent_first() -> None:
    """400 nodes silent together (a leader too busy to read their heartbeats looks like
    this): one check marks down only down_limit of them, those silent longest."""
    store = MemoryStore()
    mgr = Manager("m", ManagerAddrs("a:1", "a:2"), store, FakeReplica(store))  # type: ignore[arg-type]
    put(store, pb.Cluster(id="c"), *(worker(f"w{i:03d}") for i in range(400)))
    lead(mgr)
    dispatcher = Dispatcher(mgr)
    now = time.monotonic()
    dispatcher._leader_since = now - 1000.0
    dispatcher.sessions = {f"w{i:03d}": NodeSession(f"s{i}", f"w{i:03d}", 5.0,
                                                    last_seen=now - 100.0 + i)
                           for i in range(400)}
    await dispatcher.check_liveness(store.view())
    down = sorted(n.id for n in store.list(pb.Node) if n.status.state == pb.NODE_DOWN)
    assert down_limit(400) == 4 and down_limit(10) == 3
    assert down == ["w000", "w001", "w002", "w003"]
    await dispatcher.check_liveness(store.view())  # the next check takes the next ones
    assert sum(n.status.state == pb.NODE_DOWN for n in store.list(pb.Node)) == 8


def test_role_reconciliation() -> None:
    m = manager("m1")
    assert sync_manager_status(m, "m1:2379", lambda addr: True)
    assert m.manager_status.leader
    assert not sync_manager_status(m, "m1:2379", lambda addr: True)
    assert sync_manager_status(m, "m2:2379", lambda addr: False)
    assert not m.manager_status.leader and m.manager_status.reachability == pb.UNREACHABLE
    w = worker("w1")
    w.spec.desired_role = pb.MANAGER
    assert promote(w) and w.role == pb.MANAGER
    m.spec.desired_role = pb.WORKER
    assert demotions([m, w]) == [m]


def node_event(old: pb.Node | None, new: pb.Node | None) -> Event:
    return Event(0, "node", old, new)


def test_only_manager_and_role_changes_wake_sessions_and_the_role_manager() -> None:
    worker = pb.Node(id="w", role=pb.WORKER)
    worker.spec.desired_role = pb.WORKER
    ready = pb.Node()
    ready.CopyFrom(worker)
    ready.status.state = pb.NODE_READY  # a worker's own writes: thousands in a join
    assert not changes_sessions(node_event(worker, ready))
    assert not concerns_roles(node_event(worker, ready))
    assert not changes_sessions(node_event(None, worker))
    assert not concerns_roles(node_event(None, worker))
    promoted = pb.Node()
    promoted.CopyFrom(ready)
    promoted.spec.desired_role = pb.MANAGER
    assert concerns_roles(node_event(ready, promoted))
    manager = pb.Node()
    manager.CopyFrom(promoted)
    manager.role = pb.MANAGER
    assert changes_sessions(node_event(promoted, manager))
    joined = pb.Node()
    joined.CopyFrom(manager)
    joined.manager_status.addr = "10.0.0.2:2377"
    assert changes_sessions(node_event(manager, joined))
    assert changes_sessions(node_event(joined, None))  # a manager removed
    assert concerns_roles(node_event(joined, None))
    demoted = pb.Node()
    demoted.CopyFrom(joined)
    demoted.spec.desired_role = pb.WORKER
    assert concerns_roles(node_event(joined, demoted))


class HeldReplica(FakeReplica):
    """Commits only once `release` is set (a leader with a backlog of writes)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.release = asyncio.Event()

    async def propose(self, batch: store_pb2.StoreBatch, timeout: float = 10.0) -> int:
        await self.release.wait()
        return await super().propose(batch, timeout)


async def test_a_heartbeat_is_answered_before_what_it_says_is_written() -> None:
    store = MemoryStore()
    replica = HeldReplica(store)
    mgr = Manager("m", ManagerAddrs("a:1", "a:2"), store, replica)  # type: ignore[arg-type]
    down = worker("w1")
    down.status.state = pb.NODE_DOWN
    put(store, pb.Cluster(id="c"), down)
    replica.release.set()
    lead(mgr)
    replica.release.clear()
    dispatcher = Dispatcher(mgr)
    dispatcher.sessions["w1"] = NodeSession("s1", "w1", 5.0)
    beat = cluster_pb2.HeartbeatRequest(session_id="s1", status_message="disk full")
    answer = dispatcher.heartbeat("w1", beat)  # not a coroutine: it cannot wait for Raft
    assert answer.period_ns > 0
    dispatcher.heartbeat("w1", beat)  # one write per node in flight
    assert len(dispatcher._node_writes) == 1
    assert store.get(pb.Node, "w1").status.state == pb.NODE_DOWN
    replica.release.set()
    await asyncio.gather(*dispatcher._node_writes.values())
    node = store.get(pb.Node, "w1")
    assert (node.status.state, node.status.message) == (pb.NODE_READY, "disk full")
    with pytest.raises(NotFound):
        dispatcher.heartbeat("w1", cluster_pb2.HeartbeatRequest(session_id="old"))
