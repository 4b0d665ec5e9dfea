"""Removing a network whose tasks are still stopping (`docker stack rm` removes services and
then, at once, their networks): refused while a task that stays holds an address on it,
marked `pending_delete` while only leaving tasks do, deleted by the network reaper once
none does."""

from __future__ import annotations

import pytest

from manager.allocator.network_reaper import leaving, relevant, unused
from manager.controlapi.networks import new_network, removed_network
from manager.errors import FailedPrecondition, InvalidArgument
from manager.store.memory import Event
from proto import objects_pb2 as pb
from proto import store_pb2


def network(net_id: str = "n1", name: str = "app_front") -> pb.Network:
    n = pb.Network(id=net_id, vni=4097)
    n.spec.annotations.name = name
    return n


def service(svc_id: str = "s1", removed: bool = False) -> pb.Service:
    s = pb.Service(id=svc_id, pending_delete=removed)
    s.spec.annotations.name = svc_id
    return s


def task(task_id: str, state: int = pb.RUNNING, desired: int = pb.RUNNING,
         svc_id: str = "s1", net_id: str = "n1") -> pb.Task:
    t = pb.Task(id=task_id, service_id=svc_id, desired_state=desired)  # type: ignore[arg-type]
    t.status.state = state  # type: ignore[assignment]
    t.networks.add(network_id=net_id, addresses=["10.0.1.3/24"])
    return t


def test_a_task_is_leaving_when_desired_past_running_or_its_service_is_removed() -> None:
    services = {"s1": service(), "gone": service("gone", removed=True)}
    assert not leaving(task("t"), services)
    assert leaving(task("t", desired=pb.SHUTDOWN), services)
    assert leaving(task("t", svc_id="gone"), services)
    assert leaving(task("t", svc_id="deleted"), services)
    attachment = task("t", svc_id="")
    assert not leaving(attachment, services)


def test_rm_is_refused_while_a_staying_task_holds_an_address() -> None:
    with pytest.raises(FailedPrecondition, match="app_front still has 1 task.s. attached "
                                                 r"\(e.g. t1\)"):
        removed_network([network()], [service()], [task("t1"), task("t2", svc_id="x")],
                        "app_front")


def test_rm_right_after_the_services_marks_the_network_for_the_reaper() -> None:
    tasks = [task("t1"), task("t2", desired=pb.REMOVE), task("t3", state=pb.SHUTDOWN)]
    got = removed_network([network()], [service(removed=True)], tasks, "app_front")
    assert got.pending_delete and got.id == "n1" and got.vni == 4097
    idle = removed_network([network()], [], [task("t3", state=pb.SHUTDOWN)], "app_front")
    assert not idle.pending_delete  # nothing holds an address: deleted at once


def test_the_reaper_deletes_a_removed_network_once_no_task_holds_an_address() -> None:
    removed = network()
    removed.pending_delete = True
    kept = network("n2", "other")
    tasks = [task("t1", state=pb.RUNNING, desired=pb.REMOVE), task("t2", net_id="n2")]
    assert unused([removed, kept], tasks) == []
    tasks[0].status.state = pb.SHUTDOWN
    assert unused([removed, kept], tasks) == [removed]


def test_the_reaper_wakes_for_removed_networks_and_tasks_letting_go() -> None:
    removed = network()
    removed.pending_delete = True
    running, stopped = task("t"), task("t", state=pb.COMPLETE)
    assert relevant(Event(store_pb2.UPDATE, "network", network(), removed))
    assert not relevant(Event(store_pb2.CREATE, "network", None, network()))
    assert relevant(Event(store_pb2.UPDATE, "task", running, stopped))
    assert relevant(Event(store_pb2.DELETE, "task", running, None))
    assert not relevant(Event(store_pb2.UPDATE, "task", running, running))
    assert not relevant(Event(store_pb2.DELETE, "task", stopped, None))


def test_a_removed_networks_subnet_stays_taken_until_the_reaper_deleted_it() -> None:
    removed = network()
    removed.pending_delete = True
    removed.ipam.append(pb.IPAMConfig(subnet="10.0.1.0/24", gateway="10.0.1.1"))
    wanted = pb.NetworkSpec(driver="overlay")
    wanted.annotations.name = "app_front"  # the name is free at once
    wanted.ipam.append(pb.IPAMConfig(subnet="10.0.1.0/24"))
    with pytest.raises(InvalidArgument, match=r"overlaps network app_front \(10.0.1.0/24\)"):
        new_network([removed], [], wanted)
    assert new_network([], [], wanted).spec.annotations.name == "app_front"
