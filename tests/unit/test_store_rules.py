"""Rules the store's apply enforces itself, so no two writers can race past them: the
leadership epoch fence, a retried proposal applied once, unique service names; and views
that stay consistent while the store moves on, with their indexes."""

import random

from manager.errors import AlreadyExists, Fenced
from manager.store.memory import MemoryStore, wrap
from manager.store.view import StoreView
from proto import objects_pb2 as pb
from proto import store_pb2


def batch(*objs: object, kind: int = store_pb2.CREATE, **fields: object) -> store_pb2.StoreBatch:
    b = store_pb2.StoreBatch(timestamp_ns=1000, **fields)  # type: ignore[arg-type]
    for obj in objs:
        b.actions.append(store_pb2.StoreAction(kind=kind, object=wrap(obj)))
    return b


def service(sid: str, name: str) -> pb.Service:
    svc = pb.Service(id=sid)
    svc.spec.annotations.name = name
    return svc


def task(tid: str, service_id: str, slot: int = 0, node_id: str = "") -> pb.Task:
    return pb.Task(id=tid, service_id=service_id, slot=slot, node_id=node_id)


def test_a_former_leaders_decision_is_refused_once_a_new_epoch_is_committed() -> None:
    store = MemoryStore()
    assert store.apply(batch(new_epoch=3)).error is None
    assert store.apply(batch(pb.Node(id="n1"), epoch=3)).error is None
    assert store.apply(batch(new_epoch=5)).error is None  # a new leader took over
    stale = store.apply(batch(pb.Node(id="n2"), epoch=3))
    assert isinstance(stale.error, Fenced)
    assert "epoch 3" in str(stale.error) and "epoch 5" in str(stale.error)
    assert store.get(pb.Node, "n2") is None
    # An epoch that is not newer is refused too (two leaders can't both open one).
    assert isinstance(store.apply(batch(new_epoch=5)).error, Fenced)
    # User writes carry no epoch and are judged by their versions alone.
    assert store.apply(batch(pb.Node(id="n3"))).error is None
    assert store.epoch == 5


def test_a_retried_proposal_is_applied_once_and_gets_the_first_result() -> None:
    store = MemoryStore()
    first = store.apply(batch(service("s1", "web"), request_id="r1"))
    assert first.error is None
    deleted = store.get(pb.Service, "s1")
    assert store.apply(batch(deleted, kind=store_pb2.DELETE, request_id="r2")).error is None
    # The delete's proposer saw LEADER_CHANGED and proposes the same batch again.
    again = store.apply(batch(deleted, kind=store_pb2.DELETE, request_id="r2"))
    assert again.error is None and again.version == 2
    assert store.version == 2


def test_applied_request_ids_survive_a_snapshot() -> None:
    store = MemoryStore()
    store.apply(batch(pb.Node(id="n1"), request_id="r1"))
    store.apply(batch(new_epoch=7))
    copy = MemoryStore()
    copy.restore(store.snapshot())
    assert copy.epoch == 7
    assert copy.apply(batch(pb.Node(id="n1"), request_id="r1")).error is None  # no conflict
    assert copy.version == store.version


def test_two_services_can_not_share_a_name_even_when_proposed_together() -> None:
    store = MemoryStore()
    assert store.apply(batch(service("s1", "web"))).error is None
    clash = store.apply(batch(service("s2", "web")))
    assert isinstance(clash.error, AlreadyExists)
    assert "web" in str(clash.error)
    both = store.apply(batch(service("s3", "api"), service("s4", "api")))
    assert isinstance(both.error, AlreadyExists)
    assert store.get(pb.Service, "s3") is None
    renamed = store.get(pb.Service, "s1")
    renamed.spec.annotations.name = "front"
    assert store.apply(batch(renamed, kind=store_pb2.UPDATE)).error is None
    assert store.apply(batch(service("s5", "web"))).error is None  # the old name is free


def test_a_service_being_removed_frees_its_name() -> None:
    store = MemoryStore()
    store.apply(batch(service("s1", "web")))
    removing = store.get(pb.Service, "s1")
    removing.pending_delete = True
    assert store.apply(batch(removing, kind=store_pb2.UPDATE)).error is None
    assert store.apply(batch(service("s2", "web"))).error is None
    assert store.view().by_name(pb.Service, "web").id == "s2"


def test_a_view_stays_at_its_version_while_the_store_moves_on() -> None:
    store = MemoryStore()
    store.apply(batch(service("s1", "web"), task("t1", "s1", slot=1, node_id="n1")))
    before = store.view()
    moved = store.get(pb.Task, "t1")
    moved.node_id = "n2"
    store.apply(batch(moved, kind=store_pb2.UPDATE))
    store.apply(batch(task("t2", "s1", slot=1, node_id="n1")))
    assert before.version == 1 and store.view().version == 3
    assert [t.id for t in before.tasks_on_node("n1")] == ["t1"]
    assert before.tasks_on_node("n2") == []
    now = store.view()
    assert [t.id for t in now.tasks_on_node("n1")] == ["t2"]
    assert [t.id for t in now.tasks_on_node("n2")] == ["t1"]
    assert sorted(t.id for t in now.tasks_in_slot("s1", 1)) == ["t1", "t2"]
    assert sorted(t.id for t in now.tasks_of_service("s1")) == ["t1", "t2"]


def test_indexes_follow_deletes_and_global_slots() -> None:
    view = StoreView.of([task("g1", "s1", node_id="n1"), task("g2", "s1", node_id="n2")])
    assert [t.id for t in view.tasks_in_slot("s1", "n2")] == ["g2"]
    store = MemoryStore()
    store.restore(MemoryStore().snapshot())
    store.apply(batch(task("t1", "s1", slot=2, node_id="n1")))
    store.apply(batch(store.get(pb.Task, "t1"), kind=store_pb2.DELETE))
    view = store.view()
    assert view.tasks_of_service("s1") == [] and view.tasks_on_node("n1") == []
    assert view.tasks_in_slot("s1", 2) == [] and "s1" not in view.by_service


def test_indexes_kept_change_by_change_equal_indexes_built_afresh() -> None:
    """Random moves of node, slot, service and networks (and status-only writes, which
    touch no index): after each batch the view's indexes equal a view built from its
    objects."""
    rng = random.Random(7)
    store = MemoryStore()
    store.apply(batch(*[task(f"t{i}", f"s{i % 3}", slot=i % 4, node_id=f"n{i % 5}")
                        for i in range(30)]))
    for _ in range(200):
        changed = []
        for task_id in rng.sample([f"t{i}" for i in range(30)], 5):
            t = store.get(pb.Task, task_id)
            what = rng.choice(["node", "slot", "service", "networks", "status"])
            if what == "node":
                t.node_id = f"n{rng.randrange(5)}"
            elif what == "slot":
                t.slot = rng.randrange(4)
            elif what == "service":
                t.service_id = f"s{rng.randrange(3)}"
            elif what == "networks":
                del t.networks[:]
                for net in rng.sample(["net1", "net2", "net3"], rng.randrange(3)):
                    t.networks.add(network_id=net, addresses=[f"10.0.0.{rng.randrange(9)}/24"])
            else:
                t.status.state = rng.choice([pb.PENDING, pb.RUNNING])  # type: ignore[assignment]
            changed.append(t)
        assert store.apply(batch(*changed, kind=store_pb2.UPDATE)).error is None
        now = store.view()
        afresh = StoreView.of(now.list(pb.Task))
        for index in ("by_service", "by_node", "by_slot", "by_network"):
            assert getattr(now, index) == getattr(afresh, index), index
