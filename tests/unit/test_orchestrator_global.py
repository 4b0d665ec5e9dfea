"""Global orchestrator: one task per eligible node, node join, drain, down, constraints."""

from manager.orchestrator import global_
from proto import objects_pb2 as pb
from proto import store_pb2
from tests.unit.orchestration_world import World, node, service


def nodes_running(world: World, name: str = "g") -> list[str]:
    return sorted(t.node_id for t in world.holders(name) if t.status.state == pb.RUNNING)


def test_one_task_per_ready_active_node_with_node_preset() -> None:
    world = World([node("n1"), node("n2"), node("n3", state=pb.NODE_DOWN)],
                  [service("g", mode="global")])
    world.step(global_.decide)
    tasks = world.tasks("g")
    assert sorted(t.node_id for t in tasks) == ["n1", "n2"]
    t = tasks[0]
    assert t.slot == 0 and t.annotations.name == f"g.{t.node_id}.{t.id}"
    assert t.status.state == pb.NEW and t.desired_state == pb.RUNNING
    assert not world.step(global_.decide).groups


def test_a_node_that_joins_later_gets_a_task() -> None:
    world = World([node("n1")], [service("g", mode="global")])
    world.settle()
    world.write((store_pb2.CREATE, node("n2")))
    world.settle()
    assert nodes_running(world) == ["n1", "n2"]


def test_drained_node_task_shuts_down_and_comes_back_on_activate() -> None:
    world = World([node("n1"), node("n2")], [service("g", mode="global")])
    world.settle()
    world.change(pb.Node, "n2", lambda n: setattr(n.spec, "availability", pb.DRAIN))
    world.settle()
    assert nodes_running(world) == ["n1"]
    old = [t for t in world.tasks("g") if t.node_id == "n2"]
    assert [t.desired_state for t in old] == [pb.SHUTDOWN]
    assert old[0].status.state == pb.SHUTDOWN
    world.change(pb.Node, "n2", lambda n: setattr(n.spec, "availability", pb.ACTIVE))
    world.settle()
    assert nodes_running(world) == ["n1", "n2"]


def test_paused_node_keeps_its_task_but_a_new_paused_node_gets_none() -> None:
    world = World([node("n1")], [service("g", mode="global")])
    world.settle()
    world.change(pb.Node, "n1", lambda n: setattr(n.spec, "availability", pb.PAUSE))
    world.write((store_pb2.CREATE, node("n2", availability=pb.PAUSE)))
    assert not world.step(global_.decide).groups
    assert nodes_running(world) == ["n1"]


def test_down_node_task_is_shut_down_not_replaced() -> None:
    world = World([node("n1"), node("n2")], [service("g", mode="global")])
    world.settle()
    world.change(pb.Node, "n1", lambda n: setattr(n.status, "state", pb.NODE_DOWN))
    decision = world.step(global_.decide)
    (group,) = decision.groups
    ((kind, task),) = group
    assert kind == store_pb2.UPDATE and task.node_id == "n1"
    assert task.desired_state == pb.SHUTDOWN


def test_constraints_select_the_nodes() -> None:
    world = World([node("n1", zone="a"), node("n2", zone="b")],
                  [service("g", mode="global", constraints=["node.labels.zone==a"])])
    world.settle()
    assert nodes_running(world) == ["n1"]
    world.change(pb.Node, "n2", lambda n: n.spec.annotations.labels.update(zone="a"))
    world.change(pb.Node, "n1", lambda n: n.spec.annotations.labels.update(zone="c"))
    world.settle()
    assert nodes_running(world) == ["n2"]


def test_bad_constraints_place_nothing() -> None:
    world = World([node("n1")], [service("g", mode="global", constraints=["nonsense"])])
    assert not world.step(global_.decide).groups
