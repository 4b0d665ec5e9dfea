"""Who may call a manager's gRPC methods: the certificate's role and the store's current role."""

from __future__ import annotations

from datetime import UTC, datetime

from manager.grpcapi import current_role, refusal
from manager.roles import sync_manager_status
from pki import Identity
from proto import objects_pb2 as pb

MANAGERS = (pb.MANAGER,)
ANY = (pb.WORKER, pb.MANAGER)


def ident(role: int, cluster: str = "c1") -> Identity:
    now = datetime.now(UTC)
    return Identity("n1", role, cluster, now, now)


def node(role: int, desired: int) -> pb.Node:
    n = pb.Node(id="n1", role=role)  # type: ignore[arg-type]
    n.spec.desired_role = desired  # type: ignore[assignment]
    return n


def test_a_current_manager_may_make_manager_calls() -> None:
    assert refusal(ident(pb.MANAGER), "c1", MANAGERS, node(pb.MANAGER, pb.MANAGER)) is None
    assert refusal(ident(pb.MANAGER), "c1", ANY, node(pb.MANAGER, pb.MANAGER)) is None


def test_a_demoted_managers_old_certificate_is_refused_for_manager_calls() -> None:
    asked = refusal(ident(pb.MANAGER), "c1", MANAGERS, node(pb.MANAGER, pb.WORKER))
    done = refusal(ident(pb.MANAGER), "c1", MANAGERS, node(pb.WORKER, pb.WORKER))
    for reason in (asked, done):
        assert reason is not None
        assert "n1" in reason and "worker now" in reason and "promote" in reason
    # ...but it may still talk to the dispatcher and renew its certificate as a worker
    assert refusal(ident(pb.MANAGER), "c1", ANY, node(pb.WORKER, pb.WORKER)) is None


def test_a_removed_node_is_refused_everything() -> None:
    reason = refusal(ident(pb.WORKER), "c1", ANY, None)
    assert reason is not None and "n1" in reason and "swarm leave" in reason


def test_certificate_role_and_cluster_still_count() -> None:
    worker = refusal(ident(pb.WORKER), "c1", MANAGERS, node(pb.MANAGER, pb.MANAGER))
    assert worker is not None and "manager nodes only" in worker
    other = refusal(ident(pb.MANAGER, "c2"), "c1", MANAGERS, node(pb.MANAGER, pb.MANAGER))
    assert other is not None and "cluster c2" in other


def test_current_role_counts_a_demotion_from_when_it_is_asked() -> None:
    assert current_role(node(pb.MANAGER, pb.MANAGER)) == pb.MANAGER
    assert current_role(node(pb.MANAGER, pb.WORKER)) == pb.WORKER
    assert current_role(node(pb.WORKER, pb.MANAGER)) == pb.WORKER  # promotion not done yet


def test_a_worker_loses_a_stale_manager_status() -> None:
    w = node(pb.WORKER, pb.WORKER)
    w.manager_status.raft_addr = "198.18.0.4:2379"
    w.manager_status.leader = True
    assert sync_manager_status(w, "198.18.0.4:2379", lambda addr: True)
    assert not w.HasField("manager_status")
    assert not sync_manager_status(w, "198.18.0.4:2379", lambda addr: True)
