"""Scheduler: the pure decision core (every filter, spread, least loaded, reasons) and the
controller over a store (batches, err written once, automatic retry when things change)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from manager.manager import Manager, ManagerAddrs
from manager.scheduler.decide import schedule
from manager.scheduler.filters import Requirements
from manager.scheduler.scheduler import NodeInfos, Scheduler
from manager.store.memory import MemoryStore, wrap
from proto import objects_pb2 as pb
from proto import store_pb2
from tests.unit.passes import Passes

GIB = 1 << 30


def node(nid: str, *, state: int = pb.NODE_READY, avail: int = pb.ACTIVE, cpus: float = 4,
         mem: int = 8 * GIB, labels: dict[str, str] | None = None, os: str = "linux",
         arch: str = "x86_64", role: int = pb.WORKER) -> pb.Node:
    n = pb.Node(id=nid, role=role)
    n.status.state = state  # type: ignore[assignment]
    n.spec.availability = avail  # type: ignore[assignment]
    n.description.hostname = f"host-{nid}"
    n.description.platform.os = os
    n.description.platform.architecture = arch
    n.description.resources.nano_cpus = int(cpus * 1e9)
    n.description.resources.memory_bytes = mem
    n.spec.annotations.labels.update(labels or {})
    return n


def task(tid: str, svc: str = "web", *, state: int = pb.PENDING, node_id: str = "",
         cpus: float = 0, mem: int = 0, constraints: tuple[str, ...] = (),
         spread: tuple[str, ...] = (), host_port: int = 0, max_replicas: int = 0,
         platforms: tuple[tuple[str, str], ...] = (), desired: int = pb.RUNNING) -> pb.Task:
    t = pb.Task(id=tid, service_id=svc, node_id=node_id)
    t.status.state = state  # type: ignore[assignment]
    t.desired_state = desired  # type: ignore[assignment]
    t.spec.resources.reservations.nano_cpus = int(cpus * 1e9)
    t.spec.resources.reservations.memory_bytes = mem
    t.spec.placement.constraints.extend(constraints)
    for d in spread:
        t.spec.placement.preferences.add().spread.spread_descriptor = d
    t.spec.placement.max_replicas = max_replicas
    for os, arch in platforms:
        t.spec.placement.platforms.add(os=os, architecture=arch)
    if host_port:
        t.endpoint.ports.add(target_port=80, published_port=host_port,
                             publish_mode=pb.PortConfig.HOST)
    return t


def tasks(n: int, svc: str = "web", **kw: object) -> list[pb.Task]:
    return [task(f"{svc}-{i:04d}", svc, **kw) for i in range(n)]  # type: ignore[arg-type]


def running(tid: str, node_id: str, svc: str = "web", **kw: object) -> pb.Task:
    return task(tid, svc, state=pb.RUNNING, node_id=node_id, **kw)  # type: ignore[arg-type]


# -- filters --

def test_ready_filter() -> None:
    nodes = [node("a"), node("b", state=pb.NODE_DOWN), node("c", state=pb.NODE_DISCONNECTED)]
    d = schedule(nodes, {}, tasks(3))
    assert set(d.assignments.values()) == {"a"}
    d = schedule(nodes[1:], {}, tasks(1))
    assert d.unplaceable["web-0000"] == \
        "no suitable node (node down on 1 node; node disconnected on 1 node)"


def test_availability_filter() -> None:
    nodes = [node("a", avail=pb.PAUSE), node("b", avail=pb.DRAIN), node("c", avail=pb.DRAIN)]
    d = schedule(nodes, {}, tasks(1))
    assert d.unplaceable["web-0000"] == \
        "no suitable node (node paused on 1 node; node drained on 2 nodes)"
    d = schedule([*nodes, node("d")], {}, tasks(2))
    assert set(d.assignments.values()) == {"d"}


def test_resource_filter_counts_existing_reservations() -> None:
    nodes = [node("a", mem=4 * GIB), node("b", mem=4 * GIB)]
    on_node = {"a": [running("x", "a", mem=3 * GIB)],
               # terminal tasks hold nothing
               "b": [task("y", state=pb.FAILED, node_id="b", mem=3 * GIB)]}
    d = schedule(nodes, on_node, tasks(3, mem=2 * GIB))
    assert Counter(d.assignments.values()) == {"b": 2}
    assert list(d.unplaceable.values()) == ["no suitable node (insufficient memory on 2 nodes)"]


def test_cpu_reservations() -> None:
    nodes = [node("a", cpus=1), node("b", cpus=2)]
    d = schedule(nodes, {}, tasks(4, cpus=0.6))
    assert Counter(d.assignments.values()) == {"a": 1, "b": 3} and not d.unplaceable
    d = schedule(nodes, {}, tasks(5, cpus=0.6))
    assert list(d.unplaceable.values()) == ["no suitable node (insufficient CPU on 2 nodes)"]


def test_constraint_filter() -> None:
    nodes = [node("a", labels={"zone": "a"}), node("b", labels={"zone": "b"}),
             node("m", role=pb.MANAGER, labels={"zone": "b"})]
    d = schedule(nodes, {}, tasks(4, constraints=("node.labels.zone==b", "node.role==worker")))
    assert set(d.assignments.values()) == {"b"}
    d = schedule(nodes, {}, tasks(1, constraints=("node.labels.zone==c",)))
    assert d.unplaceable["web-0000"] == \
        "no suitable node (constraint node.labels.zone==c not met on 3 nodes)"


def test_platform_filter() -> None:
    nodes = [node("x86"), node("arm", arch="aarch64")]
    d = schedule(nodes, {}, tasks(2, platforms=(("linux", "arm64"),)))
    assert set(d.assignments.values()) == {"arm"}
    d = schedule(nodes, {}, tasks(2, platforms=(("linux", "amd64"), ("linux", "arm64"))))
    assert set(d.assignments.values()) == {"x86", "arm"}
    d = schedule(nodes, {}, tasks(1, platforms=(("windows", "amd64"),)))
    assert d.unplaceable["web-0000"] == \
        "no suitable node (platform windows/amd64 not supported on 2 nodes)"


def test_host_port_filter() -> None:
    nodes = [node("a"), node("b"), node("c")]
    on_node = {"a": [running("x", "a", svc="other", host_port=8080)]}
    d = schedule(nodes, on_node, tasks(3, host_port=8080))
    assert sorted(d.assignments.values()) == ["b", "c"]  # one per free node
    assert list(d.unplaceable.values()) == \
        ["no suitable node (host port 8080/tcp in use on 3 nodes)"]
    other_port = schedule(nodes, on_node, tasks(3, svc="api", host_port=9090))
    assert len(other_port.assignments) == 3


def test_max_replicas_per_node() -> None:
    nodes = [node("a"), node("b")]
    d = schedule(nodes, {"a": [running("x", "a")]}, tasks(4, max_replicas=2))
    assert Counter(d.assignments.values()) == {"a": 1, "b": 2}
    assert list(d.unplaceable.values()) == \
        ["no suitable node (max replicas per node (2) reached on 2 nodes)"]


# -- choosing --

def test_least_loaded_by_service_then_total() -> None:
    nodes = [node("a"), node("b"), node("c")]
    on_node = {"a": [running("w1", "a"), running("w2", "a")],
               "b": [running("o1", "b", svc="other"), running("o2", "b", svc="other"),
                     running("o3", "b", svc="other")]}
    d = schedule(nodes, on_node, tasks(1))
    assert d.assignments == {"web-0000": "c"}
    d = schedule(nodes, on_node, tasks(5))
    # c first (0 of web, 0 total), then b (0 of web) and c alternate; a (2 of web) last
    assert Counter(d.assignments.values()) == {"b": 2, "c": 2, "a": 1}


def test_tasks_stopping_or_shut_down_do_not_count_as_load() -> None:
    nodes = [node("a"), node("b")]
    on_node = {"a": [task("x", state=pb.RUNNING, node_id="a", desired=pb.SHUTDOWN)]}
    d = schedule(nodes, on_node, tasks(2))
    assert Counter(d.assignments.values()) == {"a": 1, "b": 1}


def test_spread_balances_label_values_not_nodes() -> None:
    nodes = [node("a1", labels={"zone": "a"}),
             node("b1", labels={"zone": "b"}), node("b2", labels={"zone": "b"}),
             node("b3", labels={"zone": "b"}), node("nolabel")]
    d = schedule(nodes, {}, tasks(9, spread=("node.labels.zone",)))
    by_zone = Counter(nodes[[n.id for n in nodes].index(nid)].spec.annotations.labels.get(
        "zone", "") for nid in d.assignments.values())
    assert by_zone == {"a": 3, "b": 3, "": 3}  # nodes without the label are one group
    assert Counter(d.assignments.values())["a1"] == 3


def test_spread_counts_existing_tasks() -> None:
    nodes = [node("a1", labels={"zone": "a"}), node("b1", labels={"zone": "b"})]
    on_node = {"a1": [running(f"x{i}", "a1") for i in range(3)]}
    d = schedule(nodes, on_node, tasks(5, spread=("node.labels.zone",)))
    assert Counter(d.assignments.values()) == {"b1": 4, "a1": 1}


def test_nested_spread() -> None:
    nodes = [node(f"{z}{r}{i}", labels={"zone": z, "rack": f"{z}{r}"})
             for z in "ab" for r in "xy" for i in range(2 if z == "a" else 1)]
    d = schedule(nodes, {}, tasks(8, spread=("node.labels.zone", "node.labels.rack")))
    labels = {n.id: n.spec.annotations.labels for n in nodes}
    assert Counter(labels[n]["zone"] for n in d.assignments.values()) == {"a": 4, "b": 4}
    assert Counter(labels[n]["rack"] for n in d.assignments.values()) == \
        {"ax": 2, "ay": 2, "bx": 2, "by": 2}


def test_spread_skips_a_full_label_value() -> None:
    nodes = [node("a1", labels={"zone": "a"}, mem=1 * GIB), node("b1", labels={"zone": "b"})]
    d = schedule(nodes, {}, tasks(4, mem=GIB // 2, spread=("node.labels.zone",)))
    assert Counter(d.assignments.values()) == {"a1": 2, "b1": 2}
    d = schedule(nodes, {}, tasks(6, mem=GIB // 2, spread=("node.labels.zone",)))
    assert Counter(d.assignments.values()) == {"a1": 2, "b1": 4}


# -- reasons --

def test_reasons_are_aggregated_with_counts() -> None:
    nodes = [node("b1", labels={"zone": "b"}, mem=GIB), node("b2", labels={"zone": "b"}, mem=GIB),
             *(node(f"a{i}", labels={"zone": "a"}) for i in range(3))]
    d = schedule(nodes, {}, tasks(1, mem=2 * GIB, constraints=("node.labels.zone==b",)))
    assert d.unplaceable == {"web-0000": "no suitable node (insufficient memory on 2 nodes; "
                                         "constraint node.labels.zone==b not met on 3 nodes)"}


def test_a_node_is_counted_once_under_its_first_failure() -> None:
    # a drained node without the label: counted as drained, not as a constraint miss
    nodes = [node("d", avail=pb.DRAIN), node("s", mem=GIB, labels={"zone": "b"}),
             node("x", mem=GIB)]
    d = schedule(nodes, {}, tasks(1, mem=2 * GIB, constraints=("node.labels.zone==b",)))
    assert d.unplaceable["web-0000"] == ("no suitable node (node drained on 1 node; "
                                         "insufficient memory on 1 node; "
                                         "constraint node.labels.zone==b not met on 1 node)")


def test_partial_placement_explains_the_rest() -> None:
    d = schedule([node("a", mem=GIB)], {}, tasks(3, mem=GIB // 2))
    assert len(d.assignments) == 2
    assert d.unplaceable == {"web-0002": "no suitable node (insufficient memory on 1 node)"}


def test_no_nodes_and_bad_specs() -> None:
    assert schedule([], {}, tasks(1)).unplaceable["web-0000"] == \
        "no suitable node (no nodes in the cluster)"
    d = schedule([node("a")], {}, tasks(1, constraints=("zone=a",)))
    assert d.unplaceable["web-0000"] == ('no suitable node (invalid constraint "zone=a": '
                                         "expected KEY==VALUE or KEY!=VALUE)")


def test_preassigned_node_is_the_only_candidate() -> None:
    nodes = [node("a"), node("b", avail=pb.DRAIN)]
    d = schedule(nodes, {}, [task("g1", node_id="a"), task("g2", node_id="b"),
                             task("g3", node_id="gone")])
    assert d.assignments == {"g1": "a"}
    assert d.unplaceable == {"g2": "no suitable node (node drained on 1 node)",
                             "g3": "no suitable node (node gone not found)"}


def test_batch_of_many_tasks_and_services_is_balanced() -> None:
    nodes = [node(f"n{i:02d}", cpus=64, mem=64 * GIB) for i in range(50)]
    pending = [t for s in range(5) for t in tasks(200, svc=f"s{s}", cpus=0.1, mem=1 << 20)]
    d = schedule(nodes, {}, pending)
    assert len(d.assignments) == 1000 and not d.unplaceable
    assert set(Counter(d.assignments.values()).values()) == {20}
    for s in range(5):  # each service spread evenly too
        per_node = Counter(n for t, n in d.assignments.items() if t.startswith(f"s{s}-"))
        assert set(per_node.values()) == {4}


def test_inputs_are_not_modified() -> None:
    nodes, pending = [node("a")], tasks(2, mem=GIB)
    before = [m.SerializeToString() for m in (*nodes, *pending)]
    schedule(nodes, {}, pending)
    assert [m.SerializeToString() for m in (*nodes, *pending)] == before


# -- the controller over a store --

class FakeReplica:
    """Applies batches straight to the store, as a one-manager Raft would."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.batch_sizes: list[int] = []
        self.before_apply: list[object] = []

    def is_leader(self) -> bool:
        return True

    async def propose(self, batch: store_pb2.StoreBatch, timeout: float = 10.0) -> int:
        await asyncio.sleep(0)
        while self.before_apply:
            self.before_apply.pop(0)()  # type: ignore[operator]
        self.batch_sizes.append(len(batch.actions))
        result = self.store.apply(batch)
        if result.error is not None:
            raise result.error
        return result.version


