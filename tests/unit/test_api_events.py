"""Docker's swarm events from store changes (shoal/api/events.py, manager/changes.py), and
the API version check (shoal/api/server.py)."""

from __future__ import annotations

from typing import Any

import pytest

from manager.changes import Change, ChangeLog
from manager.store.memory import Event, MemoryStore, wrap
from proto import objects_pb2 as pb
from proto import store_pb2
from shoal.api import events
from shoal.api.server import check_api_version, version_json
from shoal.errors import InvalidRequest


def batch(*actions: tuple[int, Any], ts: int = 1000) -> store_pb2.StoreBatch:
    b = store_pb2.StoreBatch(timestamp_ns=ts)
    for kind, obj in actions:
        b.actions.append(store_pb2.StoreAction(kind=kind, object=wrap(obj)))
    return b


def service(replicas: int = 1, image: str = "busybox") -> pb.Service:
    svc = pb.Service(id="s1")
    svc.spec.annotations.name = "web"
    svc.spec.task.container.image = image
    svc.spec.replicated.replicas = replicas
    return svc


def test_changes_of_watched_kinds_are_kept_and_given_to_subscribers() -> None:
    store = MemoryStore()
    log = ChangeLog(store, kept=2)
    store.apply(batch((store_pb2.CREATE, pb.Node(id="n1"))))
    store.apply(batch((store_pb2.CREATE, pb.Task(id="t1"))))  # no Docker event: not kept
    got: list[list[Change]] = []
    kept, cancel = log.subscribe(got.append)
    assert [c.event.new.id for c in kept] == ["n1"]
    store.apply(batch((store_pb2.CREATE, service()), (store_pb2.CREATE, pb.Node(id="n2"))))
    assert [[c.event.new.id for c in changes] for changes in got] == [["s1", "n2"]]
    cancel()
    store.apply(batch((store_pb2.CREATE, pb.Node(id="n3"))))
    assert len(got) == 1
    assert [c.event.new.id for c in log.subscribe(got.append)[0]] == ["n2", "n3"]  # the last 2


def test_a_failing_subscriber_is_dropped_and_the_store_applies_on() -> None:
    store = MemoryStore()
    log = ChangeLog(store)

    def broken(changes: list[Change]) -> None:
        raise RuntimeError("boom")

    log.subscribe(broken)
    assert store.apply(batch((store_pb2.CREATE, pb.Node(id="n1")))).error is None
    assert store.apply(batch((store_pb2.CREATE, pb.Node(id="n2")))).error is None


def test_service_events_as_dockerd_logs_them() -> None:
    old, new = service(1), service(3, "busybox:2")
    new.meta.updated_at_ns = 5_000_000_123
    new.update_status.state = pb.UpdateStatus.UPDATING
    msg = events.message(Change(Event(store_pb2.UPDATE, "service", old, new), 9))
    assert msg is not None and list(msg["Actor"]["Attributes"]) == sorted(
        msg["Actor"]["Attributes"])  # Go's order for a map
    assert msg == {"Type": "service", "Action": "update",
                   "Actor": {"ID": "s1", "Attributes": {
                       "name": "web", "image.old": "busybox", "image.new": "busybox:2",
                       "replicas.old": "1", "replicas.new": "3",
                       "updatestate.new": "updating"}},
                   "scope": "swarm", "time": 5, "timeNano": 5_000_000_123}
    done = service(3, "busybox:2")
    done.update_status.state = pb.UpdateStatus.COMPLETED
    attrs = events.message(Change(Event(store_pb2.UPDATE, "service", new, done), 9))
    assert attrs is not None and attrs["Actor"]["Attributes"] == {
        "name": "web", "updatestate.old": "updating", "updatestate.new": "completed"}
    created = service()
    created.meta.created_at_ns = 7_000_000_000
    msg = events.message(Change(Event(store_pb2.CREATE, "service", None, created), 9))
    assert msg is not None and (msg["Action"], msg["timeNano"]) == ("create", 7_000_000_000)
    # a removal has no timestamp of its own: the time the manager applied it
    msg = events.message(Change(Event(store_pb2.DELETE, "service", created, None), 11))
    assert msg is not None and (msg["Action"], msg["timeNano"]) == ("remove", 11)
    assert msg["Actor"] == {"ID": "s1", "Attributes": {"name": "web"}}


