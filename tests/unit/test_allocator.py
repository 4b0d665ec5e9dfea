"""Allocator: published ports (pure) and NEW → PENDING over a store."""

from __future__ import annotations

import pytest

from manager.allocator.allocator import (
    Allocator,
    allocate_services,
    node_relevant,
    pending_tasks,
)
from manager.allocator.ports import DYNAMIC_FIRST, DYNAMIC_LAST, resolve_endpoint
from manager.errors import FailedPrecondition
from manager.manager import Manager, ManagerAddrs
from manager.rules.ports import conflicts
from manager.store.memory import MemoryStore
from netdriver.attachments import CONTAINER_LABEL
from proto import objects_pb2 as pb
from tests.unit.passes import Passes
from tests.unit.test_scheduler import FakeReplica, put

INGRESS, HOST = pb.PortConfig.INGRESS, pb.PortConfig.HOST
TCP, UDP = pb.PortConfig.TCP, pb.PortConfig.UDP


def service(sid: str, *ports: tuple[int, int, int, int], created: int = 0) -> pb.Service:
    """ports: (target, published, mode, protocol)"""
    s = pb.Service(id=sid)
    s.meta.created_at_ns = created
    s.spec.annotations.name = sid
    for target, published, mode, proto in ports:
        s.spec.endpoint.ports.add(target_port=target, published_port=published,
                                  publish_mode=mode, protocol=proto)  # type: ignore[arg-type]
    return s


def new_task(tid: str, svc: str, desired: int = pb.RUNNING) -> pb.Task:
    t = pb.Task(id=tid, service_id=svc)
    t.desired_state = desired  # type: ignore[assignment]
    return t


def published(s: pb.Service) -> list[tuple[int, int, int]]:
    return [(p.target_port, p.published_port, p.protocol) for p in s.endpoint.ports]


def test_ingress_ports_get_unique_dynamic_numbers() -> None:
    a = service("a", (80, 0, INGRESS, TCP), (53, 0, INGRESS, UDP), created=1)
    b = service("b", (80, 0, INGRESS, TCP), created=2)
    c = service("c", (80, 30001, INGRESS, TCP), created=3)  # explicit: others avoid it
    out = allocate_services([a, b, c])
    assert published(out["a"]) == [(80, 30000, TCP), (53, 30000, UDP)]
    assert published(out["b"]) == [(80, 30002, TCP)]
    assert published(out["c"]) == [(80, 30001, TCP)]
    assert out["a"].endpoint.spec == a.spec.endpoint


def test_host_mode_ports_are_copied_as_they_are() -> None:
    out = allocate_services([service("h", (80, 8080, HOST, TCP), (81, 0, HOST, TCP))])
    assert published(out["h"]) == [(80, 8080, TCP), (81, 0, TCP)]


def test_allocated_port_is_kept_across_updates_and_current_services_are_left_alone() -> None:
    a = allocate_services([service("a", (80, 0, INGRESS, TCP))])["a"]
    assert allocate_services([a]) == {}
    a.spec.endpoint.ports.add(target_port=443, publish_mode=INGRESS)
    b = service("b", (80, 0, INGRESS, TCP), created=5)
    out = allocate_services([a, b])
    assert published(out["a"]) == [(80, 30000, TCP), (443, 30001, TCP)]
    assert published(out["b"]) == [(80, 30002, TCP)]


def test_range_exhausted_is_a_clear_error() -> None:
    used = {(TCP, p) for p in range(DYNAMIC_FIRST, DYNAMIC_LAST + 1)}
    with pytest.raises(FailedPrecondition, match="no free published port left in 30000-32767"):
        resolve_endpoint(service("a", (80, 0, INGRESS, TCP)), used)


def test_conflicts_for_the_api() -> None:
    a = allocate_services([service("a", (80, 8080, INGRESS, TCP))])["a"]
    spec = service("b", (80, 8080, INGRESS, TCP), (80, 8080, INGRESS, UDP)).spec.endpoint
    assert [(c.port, c.holder.id) for c in conflicts(spec, [a])] == [("8080/tcp", "a")]
    assert conflicts(spec, [a], service_id="a") == []


