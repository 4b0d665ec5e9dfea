"""Task reaper: history per slot, REMOVE once stopped, removed services."""

from manager.orchestrator import reaper
from proto import objects_pb2 as pb
from proto import store_pb2
from tests.unit.orchestration_world import World, node, service


def crash(world: World, times: int, name: str = "web") -> None:
    for _ in range(times):
        for task in world.holders(name):
            world.set_status(task, pb.FAILED)
        world.advance(5)
        world.settle()


def test_keeps_at_most_the_history_limit_per_slot_counting_the_current_task() -> None:
    world = World([node("n1")], [service(replicas=2)], history=3)
    world.settle()
    crash(world, 6)
    for slot in (1, 2):
        tasks = [t for t in world.tasks() if t.slot == slot]
        assert len(tasks) == 3
        assert sum(t.desired_state == pb.RUNNING for t in tasks) == 1
    newest = max(world.tasks(), key=lambda t: t.meta.created_at_ns)
    assert world.store.get(pb.Task, newest.id) is not None


def test_max_attempts_keeps_enough_history_to_count() -> None:
    world = World([node("n1")], [service(replicas=1, restart={"max_attempts": 4})], history=2)
    world.settle()
    crash(world, 6)
    assert len(world.tasks()) == 5  # 1 + 4 attempts, then given up
    assert world.holders()[0].status.state == pb.FAILED


def test_removed_tasks_are_deleted_once_stopped() -> None:
    world = World([node("n1")], [service(replicas=1)])
    world.settle()
    (task,) = world.tasks()
    world.change(pb.Task, task.id, lambda t: setattr(t, "desired_state", pb.REMOVE))
    assert not world.step(reaper.decide).groups  # still running
    world.set_status(world.store.get(pb.Task, task.id), pb.SHUTDOWN)
    world.step(reaper.decide)
    assert world.store.get(pb.Task, task.id) is None


def test_never_placed_and_down_node_tasks_are_deleted_without_waiting() -> None:
    world = World([node("n1"), node("n2", state=pb.NODE_DOWN)], [service(replicas=0)])
    waiting = pb.Task(id="t1", service_id="svc-web", slot=1, desired_state=pb.REMOVE)
    waiting.status.state = pb.PENDING
    stuck = pb.Task(id="t2", service_id="svc-web", slot=2, node_id="n2",
                    desired_state=pb.REMOVE)
    stuck.status.state = pb.RUNNING
    world.write((store_pb2.CREATE, waiting), (store_pb2.CREATE, stuck))
    world.step(reaper.decide)
    assert world.tasks() == []


def test_history_of_slots_above_the_replicas_goes_entirely() -> None:
    world = World([node("n1")], [service(replicas=3)])
    world.settle()
    crash(world, 2)
    world.change(pb.Service, "svc-web", lambda s: setattr(s.spec.replicated, "replicas", 1))
    world.settle()
    assert {t.slot for t in world.tasks()} == {1}


def test_removed_service_tasks_then_service_are_deleted() -> None:
    world = World([node("n1")], [service(replicas=2)])
    world.settle()
    world.change(pb.Service, "svc-web", lambda s: setattr(s, "pending_delete", True))
    world.step(reaper.decide)
    assert all(t.desired_state == pb.REMOVE for t in world.tasks())
    assert world.store.get(pb.Service, "svc-web") is not None
    world.agents()  # stop them
    world.step(reaper.decide)
    assert world.tasks() == []
    world.step(reaper.decide)
    assert world.store.get(pb.Service, "svc-web") is None


def test_tasks_of_unknown_or_modeless_services_are_left_alone() -> None:
    world = World([node("n1")], [pb.Service(id="svc-bare")])
    for i, owner in enumerate(("svc-bare", "svc-missing")):
        task = pb.Task(id=f"t{i}", service_id=owner, desired_state=pb.SHUTDOWN)
        task.status.state = pb.COMPLETE
        world.write((store_pb2.CREATE, task))
    assert not world.step().groups


def test_global_history_is_per_node_and_removed_nodes_keep_none() -> None:
    world = World([node("n1"), node("n2")], [service("g", mode="global")], history=2)
    world.settle()
    crash(world, 3, name="g")
    assert sorted(t.node_id for t in world.tasks("g")) == ["n1", "n1", "n2", "n2"]
    world.write((store_pb2.DELETE, world.store.get(pb.Node, "n2")))
    world.settle()
    assert sorted(t.node_id for t in world.tasks("g")) == ["n1", "n1"]
