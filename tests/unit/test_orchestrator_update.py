"""Rolling updates: batches in slot order with the delay between them, stop-first and
start-first, failure actions (pause, continue, rollback), manual rollback, resuming from the
stored state alone."""

from collections.abc import Callable

from manager.orchestrator import update
from manager.orchestrator.tasks import SECOND
from proto import objects_pb2 as pb
from tests.unit.orchestration_world import World, node, service

US = pb.UpdateStatus
UC = pb.UpdateConfig


def image(img: str) -> Callable[[pb.Service], None]:
    return lambda s: setattr(s.spec.task.container, "image", img)


def started(world: World, **cfg: object) -> World:
    world.settle()
    world.update_service(image("busybox:2"))
    return world


def fails_v2(task: pb.Task) -> int | None:
    return pb.FAILED if task.spec.container.image == "busybox:2" else None


def running_by_slot(world: World) -> dict[int, list[str]]:
    slots: dict[int, list[str]] = {}
    for task in world.holders():
        if task.status.state == pb.RUNNING:
            slots.setdefault(task.slot, []).append(task.spec.container.image)
    return slots


def run_for(world: World, seconds: float, tick: float = 0.25,
            fail: Callable[[pb.Task], int | None] = lambda t: None,
            check: Callable[[World], None] = lambda w: None) -> None:
    for _ in range(int(seconds / tick)):
        world.advance(tick)
        world.settle(fail=fail)
        check(world)


def test_pure_replica_change_starts_no_update() -> None:
    world = World([node("n1")], [service(replicas=2)])
    world.settle()
    world.update_service(lambda s: setattr(s.spec.replicated, "replicas", 3))
    world.settle()
    assert world.service().update_status.state == US.UNKNOWN


def test_batches_follow_slot_order_and_wait_the_delay() -> None:
    world = World([node("n1"), node("n2")],
                  [service(replicas=5, update={"parallelism": 2, "delay": 10, "monitor": 3})])
    started(world)
    world.step()
    assert world.service().update_status.state == US.UPDATING
    assert world.service().update_status.message == "update in progress"
    run_for(world, 60)
    new = sorted((t for t in world.tasks() if t.spec.container.image == "busybox:2"),
                 key=lambda t: t.meta.created_at_ns)
    assert len(new) == 5
    batches: dict[int, list[int]] = {}
    for t in new:
        batches.setdefault(t.meta.created_at_ns, []).append(t.slot)
    assert list(batches.values()) == [[1, 2], [3, 4], [5]]
    starts = sorted(batches)
    assert starts[1] - starts[0] >= 10 * SECOND and starts[2] - starts[1] >= 10 * SECOND
    status = world.service().update_status
    assert status.state == US.COMPLETED and status.message == "update completed"
    assert status.completed_at_ns - starts[2] >= 3 * SECOND  # monitored after the last batch
    assert running_by_slot(world) == {s: ["busybox:2"] for s in range(1, 6)}


def test_parallelism_zero_updates_everything_at_once() -> None:
    world = World([node("n1")], [service(replicas=4, update={"parallelism": 0})])
    started(world)
    world.step()
    decision = world.step(update.decide)
    assert len(decision.groups) == 4


def test_stop_first_stops_the_old_task_before_the_new_one_exists() -> None:
    world = World([node("n1")], [service(replicas=1)])
    started(world)
    world.step()
    world.step(update.decide)
    (old,) = world.tasks()
    assert old.desired_state == pb.SHUTDOWN and old.status.state == pb.RUNNING
    world.settle()
    assert running_by_slot(world) == {1: ["busybox:2"]}


def never_below(replicas: int) -> Callable[[World], None]:
    def check(world: World) -> None:
        running = [t for t in world.holders() if t.status.state == pb.RUNNING]
        assert len(running) >= replicas
    return check


