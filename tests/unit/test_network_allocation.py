"""The manager half of networks (pure decisions): network create/remove checks, subnets and
VNIs, VIPs, task addresses held until the task ends, and what a node is sent."""

from __future__ import annotations

import pytest

from manager.allocator import networks as nets
from manager.allocator.allocator import allocate_services, pending_tasks
from manager.controlapi.networks import new_network, removed_network, resolve_attachments
from manager.dispatcher.netstate import build_records, network_message
from manager.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from manager.store.view import Draft, StoreView
from proto import objects_pb2 as pb


def spec(name: str, subnet: str = "", gateway: str = "", **opts: str) -> pb.NetworkSpec:
    s = pb.NetworkSpec(driver="overlay", driver_options=opts)
    s.annotations.name = name
    if subnet or gateway:
        s.ipam.append(pb.IPAMConfig(subnet=subnet, gateway=gateway))
    return s


def node(node_id: str, *routes: str) -> pb.Node:
    n = pb.Node(id=node_id)
    n.description.hostname = node_id
    n.status.addr = f"198.18.0.{len(node_id)}"
    n.description.routes.extend(pb.HostRoute(dst=r, dev="lab0") for r in routes)
    return n


def allocated(*specs: pb.NetworkSpec, nodes: tuple[pb.Node, ...] = ()) -> list[pb.Network]:
    networks = [pb.Network(id=f"n{i}", spec=s) for i, s in enumerate(specs)]
    done = {n.id: n for n in nets.allocate_networks(networks, None, list(nodes))}
    return [done.get(n.id, n) for n in networks]


def test_networks_get_subnets_from_the_pool_around_routes_and_unique_vnis() -> None:
    got = allocated(spec("ingress"), spec("a"), spec("b", "10.0.1.0/24"),
                    nodes=(node("m1", "10.0.2.0/23"),))
    assert [n.ipam[0].subnet for n in got] == ["10.0.0.0/24", "10.0.4.0/24", "10.0.1.0/24"]
    assert [n.ipam[0].gateway for n in got] == ["10.0.0.1", "10.0.4.1", "10.0.1.1"]
    assert sorted(n.vni for n in got) == [4096, 4097, 4098]


def test_create_refuses_overlaps_naming_what_they_overlap() -> None:
    existing = allocated(spec("a", "10.5.0.0/24"))
    with pytest.raises(InvalidArgument, match=r"overlaps network a \(10.5.0.0/24\)"):
        new_network(existing, [], spec("b", "10.5.0.0/16"))
    with pytest.raises(InvalidArgument, match="overlaps route 198.18.0.0/24 dev lab0 on node m1"):
        new_network(existing, [node("m1", "198.18.0.0/24")], spec("b", "198.18.0.0/25"))
    with pytest.raises(AlreadyExists, match="network with name a already exists"):
        new_network(existing, [], spec("a"))


@pytest.mark.parametrize(("bad", "error"), [
    (spec("x", "10.1.0.0/40"), "invalid subnet"),
    (spec("x", "10.1.0.0/24", "10.9.9.9"), "gateway 10.9.9.9 is not a host address"),
    (spec("x", fast="1"), "unknown overlay option 'fast'"),
    (spec("bad name!"), "invalid network name"),
    (spec("host"), "reserved"),
])
def test_create_refuses_bad_input(bad: pb.NetworkSpec, error: str) -> None:
    with pytest.raises(InvalidArgument, match=error):
        new_network([], [], bad)


def service(name: str, *network_ids: str, replicas: int = 1, mode: int = 0) -> pb.Service:
    s = pb.Service(id=f"s-{name}")
    s.spec.annotations.name = name
    s.spec.replicated.replicas = replicas
    s.spec.endpoint.mode = mode  # type: ignore[assignment]
    s.spec.task.networks.extend(pb.NetworkAttachmentConfig(target=n) for n in network_ids)
    return s


def test_rm_of_a_network_in_use_names_the_services() -> None:
    network = allocated(spec("backend"))[0]
    users = [service("api", network.id), service("web", network.id), service("other")]
    with pytest.raises(FailedPrecondition, match="in use by service.s. api, web"):
        removed_network([network], users, [], "backend")
    assert removed_network([network], users[2:], [], "backend").id == network.id


def test_service_networks_resolve_to_ids_and_unknown_ones_are_refused() -> None:
    network = allocated(spec("backend"))[0]
    svc = service("api", "backend")
    resolve_attachments(svc.spec, [network])
    assert svc.spec.task.networks[0].target == network.id
    with pytest.raises(NotFound, match="network nope not found: create it first"):
        resolve_attachments(service("api", "nope").spec, [network])


def task(task_id: str, svc: pb.Service, state: int = pb.NEW, node_id: str = "") -> pb.Task:
    t = pb.Task(id=task_id, service_id=svc.id, node_id=node_id, desired_state=pb.RUNNING)
    t.status.state = state  # type: ignore[assignment]
    t.annotations.name = f"{svc.spec.annotations.name}.1.{task_id}"
    return t