def test_node_events_name_what_changed() -> None:
    old = pb.Node(id="n1", role=pb.WORKER)
    old.description.hostname = "w1"
    old.manager_status.addr = "10.0.0.1:2377"
    old.manager_status.reachability = pb.REACHABLE
    new = pb.Node()
    new.CopyFrom(old)
    new.spec.availability = pb.DRAIN
    new.status.state = pb.NODE_READY
    new.role = pb.MANAGER
    new.manager_status.leader = True
    msg = events.message(Change(Event(store_pb2.UPDATE, "node", old, new), 1))
    assert msg is not None and msg["Type"] == "node" and msg["Actor"]["Attributes"] == {
        "name": "w1", "availability.old": "active", "availability.new": "drain",
        "role.old": "worker", "role.new": "manager", "state.old": "unknown",
        "state.new": "ready", "leader.old": "false", "leader.new": "true"}


def test_tasks_and_the_cluster_give_no_event_and_other_kinds_plug_in() -> None:
    assert events.message(Change(Event(store_pb2.CREATE, "task", None, pb.Task(id="t")), 1)) \
        is None
    assert events.message(Change(Event(store_pb2.UPDATE, "cluster", pb.Cluster(id="c"),
                                       pb.Cluster(id="c")), 1)) is None
    net = pb.Network(id="x")
    net.spec.annotations.name = "appnet"
    msg = events.message(Change(Event(store_pb2.CREATE, "network", None, net), 1))
    assert msg is not None and msg["Type"] == "network"
    assert msg["Actor"] == {"ID": "x", "Attributes": {"name": "appnet"}}
    assert set(events.EVENT_TYPES) >= {"secret", "config"}


def msg(type_: str, action: str, actor_id: str, name: str, **attrs: str) -> dict[str, Any]:
    return {"Type": type_, "Action": action, "scope": "swarm", "time": 1, "timeNano": 1,
            "Actor": {"ID": actor_id, "Attributes": {"name": name, **attrs}}}


@pytest.mark.parametrize("filters, included", [
    ({}, True),
    ({"scope": ["swarm"]}, True),
    ({"scope": ["local"]}, False),
    ({"type": ["service"], "event": ["create", "update"]}, True),
    ({"type": ["node"]}, False),
    ({"event": ["remove"]}, False),
    ({"service": ["web"]}, True),
    ({"service": ["abc"]}, True),  # an ID prefix
    ({"service": ["db"]}, False),
    # moby matches each actor filter against any event's actor, whatever its type
    ({"node": ["w1"]}, False),
    ({"label": ["name=web"]}, True),
    ({"label": ["replicas.new=3"]}, False),
])
def test_event_filters_as_moby(filters: dict[str, list[str]], included: bool) -> None:
    event = msg("service", "update", "abc123", "web", **{"replicas.new": "2"})
    assert events.EventFilter(filters).include(event) is included


def test_since_and_until_are_unix_times() -> None:
    assert events.parse_time("1700000000", "since") == 1_700_000_000_000_000_000
    assert events.parse_time("1700000000.5", "since") == 1_700_000_000_500_000_000
    assert events.parse_time("1700000000.000000001", "until") == 1_700_000_000_000_000_001
    assert events.parse_time("", "since") is None
    with pytest.raises(InvalidRequest, match="invalid since '1h'"):
        events.parse_time("1h", "since")


@pytest.mark.parametrize("version", ["1.24", "1.41", "1.44", "1.50", None])
def test_api_versions_spoken(version: str | None) -> None:
    check_api_version(version)


@pytest.mark.parametrize("version, message", [
    ("1.51", "client version 1.51 is too new. Maximum supported API version is 1.50"),
    ("2.0", "client version 2.0 is too new. Maximum supported API version is 1.50"),
    ("1.23", "client version 1.23 is too old. Minimum supported API version is 1.24, "
             "please upgrade your client to a newer version"),
])
def test_api_versions_refused_as_dockerd(version: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        check_api_version(version)
    assert str(err.value) == message


def test_version_has_what_docker_version_prints() -> None:
    out = version_json()
    engine = out["Components"][0]
    assert engine["Name"] == "Engine" and out["ApiVersion"] == "1.50"
    for key in ("ApiVersion", "MinAPIVersion", "GoVersion", "GitCommit", "BuildTime", "Os",
                "Arch", "KernelVersion", "Experimental"):
        assert key in engine["Details"], key
    assert out["GoVersion"].startswith("python3.") and out["GitCommit"]