def test_start_first_never_drops_below_the_replicas() -> None:
    world = World([node("n1"), node("n2")],
                  [service(replicas=3, update={"order": UC.START_FIRST, "parallelism": 1})])
    started(world)
    lowest = [3]
    world.store.watch(lambda _events: lowest.append(
        sum(1 for t in world.holders() if t.status.state == pb.RUNNING)))
    world.step()
    world.step(update.decide)
    holders = world.holders()
    assert len(holders) == 4 and sum(t.slot == 1 for t in holders) == 2  # new next to old
    run_for(world, 30)
    assert min(lowest) == 3  # after every single write to the store
    assert running_by_slot(world) == {s: ["busybox:2"] for s in (1, 2, 3)}
    assert world.service().update_status.state == US.COMPLETED


def test_failure_pauses_with_the_task_in_the_message() -> None:
    world = World([node("n1")], [service(replicas=3)])
    started(world)
    run_for(world, 20, fail=fails_v2)
    status = world.service().update_status
    assert status.state == US.PAUSED
    assert status.message.startswith("update paused due to failure or early termination of task")
    named = world.store.get(pb.Task, status.message.rsplit(" ", 1)[1])
    assert named.status.state == pb.FAILED and named.spec.container.image == "busybox:2"
    images = {s: v for s, v in running_by_slot(world).items()}
    assert images[2] == ["busybox:1"] and images[3] == ["busybox:1"]  # the rest untouched


def test_failure_ratio_tolerates_some_failures_and_continue_ignores_them() -> None:
    world = World([node("n1")], [service(replicas=4, update={"parallelism": 0,
                                                             "max_failure_ratio": 0.5})])
    started(world)
    world.step()
    world.step(update.decide)
    world.settle(fail=lambda t: pb.FAILED if t.slot == 1 and fails_v2(t) else None)
    assert world.service().update_status.state == US.UPDATING  # 1 of 4 ≤ 0.5
    world2 = World([node("n1")], [service(replicas=2, update={"failure_action": UC.CONTINUE})])
    started(world2)
    run_for(world2, 4, fail=fails_v2)
    assert world2.service().update_status.state == US.UPDATING  # went on, monitoring
    assert all(t.spec.container.image == "busybox:2" for t in world2.holders())
    run_for(world2, 15, fail=fails_v2)  # restarts of the failed tasks don't extend it
    assert world2.service().update_status.state == US.COMPLETED


def test_failure_rolls_back_to_the_previous_spec() -> None:
    world = World([node("n1")], [service(replicas=3, update={"failure_action": UC.ROLLBACK},
                                         rollback={"parallelism": 0, "monitor": 1})])
    started(world)
    for _ in range(40):
        run_for(world, 0.25, fail=fails_v2)
        if world.service().update_status.state != US.UPDATING:
            break
    svc = world.service()
    assert svc.update_status.state == US.ROLLBACK_STARTED
    assert svc.update_status.message.startswith("update rolled back due to failure")
    assert svc.spec.task.container.image == "busybox:1" and not svc.has_previous_spec
    assert svc.spec_version == 3
    run_for(world, 10, fail=fails_v2)
    status = world.service().update_status
    assert status.state == US.ROLLBACK_COMPLETED and status.message.startswith(
        "rollback completed (update rolled back due to failure")
    assert running_by_slot(world) == {s: ["busybox:1"] for s in (1, 2, 3)}


def test_a_failing_rollback_pauses() -> None:
    world = World([node("n1")], [service(replicas=2, update={"failure_action": UC.ROLLBACK})])
    started(world)
    run_for(world, 8, fail=lambda t: pb.FAILED)
    status = world.service().update_status
    assert status.state == US.ROLLBACK_PAUSED
    assert status.message.startswith("rollback paused due to failure")


def test_rollback_without_previous_spec_pauses_and_says_so() -> None:
    world = World([node("n1")], [service(replicas=1, update={"failure_action": UC.ROLLBACK})])
    world.settle()
    world.update_service(image("busybox:2"))
    world.change(pb.Service, "svc-web", lambda s: setattr(s, "has_previous_spec", False))
    run_for(world, 8, fail=fails_v2)
    status = world.service().update_status
    assert status.state == US.PAUSED and "no previous spec" in status.message