def put(store: MemoryStore, *objs: object) -> None:
    batch = store_pb2.StoreBatch(timestamp_ns=1)
    for o in objs:
        batch.actions.append(store_pb2.StoreAction(kind=store_pb2.PUT, object=wrap(o)))
    assert store.apply(batch).error is None


@pytest.fixture
def cluster() -> tuple[MemoryStore, FakeReplica, Passes]:
    store = MemoryStore()
    replica = FakeReplica(store)
    mgr = Manager("m", ManagerAddrs("a:1", "a:2"), store, replica)  # type: ignore[arg-type]
    return store, replica, Passes(mgr, Scheduler(mgr))


def state(store: MemoryStore, tid: str) -> tuple[int, str, str]:
    t = store.get(pb.Task, tid)
    return t.status.state, t.node_id, t.status.err


async def test_controller_assigns_in_batches(cluster) -> None:  # type: ignore[no-untyped-def]
    store, replica, sched = cluster
    put(store, *(node(f"n{i}") for i in range(10)), *tasks(450))
    await sched.step(True)
    assert replica.batch_sizes == [200, 200, 50]
    assigned = [store.get(pb.Task, f"web-{i:04d}") for i in range(450)]
    assert all(t.status.state == pb.ASSIGNED and t.node_id for t in assigned)
    assert assigned[0].status.message == "scheduler assigned task to node"
    await sched.step(False)  # nothing changed: no pass, no writes
    assert len(replica.batch_sizes) == 3


