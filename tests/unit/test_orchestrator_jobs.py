"""Jobs: replicated jobs up to total completions with max concurrency, global jobs per node,
completed tasks never restarted, failed ones retried per the restart policy, a new run per
spec change."""

from manager.orchestrator import jobs
from proto import objects_pb2 as pb
from proto import store_pb2
from tests.unit.orchestration_world import World, node, service


def complete_running(world: World, name: str = "job") -> None:
    for task in world.running(name):
        world.set_status(task, pb.COMPLETE)


def test_replicated_job_runs_at_most_max_concurrent_until_total_completions() -> None:
    world = World([node("n1")], [service("job", replicas=5, mode="replicated_job",
                                         max_concurrent=2)])
    world.settle()
    first = world.running("job")
    assert sorted(t.slot for t in first) == [1, 2]
    assert all(t.desired_state == pb.COMPLETE and t.job_iteration == 1 for t in first)
    svc = world.service("job")
    assert svc.job_status.job_iteration == 1 and svc.job_status.last_execution_ns == world.now
    complete_running(world)
    world.settle()
    assert sorted(t.slot for t in world.running("job")) == [3, 4]
    complete_running(world)
    world.settle()
    assert sorted(t.slot for t in world.running("job")) == [5]
    complete_running(world)
    world.settle()
    world.advance(60)
    world.settle()
    done = world.tasks("job")
    assert len(done) == 5 and all(t.status.state == pb.COMPLETE for t in done)
    assert not world.step().groups  # completed: nothing restarts


def test_failed_job_task_is_retried_after_the_delay_and_keeps_its_concurrency_place() -> None:
    world = World([node("n1")], [service("job", replicas=2, mode="replicated_job",
                                         max_concurrent=1)])
    world.settle()
    (task,) = world.running("job")
    world.set_status(task, pb.FAILED, "exit 1")
    world.settle()
    assert [t.id for t in world.holders("job")] == [task.id]  # waiting out the 5 s delay
    world.advance(5)
    world.settle()
    holders = world.holders("job")
    assert len(holders) == 1 and holders[0].slot == task.slot and holders[0].id != task.id


def test_job_with_restart_none_gives_up_and_frees_its_place() -> None:
    world = World([node("n1")], [service("job", replicas=2, mode="replicated_job",
                                         max_concurrent=1,
                                         restart={"condition": pb.RestartPolicy.NONE})])
    world.settle()
    (task,) = world.running("job")
    world.set_status(task, pb.FAILED, "exit 1")
    world.settle()
    world.advance(10)
    world.settle()
    assert sorted(t.slot for t in world.running("job")) == [2]


def test_spec_change_starts_a_new_run_and_stops_the_old_one() -> None:
    world = World([node("n1")], [service("job", replicas=2, mode="replicated_job")])
    world.settle()
    old = {t.id for t in world.running("job")}
    world.update_service(lambda s: setattr(s.spec.task.container, "image", "busybox:2"),
                         name="job")
    world.settle()
    tasks = world.tasks("job")
    assert all(t.desired_state == pb.SHUTDOWN for t in tasks if t.id in old)
    new = [t for t in world.running("job") if t.id not in old]
    assert len(new) == 2 and all(t.job_iteration == 2 for t in new)
    assert world.service("job").job_status.job_iteration == 2


def test_global_job_runs_once_per_node_including_later_nodes() -> None:
    world = World([node("n1"), node("n2", availability=pb.DRAIN)],
                  [service("job", mode="global_job")])
    world.settle()
    assert [t.node_id for t in world.running("job")] == ["n1"]
    complete_running(world)
    world.write((store_pb2.CREATE, node("n3")))
    world.settle()
    assert [t.node_id for t in world.running("job")] == ["n3"]
    complete_running(world)
    world.advance(60)
    world.settle()
    assert sorted(t.node_id for t in world.tasks("job")) == ["n1", "n3"]


def test_replicated_job_task_on_a_down_node_runs_again_elsewhere() -> None:
    world = World([node("n1"), node("n2")], [service("job", replicas=1, mode="replicated_job")])
    world.settle()
    (task,) = world.running("job")
    world.change(pb.Node, task.node_id, lambda n: setattr(n.status, "state", pb.NODE_DOWN))
    decision = world.step(jobs.decide)
    assert [len(g) for g in decision.groups] == [2]  # shut down + replacement together
    world.settle()
    (again,) = [t for t in world.holders("job") if t.status.state == pb.RUNNING]
    assert again.slot == 1 and again.node_id != task.node_id