def test_manual_rollback_is_carried_out() -> None:
    world = World([node("n1")], [service(replicas=2, rollback={"parallelism": 0})])
    started(world)
    run_for(world, 30)
    assert world.service().update_status.state == US.COMPLETED

    def rollback(s: pb.Service) -> None:  # what the API does for `service rollback`
        s.spec.CopyFrom(s.previous_spec)
        s.has_previous_spec = False
        s.ClearField("previous_spec")
        s.spec_version += 1
        s.update_status.Clear()
        s.update_status.state = US.ROLLBACK_STARTED
        s.update_status.message = "manually requested rollback"
        s.update_status.started_at_ns = world.now
    world.change(pb.Service, "svc-web", rollback)
    run_for(world, 30)
    assert world.service().update_status.state == US.ROLLBACK_COMPLETED
    assert running_by_slot(world) == {1: ["busybox:1"], 2: ["busybox:1"]}


def test_a_new_update_after_a_pause_starts_over() -> None:
    world = World([node("n1")], [service(replicas=2)])
    started(world)
    run_for(world, 10, fail=fails_v2)
    assert world.service().update_status.state == US.PAUSED
    world.update_service(image("busybox:3"))
    run_for(world, 30, fail=fails_v2)
    assert world.service().update_status.state == US.COMPLETED
    assert running_by_slot(world) == {1: ["busybox:3"], 2: ["busybox:3"]}


def test_global_service_rolls_node_by_node() -> None:
    world = World([node("n1"), node("n2"), node("n3", availability=pb.PAUSE)],
                  [service("g", mode="global")])
    world.settle()
    world.change(pb.Node, "n3", lambda n: setattr(n.spec, "availability", pb.ACTIVE))
    world.settle()
    world.change(pb.Node, "n3", lambda n: setattr(n.spec, "availability", pb.PAUSE))
    world.update_service(image("busybox:2"), name="g")
    for _ in range(60):
        world.advance(0.25)
        world.settle()
    imgs = {t.node_id: t.spec.container.image for t in world.holders("g")
            if t.status.state == pb.RUNNING}
    assert imgs == {"n1": "busybox:2", "n2": "busybox:2", "n3": "busybox:1"}  # paused: kept
    assert world.service("g").update_status.state == US.COMPLETED


def test_resumes_from_the_store_after_a_leader_change() -> None:
    """The cores keep no state: a new leader running them on the stored state carries on.
    Here the 'old leader' stops mid-update (start-first, a new task not yet running) and the
    cluster moves on a while without any orchestrator."""
    world = World([node("n1"), node("n2")],
                  [service(replicas=4, update={"order": UC.START_FIRST, "parallelism": 2,
                                               "delay": 2})])
    started(world)
    world.step()
    world.step(update.decide)  # first batch: two new tasks next to the old ones
    world.place()
    world.agents()  # they come up while no leader is there
    world.advance(1)
    run_for(world, 30, check=never_below(4))
    assert running_by_slot(world) == {s: ["busybox:2"] for s in (1, 2, 3, 4)}
    assert world.service().update_status.state == US.COMPLETED


def test_a_published_port_change_rolls_the_tasks() -> None:
    world = World([node("n1")], [service(replicas=2, update={"parallelism": 0})])
    world.settle()
    for task in world.tasks():  # as the allocator leaves them
        world.change(pb.Task, task.id, lambda t: t.endpoint.spec.CopyFrom(pb.EndpointSpec()))

    def publish(s: pb.Service) -> None:
        s.spec.endpoint.ports.add(target_port=80, published_port=8080)
    world.update_service(publish)
    old = {t.id for t in world.tasks()}
    run_for(world, 10)
    assert not old & {t.id for t in world.holders()}
    assert world.service().update_status.state == US.COMPLETED