def test_pending_tasks_copy_the_endpoint() -> None:
    s = allocate_services([service("a", (80, 0, INGRESS, TCP))])["a"]
    unallocated = service("u", (80, 0, INGRESS, TCP))
    tasks = [new_task("t1", "a"), new_task("t2", "missing"), new_task("t3", "u"),
             new_task("t4", "a", desired=pb.SHUTDOWN), new_task("t5", "")]
    out = pending_tasks(tasks, {"a": s, "u": unallocated}, now_ns=7)
    assert [t.id for t in out] == ["t1", "t5"]
    assert out[0].status.state == pb.PENDING
    assert out[0].status.message == "pending task scheduling"
    assert out[0].status.timestamp_ns == 7
    assert out[0].endpoint == s.endpoint


async def test_controller_allocates_then_moves_tasks_to_pending() -> None:
    store = MemoryStore()
    replica = FakeReplica(store)
    mgr = Manager("m", ManagerAddrs("a:1", "a:2"), store, replica)  # type: ignore[arg-type]
    alloc = Passes(mgr, Allocator(mgr))
    put(store, service("a", (80, 0, INGRESS, TCP)), *(new_task(f"t{i}", "a") for i in range(250)))
    await alloc.step(True)
    assert published(store.get(pb.Service, "a")) == [(80, 30000, TCP)]
    assert replica.batch_sizes == [1, 200, 50]
    t = store.get(pb.Task, "t0")
    assert t.status.state == pb.PENDING and t.endpoint.ports[0].published_port == 30000
    await alloc.step()
    assert len(replica.batch_sizes) == 3  # nothing new: no pass
    put(store, new_task("late", "a"))
    await alloc.step()
    assert store.get(pb.Task, "late").status.state == pb.PENDING


async def test_controller_finds_the_new_tasks_made_for_their_node() -> None:
    """A global service's task and a container's attachment are made with their node: the
    allocator reads NEW tasks from the indexes, and must find these too."""
    store = MemoryStore()
    replica = FakeReplica(store)
    mgr = Manager("m", ManagerAddrs("a:1", "a:2"), store, replica)  # type: ignore[arg-type]
    alloc = Passes(mgr, Allocator(mgr))
    g = service("g")
    g.spec.CopyFrom(pb.ServiceSpec(annotations=g.spec.annotations, **{"global": {}}))
    on_node = new_task("t-global", "g")
    on_node.node_id = "w1"
    attached = new_task("t-attached", "")
    attached.node_id = "w1"
    attached.annotations.labels[CONTAINER_LABEL] = "c0ffee"
    put(store, g, on_node, attached)
    await alloc.step(True)
    assert store.get(pb.Task, "t-global").status.state == pb.PENDING
    assert store.get(pb.Task, "t-attached").status.state == pb.ASSIGNED


def test_a_node_waiting_for_an_address_makes_a_pass_only_when_it_joins_or_changes() -> None:
    """With the ingress network full (254 nodes on a /24), every status change of a node
    without an ingress address made a pass that read every task."""
    joined = pb.Node(id="n1")
    ready = pb.Node()
    ready.CopyFrom(joined)
    ready.status.state = pb.NODE_READY
    placed = pb.Node()
    placed.CopyFrom(ready)
    placed.tunnel.addr, placed.ingress_addr = "100.127.0.2/16", "10.0.0.5/24"
    assert node_relevant(None, joined)  # joined without addresses
    assert not node_relevant(joined, ready)  # only its status changed
    assert not node_relevant(placed, placed)  # has both
    assert node_relevant(placed, None)  # left: its addresses are free for others
    assert not node_relevant(joined, None)
    lost = pb.Node()
    lost.CopyFrom(placed)
    lost.ingress_addr = ""
    assert node_relevant(placed, lost)
