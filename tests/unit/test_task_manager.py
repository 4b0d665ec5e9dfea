"""The task manager state machine, the worker's reconciliation and adoption, and the reporter,
against the fake executor (scripted by container labels)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from proto import cluster_pb2
from proto import objects_pb2 as pb
from worker.executor.fake import FakeExecutor
from worker.reporter import Reporter
from worker.task_manager import Backoff, TaskManager, retry_delay
from worker.worker import Worker

STARTED = [pb.ACCEPTED, pb.PREPARING, pb.READY, pb.STARTING, pb.RUNNING]


def make_task(task_id: str = "t1", desired: int = pb.RUNNING, grace: float | None = None,
              **script: str) -> pb.Task:
    task = pb.Task(id=task_id, node_id="n1", service_id="s1", service_name="web",
                   desired_state=desired)  # type: ignore[arg-type]
    task.annotations.name = f"web.1.{task_id}"
    task.status.state = pb.ASSIGNED
    task.spec.container.image = "shoal/busybox:latest"
    for key, value in script.items():
        task.spec.container.labels[f"shoal.fake.{key}"] = value
    if grace is not None:
        task.spec.container.stop_grace_period.ns = int(grace * 1e9)
    return task


class Reports:
    def __init__(self) -> None:
        self.items: list[tuple[str, pb.TaskStatus]] = []

    def __call__(self, task_id: str, status: pb.TaskStatus) -> None:
        self.items.append((task_id, status))

    def states(self, task_id: str = "t1") -> list[int]:
        return [s.state for tid, s in self.items if tid == task_id]

    def last(self, task_id: str = "t1") -> pb.TaskStatus:
        return [s for tid, s in self.items if tid == task_id][-1]


async def until(check: Callable[[], object], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        await asyncio.sleep(0.01)


def run(task: pb.Task, fake: FakeExecutor, reports: Reports) -> TaskManager:
    tm = TaskManager(task, fake, reports)
    tm.start()
    return tm


async def test_runs_through_every_state_then_shuts_down_and_removes() -> None:
    fake, reports = FakeExecutor(), Reports()
    task = make_task()
    tm = run(task, fake, reports)
    await until(lambda: reports.states()[-1:] == [pb.RUNNING])
    assert reports.states() == STARTED
    assert fake.containers["t1"].state.running
    assert reports.last().container.container_id == fake.containers["t1"].state.container_id

    task.desired_state = pb.SHUTDOWN
    tm.update(task)
    await until(lambda: reports.states()[-1] == pb.SHUTDOWN)
    assert fake.containers["t1"].state.exited  # stopped, container kept (logs)
    assert ("remove", "t1") not in fake.calls

    task.desired_state = pb.REMOVE
    tm.update(task)
    await until(lambda: tm.done)
    assert "t1" not in fake.containers
    assert reports.states() == [*STARTED, pb.SHUTDOWN]


async def test_never_goes_past_the_desired_state() -> None:
    fake, reports = FakeExecutor(), Reports()
    task = make_task(desired=pb.READY)
    tm = run(task, fake, reports)
    await until(lambda: reports.states()[-1:] == [pb.READY])
    await asyncio.sleep(0.1)
    assert reports.states() == [pb.ACCEPTED, pb.PREPARING, pb.READY]
    assert ("start", "t1") not in fake.calls

    task.desired_state = pb.RUNNING
    tm.update(task)
    await until(lambda: reports.states()[-1:] == [pb.RUNNING])
    await tm.stop()


@pytest.mark.parametrize(("code", "state", "err"), [
    ("0", pb.COMPLETE, ""),
    ("3", pb.FAILED, "task: non-zero exit (3)"),
])
async def test_exit_code_decides_complete_or_failed(code: str, state: int, err: str) -> None:
    fake, reports = FakeExecutor(), Reports()
    tm = run(make_task(run_for="0.05", exit=code), fake, reports)
    await until(lambda: reports.states()[-1:] == [state])
    assert reports.states() == [*STARTED, state]
    assert reports.last().err == err
    assert reports.last().container.exit_code == int(code)
    assert "t1" in fake.containers  # kept until the task is removed
    tm.close()
    await until(lambda: tm.done)
    assert "t1" not in fake.containers


async def test_prepare_error_rejects_with_the_engine_message() -> None:
    fake, reports = FakeExecutor(), Reports()
    tm = run(make_task(fail="prepare", error="No such image: nope:latest"), fake, reports)
    await until(lambda: reports.states()[-1:] == [pb.REJECTED])
    assert reports.states() == [pb.ACCEPTED, pb.PREPARING, pb.REJECTED]
    assert reports.last().err == "No such image: nope:latest"
    await tm.stop()


FAST = Backoff(first=0.01, most=0.02, attempts=4)


def test_retry_delays_double_up_to_the_most_then_give_up() -> None:
    backoff = Backoff(first=0.5, most=2.0, attempts=5)
    assert [retry_delay(backoff, n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 2.0, None]


@pytest.mark.parametrize("step", ["prepare", "start"])
async def test_a_transient_engine_error_is_retried_not_rejected(step: str) -> None:
    fake, reports = FakeExecutor(), Reports()
    task = make_task(fail=step, fail_kind="transient", fail_times="2", error="engine away")
    tm = TaskManager(task, fake, reports, backoff=FAST)
    tm.start()
    await until(lambda: reports.states()[-1:] == [pb.RUNNING])
    assert reports.states() == STARTED  # no REJECTED or FAILED on the way
    assert fake.failed[(step, "t1")] == 2
    assert [op for op, _ in fake.calls].count(step) == 3  # two failures, then it worked
    await tm.stop()


@pytest.mark.parametrize("step, final", [("prepare", pb.REJECTED), ("start", pb.FAILED)])
async def test_transient_errors_give_up_after_the_last_attempt(step: str, final: int) -> None:
    fake, reports = FakeExecutor(), Reports()
    task = make_task(fail=step, fail_kind="transient", error="engine away")
    tm = TaskManager(task, fake, reports, backoff=FAST)
    tm.start()
    await until(lambda: reports.states()[-1:] == [final])
    assert reports.last().err == "engine away"
    assert fake.failed[(step, "t1")] == FAST.attempts
    await tm.stop()


async def test_a_permanent_error_rejects_at_once_without_retrying() -> None:
    fake, reports = FakeExecutor(), Reports()
    task = make_task(fail="prepare", fail_kind="permanent", error="No such image: nope")
    tm = TaskManager(task, fake, reports, backoff=FAST)
    tm.start()
    await until(lambda: reports.states()[-1:] == [pb.REJECTED])
    assert fake.failed[("prepare", "t1")] == 1
    await tm.stop()


async def test_start_error_fails() -> None:
    fake, reports = FakeExecutor(), Reports()
    tm = run(make_task(fail="start"), fake, reports)
    await until(lambda: reports.states()[-1:] == [pb.FAILED])
    assert reports.states() == [pb.ACCEPTED, pb.PREPARING, pb.READY, pb.STARTING, pb.FAILED]
    assert reports.last().err == "fake: start failed"
    await tm.stop()


async def test_stays_starting_until_healthy() -> None:
    fake, reports = FakeExecutor(), Reports()
    tm = run(make_task(health="healthy@0.3"), fake, reports)
    await until(lambda: reports.states()[-1:] == [pb.STARTING])
    await asyncio.sleep(0.15)
    assert reports.states()[-1] == pb.STARTING  # running but not healthy yet
    await until(lambda: reports.states()[-1:] == [pb.RUNNING])
    assert reports.last().health == "healthy"
    await tm.stop()


@pytest.mark.parametrize("script", ["unhealthy@0.05", "healthy@0.05,unhealthy@0.2"])
async def test_unhealthy_container_is_stopped_and_fails(script: str) -> None:
    fake, reports = FakeExecutor(), Reports()
    tm = run(make_task(health=script), fake, reports)
    await until(lambda: reports.states()[-1:] == [pb.FAILED])
    assert reports.last().err == "task: container unhealthy"
    assert ("shutdown", "t1") in fake.calls
    assert fake.containers["t1"].state.exited
    await tm.stop()


async def test_shutdown_while_preparing_never_starts() -> None:
    fake, reports = FakeExecutor(), Reports()
    task = make_task(prepare_for="0.2")
    tm = run(task, fake, reports)
    await until(lambda: reports.states()[-1:] == [pb.PREPARING])
    task.desired_state = pb.SHUTDOWN
    tm.update(task)
    await until(lambda: reports.states()[-1:] == [pb.SHUTDOWN])
    assert ("start", "t1") not in fake.calls
    await tm.stop()


async def test_stop_grace_period_then_kill() -> None:
    fake, reports = FakeExecutor(), Reports()
    task = make_task(grace=0.3, ignore_stop="1")
    tm = run(task, fake, reports)
    await until(lambda: reports.states()[-1:] == [pb.RUNNING])
    loop = asyncio.get_running_loop()
    began = loop.time()
    task.desired_state = pb.SHUTDOWN
    tm.update(task)
    await until(lambda: reports.states()[-1:] == [pb.SHUTDOWN])
    assert loop.time() - began >= 0.29
    assert fake.containers["t1"].state.exit_code == 137
    await tm.stop()


async def test_resumed_running_task_is_adopted_not_restarted() -> None:
    fake, reports = FakeExecutor(), Reports()
    first = run(make_task(), fake, reports)
    await until(lambda: reports.states()[-1:] == [pb.RUNNING])
    await first.stop()  # the worker process goes away; the container keeps running
    container = fake.containers["t1"].state

    resumed = make_task()
    resumed.status.CopyFrom(reports.last())
    fake.calls.clear()
    again = Reports()
    tm = TaskManager(resumed, fake, again, adopted=container)
    tm.start()
    await until(lambda: again.states() == [pb.RUNNING])  # reported again
    await asyncio.sleep(0.05)
    assert fake.calls == [] and fake.containers["t1"].state == container
    await fake.shutdown("t1", 0)  # it exits while adopted: the exit is reported
    await until(lambda: again.states()[-1:] == [pb.FAILED])
    assert again.last().container.exit_code == 143
    await tm.stop()


async def test_worker_adopts_its_containers_and_removes_orphans() -> None:
    fake = FakeExecutor()
    keep, orphan = make_task("keep"), make_task("orphan")
    other_node = make_task("other")
    other_node.node_id = "n2"
    for task in (keep, orphan, other_node):
        await fake.prepare(task)
        await fake.start(task.id)
    keep.status.state = pb.RUNNING

    reporter = Reporter()
    worker = Worker("n1", fake, reporter)
    runner = asyncio.create_task(worker.run())
    fake.calls.clear()
    await worker.assign([keep])
    await until(lambda: "orphan" not in fake.containers)
    await until(lambda: "keep" in reporter.pending())
    assert reporter.pending()["keep"].state == pb.RUNNING
    assert ("start", "keep") not in fake.calls and ("prepare", "keep") not in fake.calls
    assert fake.containers["other"].state.running  # another node's container: untouched

    await worker.assign([])  # the task left the set: stopped and removed
    await until(lambda: "keep" not in fake.containers)
    runner.cancel()
    await worker.stop()


async def test_reporter_batches_and_retries_without_losing_the_last_status() -> None:
    reporter = Reporter()
    sent: list[list[cluster_pb2.TaskStatusUpdate]] = []
    fail = [True]

    async def sender(updates: list[cluster_pb2.TaskStatusUpdate]) -> None:
        if fail[0]:
            raise ConnectionError("manager went away")
        sent.append(updates)

    runner = asyncio.create_task(reporter.run())
    reporter.attach(sender)
    reporter.report("a", pb.TaskStatus(state=pb.RUNNING, timestamp_ns=1))
    reporter.report("b", pb.TaskStatus(state=pb.STARTING, timestamp_ns=1))
    await asyncio.sleep(0.05)
    reporter.report("a", pb.TaskStatus(state=pb.ACCEPTED, timestamp_ns=2))  # older state
    reporter.report("b", pb.TaskStatus(state=pb.FAILED, timestamp_ns=3))
    reporter.attach(None)
    fail[0] = False
    await asyncio.sleep(0.05)
    assert sent == []  # no session: nothing sent
    reporter.attach(sender)
    await until(lambda: sent)
    got = {u.task_id: u.status.state for u in sent[0]}
    assert got == {"a": pb.RUNNING, "b": pb.FAILED}
    assert len(sent) == 1 and reporter.pending() == {}
    runner.cancel()


async def test_a_send_cancelled_with_its_session_does_not_end_the_reporter() -> None:
    """grpc.aio raises CancelledError out of a call whose channel closed (the session
    ended during a leader change): the statuses go with the next session, and the reporter
    goes on. It used to end for good, leaving the node's tasks Assigned while they ran."""
    reporter = Reporter()
    sent: list[str] = []
    cancelled = [True]

    async def sender(updates: list[cluster_pb2.TaskStatusUpdate]) -> None:
        if cancelled[0]:
            cancelled[0] = False
            raise asyncio.CancelledError()
        sent.extend(u.task_id for u in updates)

    runner = asyncio.create_task(reporter.run())
    reporter.attach(sender)
    reporter.report("a", pb.TaskStatus(state=pb.RUNNING, timestamp_ns=1))
    await until(lambda: not cancelled[0])
    reporter.report("b", pb.TaskStatus(state=pb.RUNNING, timestamp_ns=1))
    await until(lambda: sorted(sent) == ["a", "b"])
    assert not runner.done()
    runner.cancel()  # the reporter's own cancellation still ends it
    with pytest.raises(asyncio.CancelledError):
        await runner


async def test_reporter_sends_at_once_and_gathers_what_comes_during_a_send() -> None:
    """No timer: the first report goes out on the next turn of the loop; reports made while
    that send is on its way go together as the next batch when it returns."""
    reporter = Reporter()
    sent: list[list[str]] = []
    release = asyncio.Event()

    async def sender(updates: list[cluster_pb2.TaskStatusUpdate]) -> None:
        sent.append([u.task_id for u in updates])
        if len(sent) == 1:
            await release.wait()

    runner = asyncio.create_task(reporter.run())
    reporter.attach(sender)
    reporter.report("a", pb.TaskStatus(state=pb.RUNNING, timestamp_ns=1))
    for _ in range(3):
        await asyncio.sleep(0)
    assert sent == [["a"]]  # sent without waiting for any interval
    for name in ("b", "c"):
        reporter.report(name, pb.TaskStatus(state=pb.RUNNING, timestamp_ns=1))
    for _ in range(3):
        await asyncio.sleep(0)
    assert sent == [["a"]]  # the first send has not returned yet
    release.set()
    await until(lambda: len(sent) == 2)
    assert sorted(sent[1]) == ["b", "c"]
    runner.cancel()