async def test_unplaceable_err_is_written_once_then_retried_on_label(cluster) -> None:  # type: ignore[no-untyped-def]
    store, replica, sched = cluster
    put(store, node("a", labels={"zone": "a"}), task("t1", constraints=("node.labels.zone==b",)))
    await sched.step(True)
    assert state(store, "t1") == (pb.PENDING, "",
                                  "no suitable node (constraint node.labels.zone==b not met "
                                  "on 1 node)")
    writes = len(replica.batch_sizes)
    put(store, store.get(pb.Node, "a"))  # a change: a new pass, same err: no write
    await sched.step(False)
    assert sched.controller.last is not None and sched.controller.last.unplaceable
    assert len(replica.batch_sizes) == writes
    labelled = store.get(pb.Node, "a")
    labelled.spec.annotations.labels["zone"] = "b"
    put(store, labelled)
    await sched.step(False)
    assert state(store, "t1") == (pb.ASSIGNED, "a", "")


async def test_placed_when_a_node_joins_or_becomes_ready(cluster) -> None:  # type: ignore[no-untyped-def]
    store, _, sched = cluster
    put(store, node("a", state=pb.NODE_DOWN), task("t1"))
    await sched.step(True)
    assert state(store, "t1")[0] == pb.PENDING
    put(store, node("a"))
    await sched.step(False)
    assert state(store, "t1")[:2] == (pb.ASSIGNED, "a")
    put(store, task("t2", constraints=("node.hostname==host-b",)))
    await sched.step(False)
    assert state(store, "t2")[0] == pb.PENDING
    put(store, node("b"))
    await sched.step(False)
    assert state(store, "t2")[:2] == (pb.ASSIGNED, "b")


