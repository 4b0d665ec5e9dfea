"""Replicated orchestrator: slots 1..N, scale up and down, tasks on lost nodes replaced."""

from manager.orchestrator import replicated
from proto import objects_pb2 as pb
from proto import store_pb2
from tests.unit.orchestration_world import World, node, service


def test_scale_up_creates_one_task_per_missing_slot() -> None:
    world = World([node("n1")], [service(replicas=3)])
    world.step(replicated.decide)
    tasks = world.tasks()
    assert [t.slot for t in tasks] == [1, 2, 3]
    t = tasks[0]
    assert t.service_id == "svc-web" and t.service_name == "web" and t.spec_version == 1
    assert t.annotations.name == f"web.1.{t.id}" and len(t.id) == 25
    assert t.spec.container.image == "busybox:1"
    assert t.status.state == pb.NEW and t.status.message == "created"
    assert t.desired_state == pb.RUNNING and not t.node_id
    assert not world.step(replicated.decide).groups  # idempotent


def test_service_labels_are_copied() -> None:
    svc = service()
    svc.spec.annotations.labels["tier"] = "front"
    world = World([node("n1")], [svc])
    world.step(replicated.decide)
    assert all(t.service_labels["tier"] == "front" for t in world.tasks())


def test_scale_down_removes_the_highest_slots_first() -> None:
    world = World([node("n1"), node("n2")], [service(replicas=5)])
    world.settle()
    world.change(pb.Service, "svc-web", lambda s: setattr(s.spec.replicated, "replicas", 2))
    world.step(replicated.decide)
    removed = sorted(t.slot for t in world.tasks() if t.desired_state == pb.REMOVE)
    assert removed == [3, 4, 5]
    assert sorted(t.slot for t in world.holders()) == [1, 2]
    world.settle()
    assert sorted(t.slot for t in world.running()) == [1, 2]
    assert sorted(t.slot for t in world.tasks()) == [1, 2]  # reaped once stopped


def test_scale_up_again_refills_the_lowest_slots() -> None:
    world = World([node("n1")], [service(replicas=2)])
    world.settle()
    world.change(pb.Service, "svc-web", lambda s: setattr(s.spec.replicated, "replicas", 4))
    world.settle()
    assert sorted(t.slot for t in world.running()) == [1, 2, 3, 4]


def test_tasks_on_a_down_node_are_replaced_at_once_in_the_same_slot() -> None:
    world = World([node("n1"), node("n2")], [service(replicas=4)])
    world.settle()
    lost = {t.id: t.slot for t in world.running() if t.node_id == "n1"}
    assert lost
    world.change(pb.Node, "n1", lambda n: setattr(n.status, "state", pb.NODE_DOWN))
    decision = world.step(replicated.decide)
    # old task out of the slot and its replacement in one batch each
    assert all(len(g) == 2 for g in decision.groups)
    for task_id in lost:
        assert world.store.get(pb.Task, task_id).desired_state == pb.SHUTDOWN
    world.settle()
    # the old ones still say RUNNING: their node can't report; they no longer hold a slot
    running = [t for t in world.holders() if t.status.state == pb.RUNNING]
    assert sorted(t.slot for t in running) == [1, 2, 3, 4]
    assert all(t.node_id == "n2" for t in running)


def test_drained_node_tasks_move_but_paused_node_keeps_them() -> None:
    world = World([node("n1"), node("n2")], [service(replicas=2)])
    world.settle()
    world.change(pb.Node, "n1", lambda n: setattr(n.spec, "availability", pb.PAUSE))
    assert not world.step(replicated.decide).groups
    world.change(pb.Node, "n1", lambda n: setattr(n.spec, "availability", pb.DRAIN))
    world.settle()
    assert [t.node_id for t in world.running()] == ["n2", "n2"]


def test_task_on_node_that_lost_a_constraint_label_is_replaced() -> None:
    world = World([node("n1", zone="a"), node("n2", zone="a")],
                  [service(replicas=2, constraints=["node.labels.zone==a"])])
    world.settle()
    world.change(pb.Node, "n1", lambda n: n.spec.annotations.labels.pop("zone"))
    decision = world.step(replicated.decide)
    moved = [a[1] for g in decision.groups for a in g if a[1].desired_state == pb.SHUTDOWN]
    assert moved and all(t.node_id == "n1" for t in moved)


def test_stop_first_slot_waits_for_the_stopping_task() -> None:
    world = World([node("n1")], [service(replicas=1)])
    world.settle()
    (task,) = world.running()
    world.change(pb.Task, task.id, lambda t: setattr(t, "desired_state", pb.SHUTDOWN))
    assert not world.step(replicated.decide).groups  # still stopping on a live node
    world.set_status(world.store.get(pb.Task, task.id), pb.SHUTDOWN)
    world.step(replicated.decide)
    assert len(world.holders()) == 1 and world.holders()[0].id != task.id


def test_stopping_task_on_unresponsive_node_is_given_up_after_a_timeout() -> None:
    world = World([node("n1")], [service(replicas=1)])
    world.settle()
    (task,) = world.running()
    world.change(pb.Task, task.id, lambda t: setattr(t, "desired_state", pb.SHUTDOWN))
    decision = world.step(replicated.decide)
    assert not decision.groups and decision.wake_at_ns is not None
    world.now = decision.wake_at_ns
    world.step(replicated.decide)
    assert len(world.holders()) == 1


def test_ended_task_holding_its_slot_is_left_to_the_restart_supervisor() -> None:
    world = World([node("n1")], [service(replicas=1)])
    world.settle()
    world.set_status(world.running()[0], pb.FAILED)
    assert not world.step(replicated.decide).groups


def test_pending_delete_and_other_modes_are_ignored() -> None:
    gone = service("gone")
    gone.pending_delete = True
    world = World([node("n1")], [gone, service("g", mode="global")])
    assert not world.step(replicated.decide).groups


def test_a_slot_holding_two_live_tasks_of_one_spec_keeps_the_most_advanced() -> None:
    """A former leader's stale decision can refill a slot that was refilled already."""
    world = World([node("n1"), node("n2")], [service(replicas=2)])
    world.step(replicated.decide)
    first = world.tasks()[0]
    world.change(pb.Task, first.id, lambda t: (setattr(t, "node_id", "n1"),
                                               setattr(t.status, "state", pb.RUNNING)))
    extra = pb.Task()
    extra.CopyFrom(world.store.get(pb.Task, first.id))
    extra.id, extra.node_id = "stale-duplicate", "n2"
    extra.status.state = pb.ASSIGNED
    world.write((store_pb2.CREATE, extra))
    world.step(replicated.decide)
    slot1 = {t.id: t.desired_state for t in world.tasks() if t.slot == 1}
    assert slot1 == {first.id: pb.RUNNING, "stale-duplicate": pb.SHUTDOWN}
    assert not world.step(replicated.decide).groups  # repaired: nothing more to do
