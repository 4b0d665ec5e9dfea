from manager.errors import AlreadyExists, NotFound, OutOfSequence
from manager.store.memory import MemoryStore, wrap
from manager.store.view import TABLES
from proto import objects_pb2 as pb
from proto import store_pb2


def batch(*actions: tuple[int, object], ts: int = 1000) -> store_pb2.StoreBatch:
    b = store_pb2.StoreBatch(timestamp_ns=ts)
    for kind, obj in actions:
        b.actions.append(store_pb2.StoreAction(kind=kind, object=wrap(obj)))
    return b


def test_create_sets_version_and_times() -> None:
    store = MemoryStore()
    result = store.apply(batch((store_pb2.CREATE, pb.Node(id="n1")), ts=42))
    assert result.error is None and result.version == 1
    node = store.get(pb.Node, "n1")
    assert node.meta.version.index == 1
    assert node.meta.created_at_ns == 42 == node.meta.updated_at_ns


def test_update_with_stale_version_is_refused_and_changes_nothing() -> None:
    store = MemoryStore()
    store.apply(batch((store_pb2.CREATE, pb.Node(id="n1"))))
    node = store.get(pb.Node, "n1")
    node.spec.annotations.labels["a"] = "1"
    assert store.apply(batch((store_pb2.UPDATE, node), ts=2000)).error is None
    stale = pb.Node(id="n1")
    stale.meta.version.index = 1
    result = store.apply(batch((store_pb2.UPDATE, stale)))
    assert isinstance(result.error, OutOfSequence)
    assert "update out of sequence" in str(result.error)
    current = store.get(pb.Node, "n1")
    assert current.spec.annotations.labels["a"] == "1"
    assert current.meta.created_at_ns == 1000 and current.meta.updated_at_ns == 2000


def test_batch_is_all_or_nothing() -> None:
    store = MemoryStore()
    store.apply(batch((store_pb2.CREATE, pb.Node(id="n1"))))
    result = store.apply(batch((store_pb2.CREATE, pb.Node(id="n2")),
                               (store_pb2.CREATE, pb.Node(id="n1"))))
    assert isinstance(result.error, AlreadyExists)
    assert store.get(pb.Node, "n2") is None
    assert store.version == 1


def test_remove_unknown_is_not_found() -> None:
    store = MemoryStore()
    result = store.apply(batch((store_pb2.DELETE, pb.Node(id="nope"))))
    assert isinstance(result.error, NotFound)


def test_watchers_see_events_and_snapshot_round_trips() -> None:
    store = MemoryStore()
    seen = []
    store.watch(seen.extend)
    store.apply(batch((store_pb2.CREATE, pb.Node(id="n1")),
                      (store_pb2.PUT, pb.Cluster(id="c1"))))
    assert [(e.action, e.table) for e in seen] == [(store_pb2.CREATE, "node"),
                                                   (store_pb2.CREATE, "cluster")]
    copy = MemoryStore()
    copy.restore(store.snapshot())
    assert copy.version == store.version
    assert copy.get(pb.Cluster, "c1") == store.get(pb.Cluster, "c1")
    assert copy.get(pb.Node, "n1") == store.get(pb.Node, "n1")


def test_reads_are_copies() -> None:
    store = MemoryStore()
    store.apply(batch((store_pb2.CREATE, pb.Node(id="n1"))))
    store.get(pb.Node, "n1").spec.annotations.name = "changed"
    assert store.get(pb.Node, "n1").spec.annotations.name == ""


def test_a_snapshot_is_the_message_of_every_object() -> None:
    """snapshot() frames each object itself; it parses as the one StoreSnapshot message
    holding every object of every table, with the version, epoch and applied requests."""
    store = MemoryStore()
    svc = pb.Service(id="s1")
    svc.spec.annotations.name = "web"
    svc.spec.annotations.labels["a"] = "b" * 300  # a length over one varint byte
    first = batch((store_pb2.CREATE, pb.Node(id="n1")), (store_pb2.PUT, pb.Cluster(id="c1")),
                  (store_pb2.CREATE, svc),
                  *((store_pb2.CREATE, pb.Task(id=f"t{i}", service_id="s1", slot=i))
                    for i in range(200)))
    first.request_id = "r1"
    assert store.apply(first).error is None
    expected = store_pb2.StoreSnapshot(version=store.version, epoch=store.view().epoch)
    expected.applied.add(request_id="r1", version=store.version)
    view = store.view()
    for table in TABLES:
        expected.objects.extend(wrap(o) for o in view.tables[table].values())
    got = store_pb2.StoreSnapshot.FromString(store.snapshot())
    assert got.version == expected.version and got.epoch == expected.epoch
    assert list(got.applied) == list(expected.applied)
    assert list(got.objects) == list(expected.objects)
    assert len(got.objects) == 203