async def test_placed_when_memory_is_freed(cluster) -> None:  # type: ignore[no-untyped-def]
    store, _, sched = cluster
    put(store, node("a", mem=GIB), running("big", "a", svc="db", mem=GIB), task("t1", mem=GIB))
    await sched.step(True)
    assert state(store, "t1")[2] == "no suitable node (insufficient memory on 1 node)"
    big = store.get(pb.Task, "big")
    big.status.state = pb.COMPLETE
    put(store, big)
    await sched.step(False)
    assert state(store, "t1") == (pb.ASSIGNED, "a", "")


async def test_lost_race_keeps_the_rest_and_retries_next_pass(cluster) -> None:  # type: ignore[no-untyped-def]
    store, replica, sched = cluster
    put(store, node("a"), *tasks(3))

    def orchestrator_shuts_one_down() -> None:
        t = store.get(pb.Task, "web-0001")
        t.desired_state = pb.SHUTDOWN
        put(store, t)

    replica.before_apply.append(orchestrator_shuts_one_down)
    await sched.step(True)
    assert state(store, "web-0000")[0] == state(store, "web-0002")[0] == pb.ASSIGNED
    t1 = store.get(pb.Task, "web-0001")
    assert t1.status.state == pb.PENDING and t1.desired_state == pb.SHUTDOWN
    await sched.step(False)  # the next pass leaves it alone: it is no longer wanted
    assert store.get(pb.Task, "web-0001").status.state == pb.PENDING


