"""The Docker executor on a real private dockerd (the session's `engine` fixture, with the
test images loaded): task managers drive real containers from shoal/busybox:latest."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import docker
import pytest

from manager.identity import new_id
from proto import objects_pb2 as pb
from shoal import engine as enginemod
from shoal import lab as labmod
from tests.system.conftest import wait_until
from tests.system.helpers import shoal
from worker.executor.base import STDERR, STDOUT
from worker.executor.docker.executor import DockerExecutor
from worker.reporter import Reporter
from worker.task_manager import TaskManager
from worker.worker import Worker

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

IMAGE = "shoal/busybox:latest"


class Reports:
    def __init__(self) -> None:
        self.states: list[int] = []
        self.last = pb.TaskStatus()

    def __call__(self, _task_id: str, status: pb.TaskStatus) -> None:
        self.states.append(status.state)
        self.last = status


def make_task(node_id: str, *argv: str, grace: float = 1.0) -> pb.Task:
    task = pb.Task(id=new_id(), node_id=node_id, service_id="svc1", service_name="web",
                   desired_state=pb.RUNNING)
    task.annotations.name = f"web.1.{task.id}"
    task.status.state = pb.ASSIGNED
    c = task.spec.container
    c.image = IMAGE
    if argv:
        c.command.extend(["sh", "-c"])
        c.args.append(" ".join(argv))
    c.stop_grace_period.ns = int(grace * 1e9)
    return task


async def until(check: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def executor(engine: enginemod.Engine) -> AsyncIterator[DockerExecutor]:
    ex = DockerExecutor(engine.socket)
    yield ex
    await ex.close()


@pytest.fixture
def client(engine: enginemod.Engine) -> docker.APIClient:
    return docker.APIClient(base_url=engine.socket, version="auto")


async def drive(executor: DockerExecutor, task: pb.Task, until_state: int,
                timeout: float = 20.0) -> tuple[TaskManager, Reports]:
    reports = Reports()
    tm = TaskManager(task, executor, reports)
    tm.start()
    await until(lambda: reports.states and reports.states[-1] >= until_state, timeout,
                f"state {pb.TaskState.Name(until_state)} (at {reports.states})")  # type: ignore[arg-type]
    return tm, reports


async def collect(records: AsyncIterator[tuple[int, int, bytes]]
                  ) -> list[tuple[int, int, bytes]]:
    return [r async for r in records]


async def finish(tm: TaskManager, task: pb.Task) -> None:
    task.desired_state = pb.REMOVE
    tm.update(task)
    await until(lambda: tm.done, what="the container removed")


async def test_a_task_runs_logs_stops_within_its_grace_and_is_removed(
        executor: DockerExecutor, client: docker.APIClient) -> None:
    task = make_task("node-a", "echo hello $GREETING; echo oops >&2; sleep 1000", grace=1.0)
    c = task.spec.container
    c.env.append("GREETING=world")
    c.labels["tier"] = "front"
    c.hostname, c.dir, c.user, c.init = "box", "/tmp", "nobody", True
    c.mounts.add(type=pb.Mount.TMPFS, target="/scratch", tmpfs_size_bytes=1 << 20)
    task.spec.resources.limits.nano_cpus = 500_000_000
    task.spec.resources.limits.memory_bytes = 64 << 20

    tm, reports = await drive(executor, task, pb.RUNNING)
    assert reports.states == [pb.ACCEPTED, pb.PREPARING, pb.READY, pb.STARTING, pb.RUNNING]
    info = client.inspect_container(task.annotations.name)
    assert info["Id"] == reports.last.container.container_id
    labels = info["Config"]["Labels"]
    assert labels["com.docker.swarm.task.id"] == task.id
    assert labels["com.docker.swarm.task.name"] == task.annotations.name
    assert labels["com.docker.swarm.service.id"] == "svc1"
    assert labels["com.docker.swarm.service.name"] == "web"
    assert labels["com.docker.swarm.node.id"] == "node-a"
    assert labels["tier"] == "front"
    assert info["Config"]["Hostname"] == "box"
    assert (info["Config"]["WorkingDir"], info["Config"]["User"]) == ("/tmp", "nobody")
    host = info["HostConfig"]
    assert host["NetworkMode"] == "none" and host["Init"] is True
    assert (host["NanoCpus"], host["Memory"]) == (500_000_000, 64 << 20)
    assert host["Mounts"][0]["Type"] == "tmpfs" and host["Mounts"][0]["Target"] == "/scratch"

    records: list[tuple[int, int, bytes]] = []
    for _ in range(50):  # the output may lag the start a little
        records = await asyncio.wait_for(collect(executor.logs(task.id)), 10.0)
        if len(records) == 2:
            break
        await asyncio.sleep(0.1)
    assert sorted((stream, data) for _, stream, data in records) == [
        (STDOUT, b"hello world\n"), (STDERR, b"oops\n")]
    assert all(stamp > 1_600_000_000 * 10**9 for stamp, _, _ in records)

    loop = asyncio.get_running_loop()
    began = loop.time()
    task.desired_state = pb.SHUTDOWN
    tm.update(task)
    await until(lambda: reports.states[-1] == pb.SHUTDOWN, what="SHUTDOWN")
    assert loop.time() - began < 5.0  # init forwards SIGTERM: no need to wait for the kill
    assert client.inspect_container(task.annotations.name)["State"]["Status"] == "exited"
    await finish(tm, task)
    assert not client.containers(all=True, filters={"label": f"com.docker.swarm.task.id={task.id}"})


async def test_exit_codes_and_an_image_the_engine_cannot_get(executor: DockerExecutor) -> None:
    fails = make_task("node-b", "exit 3")
    tm, reports = await drive(executor, fails, pb.COMPLETE)
    assert reports.last.state == pb.FAILED
    assert reports.last.err == "task: non-zero exit (3)"
    assert reports.last.container.exit_code == 3
    await finish(tm, fails)

    completes = make_task("node-b", "echo a; sleep 1; echo b")
    tm, reports = await drive(executor, completes, pb.RUNNING)
    followed = await asyncio.wait_for(collect(executor.logs(completes.id, follow=True)), 10.0)
    assert [data for _, _, data in followed] == [b"a\n", b"b\n"]  # until it exited
    await until(lambda: reports.states[-1] == pb.COMPLETE, what="COMPLETE")
    assert reports.last.container.exit_code == 0
    tail = await collect(executor.logs(completes.id, tail=1))
    assert [data for _, _, data in tail] == [b"b\n"]
    await finish(tm, completes)

    missing = make_task("node-b", "true")
    missing.spec.container.image = "127.0.0.1:1/shoal/nope:latest"  # a registry that refuses
    tm, reports = await drive(executor, missing, pb.REJECTED, timeout=60.0)
    assert reports.states == [pb.ACCEPTED, pb.PREPARING, pb.REJECTED]
    assert "127.0.0.1:1" in reports.last.err and "refused" in reports.last.err
    await tm.stop()


async def test_health_checks_gate_running_and_fail_unhealthy(executor: DockerExecutor) -> None:
    healthy = make_task("node-c", "sleep 1; touch /tmp/ok; sleep 1000")
    hc = healthy.spec.container.healthcheck
    hc.test.extend(["CMD-SHELL", "test -f /tmp/ok"])
    hc.interval_ns, hc.timeout_ns, hc.retries = 300_000_000, 1_000_000_000, 3
    tm, reports = await drive(executor, healthy, pb.STARTING)
    await asyncio.sleep(0.5)
    assert reports.states[-1] == pb.STARTING  # started, not healthy yet
    await until(lambda: reports.states[-1] == pb.RUNNING, what="healthy → RUNNING")
    assert reports.last.health == "healthy"
    await finish(tm, healthy)

    sick = make_task("node-c", "sleep 1000", grace=0.0)
    hc = sick.spec.container.healthcheck
    hc.test.extend(["CMD", "false"])
    hc.interval_ns, hc.timeout_ns, hc.retries = 200_000_000, 1_000_000_000, 2
    tm, reports = await drive(executor, sick, pb.COMPLETE)
    assert reports.last.state == pb.FAILED
    assert reports.last.err == "task: container unhealthy"
    assert (await executor.inspect(sick.id)).exited  # stopped
    await finish(tm, sick)


async def test_a_restarted_worker_adopts_only_its_own_running_containers(
        engine: enginemod.Engine, client: docker.APIClient) -> None:
    first = DockerExecutor(engine.socket)
    mine = make_task("node-d", "sleep 1000")
    theirs = make_task("node-e", "sleep 1000")
    tms = [(await drive(first, t, pb.RUNNING))[0] for t in (mine, theirs)]
    for tm in tms:
        await tm.stop()  # the worker goes away; containers keep running
    await first.close()
    started = client.inspect_container(mine.annotations.name)["State"]["StartedAt"]

    second = DockerExecutor(engine.socket)
    listed = await second.list_tasks("node-d")
    assert set(listed) == {mine.id} and listed[mine.id].running
    reporter = Reporter()
    worker = Worker("node-d", second, reporter)
    runner = asyncio.create_task(worker.run())
    mine.status.state = pb.RUNNING
    await worker.assign([mine])
    await until(lambda: mine.id in reporter.pending(), what="the adopted task reported")
    assert reporter.pending()[mine.id].state == pb.RUNNING
    assert client.inspect_container(mine.annotations.name)["State"]["StartedAt"] == started
    assert client.inspect_container(theirs.annotations.name)["State"]["Running"]  # untouched

    await worker.assign([])  # gone from the set: stopped and removed
    await until(lambda: not client.containers(
        all=True, filters={"label": f"com.docker.swarm.task.id={mine.id}"}), what="removal")
    runner.cancel()
    await worker.stop()
    client.remove_container(theirs.annotations.name, force=True)


async def test_a_worker_restarted_between_create_and_start_keeps_the_created_container(
        engine: enginemod.Engine, client: docker.APIClient) -> None:
    """prepare creates without looking first: the engine's 409 for the task's container name
    means this task has its container already (a worker restarted after creating it), and
    that one is kept and started, not a second one made."""
    first = DockerExecutor(engine.socket)
    task = make_task("node-f", "sleep 1000")
    created = await first.prepare(task)
    assert created.status == "created" and created.container_id
    await first.close()

    second = DockerExecutor(engine.socket)  # no memory of the container
    try:
        again = await second.prepare(task)
        assert again.container_id == created.container_id
        await second.start(task.id)
        assert (await second.inspect(task.id)).running
        found = client.containers(
            all=True, filters={"label": f"com.docker.swarm.task.id={task.id}"})
        assert [c["Id"] for c in found] == [created.container_id]
    finally:
        await second.remove(task.id)
        await second.close()


# ---- in a lab: real shoald processes sharing the lab's dockerd ------------------------------


def _tasks(host: labmod.HostState, service: str) -> list[dict[str, Any]]:
    found = host.client(timeout=10).get("/tasks", filters=json.dumps({"service": [service]}))
    assert isinstance(found, list)
    return found


def _running(host: labmod.HostState, service: str) -> dict[str, dict[str, Any]]:
    return {t["ID"]: t for t in _tasks(host, service)
            if t["Status"]["State"] == "running" and t["DesiredState"] == "running"}


@pytest.mark.lab(managers=1, workers=1)
def test_a_restarted_worker_shoald_adopts_its_containers(lab: labmod.LabState) -> None:
    m1 = lab.host("m1")
    created = shoal(m1, "service", "create", "--name", "keep", "--replicas", "2", "--detach",
                    "--constraint", "node.role==worker", IMAGE, "sleep", "1000")
    assert created.returncode == 0, created.stderr
    wait_until(lambda: len(_running(m1, "keep")) == 2, 60, "2 running tasks")
    running = _running(m1, "keep")
    assert lab.engine is not None
    client = docker.APIClient(base_url=lab.engine, version="auto")

    def container(task_id: str) -> dict[str, Any]:
        found = client.containers(all=True, filters={
            "label": f"com.docker.swarm.task.id={task_id}"})
        assert len(found) == 1
        return dict(client.inspect_container(found[0]["Id"]))

    started = {tid: container(tid)["State"]["StartedAt"] for tid in running}
    survivor, victim = sorted(running)

    labmod.kill_host(lab.name, "w1")  # a crash: SIGKILL, nothing cleaned up
    client.kill(container(victim)["Id"])  # one task's container dies while its shoald is down
    labmod.start_host(lab.name, "w1")

    def victim_failed() -> dict[str, Any]:
        return next((t for t in _tasks(m1, "keep") if t["ID"] == victim
                     and t["Status"]["State"] == "failed"), {})

    failed = wait_until(victim_failed, 30, "the killed container's exit reported")
    assert failed["Status"]["Err"] == "task: non-zero exit (137)"
    assert failed["Status"]["ContainerStatus"]["ExitCode"] == 137
    survived = _running(m1, "keep").get(survivor)
    assert survived is not None, "the surviving task was replaced"
    assert container(survivor)["State"]["StartedAt"] == started[survivor]  # not restarted
    wait_until(lambda: len(_running(m1, "keep")) == 2, 60, "the failed task replaced")