def allocate_all(networks: list[pb.Network], services: list[pb.Service],
                 tasks: list[pb.Task]) -> tuple[dict[str, pb.Service], list[pb.Task]]:
    by_id = {n.id: n for n in networks}
    used = nets.used_addresses(services, tasks)
    changed = allocate_services(services, by_id, used)
    current = {s.id: changed.get(s.id, s) for s in services}
    return current, pending_tasks(tasks, current, 1, by_id, used)


def test_vips_and_task_addresses_are_unique_and_released_when_a_task_ends() -> None:
    network = allocated(spec("small", "10.7.0.0/29"))[0]  # 6 hosts: gateway, VIP, 4 tasks
    svc = service("api", network.id)
    services, pending = allocate_all([network], [svc], [task(f"t{i}", svc) for i in range(5)])
    assert [v.addr for v in services[svc.id].endpoint.virtual_ips] == ["10.7.0.2/29"]
    got = [t.networks[0].addresses[0] for t in pending]
    assert got == ["10.7.0.3/29", "10.7.0.4/29", "10.7.0.5/29", "10.7.0.6/29"]  # t4 waits
    ended = pending[0]
    ended.status.state = pb.COMPLETE
    _, again = allocate_all([network], [services[svc.id]], [*pending, task("t4", svc)])
    assert [t.networks[0].addresses[0] for t in again] == ["10.7.0.3/29"]


def test_the_view_indexes_tasks_by_network_and_reads_taken_addresses_from_it() -> None:
    first, second = allocated(spec("a", "10.7.0.0/24"), spec("b", "10.8.0.0/24"))
    svc = service("api", first.id)
    services, pending = allocate_all([first, second], [svc],
                                     [task(f"t{i}", svc) for i in range(3)])
    pending[0].status.state = pb.COMPLETE  # ended: its address is free again
    view = StoreView.of([first, second, *services.values(), *pending, node("w1")])
    assert sorted(t.id for t in view.tasks_on_network(first.id)) == ["t0", "t1", "t2"]
    assert view.tasks_on_network(second.id) == []
    lazy = nets.UsedAddresses(view, None)
    scanned = nets.used_addresses(services.values(), pending)
    assert lazy[first.id] == scanned[first.id] and len(lazy[first.id]) == 3  # VIP, t1, t2
    assert lazy[second.id] == set()
    # A task moved to the other network (or deleted) moves in the index.
    moved = pb.Task()
    moved.CopyFrom(pending[1])
    moved.networks[0].network_id = second.id
    draft = Draft(view)
    draft.put("task", moved)
    draft.delete("task", "t0")
    later = draft.view(2)
    assert [t.id for t in later.tasks_on_network(first.id)] == ["t2"]
    assert [t.id for t in later.tasks_on_network(second.id)] == ["t1"]


def test_dnsrr_services_have_no_vip() -> None:
    network = allocated(spec("n"))[0]
    svc = service("api", network.id, mode=pb.EndpointSpec.DNSRR)
    services, _ = allocate_all([network], [svc], [])
    assert not services[svc.id].endpoint.virtual_ips


def test_a_node_is_sent_its_networks_records_and_peers() -> None:
    network = allocated(spec("n"))[0]
    svc = service("api", network.id)
    services, pending = allocate_all([network], [svc], [task("a", svc), task("b", svc),
                                                        task("c", svc)])
    states = {"a": (pb.RUNNING, "w1"), "b": (pb.STARTING, "w2"), "c": (pb.RUNNING, "w2")}
    for t in pending:
        t.status.state, t.node_id = states[t.id]  # type: ignore[assignment]
    pending[2].desired_state = pb.SHUTDOWN  # told to stop: out of the records at once
    view = StoreView.of([network, *services.values(), *pending,
                         *(node(n) for n in ("w1", "w2", "w3"))])
    records = build_records(view)[network.id]
    assert [t.task_id for t in records.services[svc.id].tasks] == ["a"]
    assert sorted(e.task_id for e in records.endpoints) == ["a", "b", "c"]
    msg = network_message(view, "w1", [pending[0]])
    assert [p.node_id for p in msg.peers] == ["w1", "w2"]
    assert msg.networks[0].services[0].vip == services[svc.id].endpoint.virtual_ips[0].addr
    assert not network_message(view, "w3", []).networks
    # A node whose session ended: its tasks leave the records sent to every node.
    gone = network_message(view, "w2", [pending[1]], frozenset({"w1"}))
    assert not gone.networks[0].services[0].tasks
    assert len(gone.networks[0].endpoints) == 3  # its addresses stay placed (FDB)


def test_nodes_get_unique_tunnel_addresses() -> None:
    a, b = node("a"), node("b")
    b.tunnel.addr = "100.127.0.1/16"
    got = nets.tunnel_addresses([a, b, node("c")])
    assert [(n.id, n.tunnel.addr) for n in got] == [("a", "100.127.0.2/16"),
                                                    ("c", "100.127.0.3/16")]