def naive_schedule(nodes: list[pb.Node], on_node: dict[str, list[pb.Task]],
                   pending: list[pb.Task]) -> dict[str, str]:
    """Reference: each task, group by group, to the least loaded node that passes all the
    filters, found by scanning every node."""
    from manager.scheduler.decide import _Parser
    from manager.scheduler.filters import PIPELINE, NodeInfo, first_failure
    infos = [NodeInfo.build(n, on_node.get(n.id, ())) for n in nodes]
    parser = _Parser()
    groups: dict[object, list[pb.Task]] = {}
    for t in pending:
        groups.setdefault(parser.requirements(t), []).append(t)
    out = {}
    for req, group in groups.items():
        for t in group:
            fit = [i for i in infos if first_failure(req, i, PIPELINE) is None]  # type: ignore[arg-type]
            if not fit:
                break
            best = min(fit, key=lambda i: (i.by_service.get(t.service_id, 0), i.total, i.id))
            best.take(req)  # type: ignore[arg-type]
            out[t.id] = best.id
    return out


@pytest.mark.parametrize("seed", range(8))
def test_matches_a_naive_scan(seed: int) -> None:
    import random
    rnd = random.Random(seed)
    nodes = [node(f"n{i:02d}", cpus=rnd.choice([1, 2, 4]), mem=rnd.choice([1, 2, 4]) * GIB,
                  labels={"zone": rnd.choice("ab")},
                  avail=rnd.choice([pb.ACTIVE] * 5 + [pb.DRAIN]))
             for i in range(rnd.randint(1, 30))]
    on_node = {n.id: [running(f"r{n.id}{j}", n.id, svc=rnd.choice(["s0", "s1", "x"]),
                              mem=GIB // 4, host_port=rnd.choice([0, 0, 80]))
                      for j in range(rnd.randint(0, 3))] for n in nodes}
    pending = []
    for s in range(rnd.randint(1, 12)):
        kw = {"cpus": rnd.choice([0, 0.5]), "mem": rnd.choice([0, GIB // 2]),
              "host_port": rnd.choice([0, 0, 80]), "max_replicas": rnd.choice([0, 0, 2]),
              "constraints": rnd.choice([(), ("node.labels.zone==a",)])}
        pending += [task(f"s{s}-{i}", f"s{s % 3}", **kw)  # type: ignore[arg-type]
                    for i in range(rnd.randint(1, 15))]
    d = schedule(nodes, on_node, pending)
    assert d.assignments == naive_schedule(nodes, on_node, pending)
    assert set(d.assignments) | set(d.unplaceable) == {t.id for t in pending}


async def test_a_global_services_task_made_for_its_node_is_scheduled(cluster) -> None:  # type: ignore[no-untyped-def]
    """Global tasks are created with their node set: the scheduler finds them through their
    service, not the index of tasks on no node, and checks them against that node."""
    store, _, sched = cluster
    svc = pb.Service(id="g")
    svc.spec.annotations.name = "g"
    getattr(svc.spec, "global").SetInParent()  # a Python keyword
    put(store, node("a"), svc, task("g-a", "g", node_id="a"), task("r1"))
    await sched.step(True)
    assert state(store, "g-a") == (pb.ASSIGNED, "a", "")
    assert state(store, "r1")[:2] == (pb.ASSIGNED, "a")


def test_node_infos_are_built_again_only_for_what_changed() -> None:
    store = MemoryStore()
    put(store, node("a", mem=4 * GIB), node("b", mem=4 * GIB),
        running("t1", "a", mem=GIB), running("t2", "b", mem=GIB))
    infos = NodeInfos()
    first = infos.fresh(store.view())
    again = infos.fresh(store.view())
    assert all(again[k] is first[k] for k in "ab")  # nothing changed: reused
    again["a"].take(Requirements("web", 0, GIB, (), (), (), 0, ()))  # a pass placed one
    infos.spoil(["a"])
    third = infos.fresh(store.view())
    assert third["a"] is not first["a"] and third["b"] is first["b"]
    assert third["a"].free_mem == 3 * GIB and third["a"].by_service == {"web": 1}
    put(store, running("t3", "b", svc="api", mem=GIB))
    fourth = infos.fresh(store.view())
    assert fourth["a"] is third["a"] and fourth["b"] is not first["b"]
    assert (fourth["b"].free_mem, fourth["b"].by_service) == (2 * GIB, {"web": 1, "api": 1})
    stopped = running("t1", "a", mem=GIB)
    stopped.status.state = pb.SHUTDOWN  # a changed task: its node is built again
    put(store, stopped)
    assert infos.fresh(store.view())["a"].free_mem == 4 * GIB
