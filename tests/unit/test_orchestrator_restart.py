"""Restart supervisor: condition, delay, max attempts within a window, successors in the same
slot, rejected tasks kept visible."""

from manager.orchestrator import restart
from manager.orchestrator.tasks import SECOND
from proto import objects_pb2 as pb
from tests.unit.orchestration_world import World, node, service

RP = pb.RestartPolicy


def one_running(**fields: object) -> World:
    world = World([node("n1")], [service(replicas=1, **fields)])  # type: ignore[arg-type]
    world.settle()
    return world


def fail_current(world: World, state: int = pb.FAILED, err: str = "exit 1") -> pb.Task:
    (task,) = world.holders()
    world.set_status(task, state, err)
    return task


def test_failed_task_is_replaced_in_its_slot_after_the_default_delay() -> None:
    world = one_running()
    failed = fail_current(world)
    world.advance(4.9)
    decision = world.step(restart.decide)
    assert not decision.groups and decision.wake_at_ns == failed.meta.updated_at_ns + 5 * SECOND
    world.advance(0.1)
    (group,) = world.step(restart.decide).groups
    old, new = group[0][1], group[1][1]
    assert old.id == failed.id and old.desired_state == pb.SHUTDOWN
    assert new.slot == failed.slot and new.desired_state == pb.RUNNING and new.id != failed.id
    assert world.store.get(pb.Task, failed.id).status.err == "exit 1"  # still visible


def test_condition_none_never_restarts() -> None:
    world = one_running(restart={"condition": RP.NONE})
    fail_current(world)
    world.advance(60)
    assert not world.step(restart.decide).groups


def test_on_failure_restarts_failures_but_not_completions() -> None:
    world = one_running(restart={"condition": RP.ON_FAILURE, "delay": 0})
    done = fail_current(world, pb.COMPLETE, "")
    assert not world.step(restart.decide).groups
    world.settle()
    assert [t.id for t in world.holders()] == [done.id]
    world2 = one_running(restart={"condition": RP.ON_FAILURE, "delay": 0})
    fail_current(world2)
    assert len(world2.step(restart.decide).groups) == 1


def test_condition_any_restarts_a_completed_task() -> None:
    world = one_running(restart={"condition": RP.ANY, "delay": 1})
    fail_current(world, pb.COMPLETE, "")
    world.advance(1)
    assert len(world.step(restart.decide).groups) == 1


def crash_loop(world: World, times: int, gap: float) -> int:
    """Fail the slot's task `times` times, `gap` seconds apart; returns the restarts made."""
    restarts = 0
    for _ in range(times):
        fail_current(world)
        world.advance(gap)
        restarts += len(world.step(restart.decide).groups)
        world.place()
        world.agents()
    return restarts


def test_max_attempts_stops_restarting() -> None:
    world = one_running(restart={"condition": RP.ANY, "delay": 1, "max_attempts": 3})
    assert crash_loop(world, 5, 2) == 3
    assert len(world.tasks()) == 4  # the first one and three restarts
    world.advance(3600)
    assert not world.step(restart.decide).groups  # no window: given up for good


def test_window_lets_attempts_expire() -> None:
    world = one_running(restart={"condition": RP.ANY, "delay": 1, "max_attempts": 1,
                                 "window": 10})
    assert crash_loop(world, 2, 2) == 1  # second failure within 10 s: given up
    decision = world.step(restart.decide)
    assert not decision.groups and decision.wake_at_ns is not None
    world.now = decision.wake_at_ns
    assert len(world.step(restart.decide).groups) == 1


def test_attempts_count_again_after_a_spec_change() -> None:
    world = one_running(restart={"condition": RP.ANY, "delay": 0, "max_attempts": 1})
    assert crash_loop(world, 2, 1) == 1
    world.update_service(lambda s: setattr(s.spec.task.container, "image", "busybox:2"))
    assert len(world.step(restart.decide).groups) == 1  # the old failures don't count


def test_rejected_tasks_are_not_a_tight_loop() -> None:
    world = one_running()
    for _ in range(3):
        fail_current(world, pb.REJECTED, "No such image: nope:latest")
        for _ in range(4):  # several ticks within the delay: nothing happens
            world.advance(1)
            assert not world.step(restart.decide).groups
        world.advance(1)
        assert len(world.step(restart.decide).groups) == 1
        world.place()
        world.agents()
    rejected = [t for t in world.tasks() if t.status.state == pb.REJECTED]
    assert len(rejected) == 3 and all("No such image" in t.status.err for t in rejected)


def test_shutdown_that_was_not_requested_is_restarted() -> None:
    world = one_running(restart={"delay": 0})
    fail_current(world, pb.SHUTDOWN, "")
    assert len(world.step(restart.decide).groups) == 1


def test_global_task_is_restarted_on_its_node() -> None:
    world = World([node("n1"), node("n2")], [service("g", mode="global", restart={"delay": 0})])
    world.settle()
    task = next(t for t in world.holders("g") if t.node_id == "n2")
    world.set_status(task, pb.FAILED)
    (group,) = world.step(restart.decide).groups
    assert group[1][1].node_id == "n2" and group[1][1].annotations.name.startswith("g.n2.")


def test_ended_task_next_to_a_live_one_just_leaves_the_slot() -> None:
    world = one_running(update={"order": pb.UpdateConfig.START_FIRST})
    (old,) = world.holders()
    world.update_service(lambda s: setattr(s.spec.task.container, "image", "busybox:2"))
    world.step()  # UPDATING
    world.step()  # the first batch: a new task next to the old one
    world.place()
    world.agents(fail=lambda t: pb.FAILED)
    (new,) = [t for t in world.holders() if t.id != old.id]
    assert new.status.state == pb.FAILED
    (group,) = world.step(restart.decide).groups
    assert [(a[1].id, a[1].desired_state) for a in group] == [(new.id, pb.SHUTDOWN)]
    assert [t.id for t in world.holders()] == [old.id]


def test_a_slot_scaled_away_is_not_restarted() -> None:
    world = World([node("n1")], [service(replicas=2, restart={"delay": 0})])
    world.settle()
    (task,) = [t for t in world.holders() if t.slot == 2]
    world.set_status(task, pb.FAILED)
    world.change(pb.Service, "svc-web", lambda s: setattr(s.spec.replicated, "replicas", 1))
    assert not world.step(restart.decide).groups
