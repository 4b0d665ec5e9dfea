"""The dispatcher's Assignments/UpdateTaskStatus and the worker, end to end in one process:
a manager node and a joined worker node (real Raft, real gRPC with mTLS over loopback), the
fake executor on each. Tasks are written into the store directly (as the orchestrator and
scheduler will)."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from manager.identity import new_id
from manager.manager import Manager
from proto import cluster_pb2_grpc, store_pb2
from proto import objects_pb2 as pb
from shoal.description import VERSION
from shoal.joining import JoinRequest
from shoal.newcluster import InitRequest
from shoal.node import Node
from worker import worker as worker_module
from worker.executor.fake import FakeExecutor

LOOPBACK = "127.0.0.1"


def free_port_block(size: int = 3) -> int:
    """A port P with P … P+size-1 free (cluster, bootstrap and Raft ports)."""
    for _ in range(100):
        base = random.randrange(20000, 60000)
        socks = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                socks.append(s)
                s.bind((LOOPBACK, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


async def until(check: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.manager_fake, self.worker_fake = FakeExecutor(), FakeExecutor()
        self.m = Node(str(tmp / "m1"), "m1", executor=self.manager_fake)
        self.w = Node(str(tmp / "w1"), "w1", executor=self.worker_fake)
        self.worker_port = free_port_block()

    @property
    def mgr(self) -> Manager:
        return self.m.manager()

    @property
    def worker_id(self) -> str:
        assert self.w.state is not None
        return self.w.state.node_id

    async def up(self) -> None:
        port = free_port_block()
        await self.m.init(InitRequest(LOOPBACK, LOOPBACK, port, pb.ClusterSpec()))
        token = self.mgr.cluster().root_ca.join_tokens.worker
        await self.w.join(JoinRequest(f"{LOOPBACK}:{port}", token, LOOPBACK, LOOPBACK,
                                      self.worker_port))
        await until(lambda: self.node_ready(self.worker_id), what="the worker to be ready")
        await until(self.allocated, what="the ingress network and tunnel addresses")

    def allocated(self) -> bool:
        """The allocator's first work is done (tests that compare store versions need it)."""
        store = self.mgr.store
        return all(n.vni for n in store.list(pb.Network)) and \
            all(n.tunnel.addr and n.ingress_addr for n in store.list(pb.Node))

    def node_ready(self, node_id: str) -> bool:
        node = self.mgr.store.get(pb.Node, node_id)
        return node is not None and node.status.state == pb.NODE_READY

    async def restart_worker(self) -> None:
        await self.w.stop()
        self.w = Node(str(self.tmp / "w1"), "w1", executor=self.worker_fake)
        await self.w.start()

    def task(self, task_id: str) -> pb.Task:
        task = self.mgr.store.get(pb.Task, task_id)
        assert task is not None, task_id
        return task  # type: ignore[no-any-return]

    async def add_task(self, name: str, **script: str) -> str:
        task = pb.Task(id=new_id(), service_id="svc", service_name="web",
                       node_id=self.worker_id, desired_state=pb.RUNNING)
        task.annotations.name = f"web.{name}.{task.id}"
        task.status.state = pb.ASSIGNED
        task.spec.container.image = "shoal/busybox:latest"
        for key, value in script.items():
            task.spec.container.labels[f"shoal.fake.{key}"] = value
        await self.mgr.write((store_pb2.CREATE, task))
        return str(task.id)

    async def set_desired(self, task_id: str, state: int) -> None:
        def change(t: pb.Task) -> bool:
            t.desired_state = state  # type: ignore[assignment]
            return True
        await self.mgr.modify(pb.Task, task_id, change)

    async def wait_state(self, task_id: str, state: int, timeout: float = 10.0) -> pb.Task:
        await until(lambda: self.task(task_id).status.state == state, timeout,
                    f"task {task_id} to be {pb.TaskState.Name(state)} "  # type: ignore[arg-type]
                    f"(is {pb.TaskState.Name(self.task(task_id).status.state)})")
        return self.task(task_id)

    async def down(self) -> None:
        await self.w.stop()
        await self.m.stop()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        await c.up()
        yield c
    finally:
        await c.down()


async def test_tasks_run_exit_fail_and_stop_through_the_dispatcher(cluster: Cluster) -> None:
    node = cluster.mgr.node(cluster.worker_id)
    assert node.description.engine.engine_version == "fake-1.0"

    run = await cluster.add_task("1")
    exits = await cluster.add_task("2", run_for="0.3", exit="3")
    bad = await cluster.add_task("3", fail="prepare", error="No such image: nope:latest")

    running = await cluster.wait_state(run, pb.RUNNING)
    assert running.status.container.container_id.startswith("fake")
    failed = await cluster.wait_state(exits, pb.FAILED)
    assert failed.status.err == "task: non-zero exit (3)"
    assert failed.status.container.exit_code == 3
    rejected = await cluster.wait_state(bad, pb.REJECTED)
    assert rejected.status.err == "No such image: nope:latest"
    assert cluster.manager_fake.containers == {}  # nothing ran on the manager's own worker

    await cluster.set_desired(run, pb.SHUTDOWN)
    await cluster.wait_state(run, pb.SHUTDOWN)
    assert cluster.worker_fake.containers[run].state.exited
    await cluster.set_desired(run, pb.REMOVE)
    await until(lambda: run not in cluster.worker_fake.containers, what="container removed")

    # A deleted task leaves the set: its container goes away too.
    await cluster.mgr.write((store_pb2.DELETE, cluster.task(exits)))
    await until(lambda: exits not in cluster.worker_fake.containers, what="container removed")


async def test_reports_only_move_tasks_forward_and_only_for_the_reporting_node(
        cluster: Cluster) -> None:
    task_id = await cluster.add_task("1")
    await cluster.wait_state(task_id, pb.RUNNING)
    writer = cluster.m.manager_role.dispatcher.statuses  # type: ignore[union-attr]
    stale = pb.TaskStatus(state=pb.PREPARING, timestamp_ns=1)
    assert await writer.write({task_id: (cluster.worker_id, stale)}) == 0
    other_node = pb.TaskStatus(state=pb.FAILED, err="forged", timestamp_ns=2**62)
    assert await writer.write({task_id: ("someone-else", other_node)}) == 0
    assert cluster.task(task_id).status.state == pb.RUNNING


async def test_a_restarted_worker_adopts_its_containers(cluster: Cluster) -> None:
    keep = await cluster.add_task("1")
    dies = await cluster.add_task("2", run_for="1.5", exit="5")
    await cluster.wait_state(keep, pb.RUNNING)
    await cluster.wait_state(dies, pb.RUNNING)
    container = cluster.worker_fake.containers[keep].state

    await cluster.w.stop()  # shoald goes away; the engine's containers keep running
    await asyncio.sleep(1.8)  # `dies` exits meanwhile
    cluster.worker_fake.calls.clear()
    cluster.w = Node(str(cluster.tmp / "w1"), "w1", executor=cluster.worker_fake)
    await cluster.w.start()

    failed = await cluster.wait_state(dies, pb.FAILED)  # the exit is reported after restart
    assert failed.status.err == "task: non-zero exit (5)"
    assert cluster.task(keep).status.state == pb.RUNNING
    await asyncio.sleep(0.3)
    assert cluster.worker_fake.containers[keep].state == container  # same, still running
    assert ("start", keep) not in cluster.worker_fake.calls
    assert ("prepare", keep) not in cluster.worker_fake.calls

    await cluster.set_desired(keep, pb.SHUTDOWN)  # and it is managed again
    await cluster.wait_state(keep, pb.SHUTDOWN)


async def test_leaving_the_swarm_removes_the_nodes_task_containers(cluster: Cluster) -> None:
    task_id = await cluster.add_task("1")
    await cluster.wait_state(task_id, pb.RUNNING)
    await cluster.w.leave(force=False)
    assert cluster.worker_fake.containers == {}


async def test_an_agent_whose_session_the_leader_dropped_reconnects(cluster: Cluster) -> None:
    """The leader forgets a session (as when it marks a node down): the agent's heartbeat is
    refused, it cancels its own session call, and must open a new one, not stop."""
    dispatcher = cluster.m.manager_role.dispatcher  # type: ignore[union-attr]
    worker_id = cluster.worker_id
    old = dispatcher.sessions.pop(worker_id)
    await until(lambda: (s := dispatcher.sessions.get(worker_id)) is not None and
                s.session_id != old.session_id, 20, "a new session")
    assert cluster.w.services is not None and cluster.w.services.alive("agent")
    # The new session's assignment stream carries what was assigned meanwhile and after.
    task_id = await cluster.add_task("after-reconnect")
    await cluster.wait_state(task_id, pb.RUNNING)


async def test_a_status_the_manager_lost_is_sent_again(cluster: Cluster) -> None:
    """The store went back to Assigned for a running task (a report acknowledged by a leader
    that lost it): the worker sees it in the full set of its next session (as after a leader
    change) and reports Running again."""
    task_id = await cluster.add_task("1")
    running = await cluster.wait_state(task_id, pb.RUNNING)

    def regress(t: pb.Task) -> bool:
        t.status.state = pb.ASSIGNED
        t.status.message = "assigned"
        return True
    await cluster.mgr.modify(pb.Task, task_id, regress)
    dispatcher = cluster.m.manager_role.dispatcher  # type: ignore[union-attr]
    dispatcher.sessions.pop(cluster.worker_id)  # the agent opens a new session
    again = await cluster.wait_state(task_id, pb.RUNNING, 20)
    assert again.status.container.container_id == running.status.container.container_id
    assert cluster.worker_fake.calls.count(("start", task_id)) == 1  # reported, not restarted


async def test_an_engine_that_answers_late_or_changes_shows_in_the_node(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine was not up when shoald started (slow VMs): its version and labels reach the
    manager once it answers, and a restarted engine's new version too, with a heartbeat:
    the session and the node's tasks are not disturbed."""
    monkeypatch.setattr(worker_module, "ENGINE_RETRY", 0.2)
    monkeypatch.setattr(worker_module, "ENGINE_REFRESH", 0.2)
    task_id = await cluster.add_task("1")
    running = await cluster.wait_state(task_id, pb.RUNNING)
    cluster.worker_fake.engine_down = True
    await cluster.restart_worker()  # the first session goes without the engine's description
    await until(lambda: cluster.node_ready(cluster.worker_id), what="the worker back")

    def engine() -> pb.EngineDescription:
        return cluster.mgr.node(cluster.worker_id).description.engine

    await until(lambda: engine().engine_version == VERSION, what="the session without engine")
    assert "executor" not in engine().labels
    dispatcher = cluster.m.manager_role.dispatcher  # type: ignore[union-attr]
    session = dispatcher.sessions[cluster.worker_id].session_id
    cluster.worker_fake.engine_down = False
    await until(lambda: engine().engine_version == "fake-1.0", 20, "the late engine's version")
    assert engine().labels["executor"] == "fake"
    cluster.worker_fake.version = "fake-2.0"  # dockerd upgraded and restarted
    await until(lambda: engine().engine_version == "fake-2.0", 20, "the new engine version")
    assert cluster.node_ready(cluster.worker_id)
    assert dispatcher.sessions[cluster.worker_id].session_id == session
    after = cluster.task(task_id)
    assert after is not None and after.status.state == pb.RUNNING
    assert after.status.container.container_id == running.status.container.container_id


async def test_what_a_node_reports_shows_in_its_status_and_a_live_node_comes_back(
        cluster: Cluster) -> None:
    """A failing certificate renewal travels in heartbeats to the node's Status.Message
    (`node inspect`) and is cleared the same way; a node marked Down (as a stale leader
    would) that still heartbeats is brought back to Ready."""
    worker_id = cluster.worker_id

    def status() -> tuple[int, str]:
        node = cluster.mgr.store.get(pb.Node, worker_id)
        return node.status.state, node.status.message

    problem = ("certificate renewal failing since 2026-12-04T10:00:00Z (unavailable: no "
               "leader); the node certificate expires at 2026-12-05T10:00:00Z")
    cluster.w.renewal_problem = problem
    await until(lambda: status() == (pb.NODE_READY, problem), 15, "the problem shown")
    cluster.w.renewal_problem = ""
    await until(lambda: status() == (pb.NODE_READY, ""), 15, "the problem cleared")

    def down(node: pb.Node) -> bool:
        node.status.state = pb.NODE_DOWN
        node.status.message = "heartbeat failure"
        return True

    await cluster.mgr.modify(pb.Node, worker_id, down)
    await until(lambda: status() == (pb.NODE_READY, ""), 15, "the live node Ready again")


async def test_a_scrape_off_the_event_loop_reads_what_the_node_shows(cluster: Cluster) -> None:
    """`NodeMetrics.scrape` (the cluster's families and the encoding in a thread) gives the
    same samples as reading everything on the loop, and follows the store."""
    def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text.decode())
                for s in fam.samples
                # (not what moves between two reads: ages, timings, Raft's indexes)
                if not any(w in s.name for w in ("heartbeat", "duration", "requests",
                                                 "index"))}

    metrics = cluster.m.metrics
    task_id = await cluster.add_task("1")
    await cluster.wait_state(task_id, pb.RUNNING)
    scraped, content_type = await metrics.scrape()
    assert content_type.startswith("text/plain")
    on_loop = samples(metrics.exposition()[0])
    assert samples(scraped) == on_loop
    assert on_loop[("shoal_tasks", (("state", "running"),))] == 1
    await cluster.set_desired(task_id, pb.SHUTDOWN)
    await cluster.wait_state(task_id, pb.SHUTDOWN)
    after = samples((await metrics.scrape())[0])
    assert after[("shoal_tasks", (("state", "running"),))] == 0
    assert after[("shoal_tasks", (("state", "shutdown"),))] == 1


async def test_the_manager_says_it_leads_and_the_worker_does_not(cluster: Cluster) -> None:
    # What shoald's garbage collector watch asks before a long pause (shoal/gcwatch.py).
    assert cluster.m.leads()
    assert not cluster.w.leads()


async def test_the_time_a_heartbeat_waited_for_a_busy_leader_is_measured(
        cluster: Cluster) -> None:
    """A heartbeat's gRPC deadline starts when it reaches the leader, so the timeout the node
    sends along, less what is left of it, is how long the leader's busy event loop kept it
    waiting; the dispatcher adds twice the longest recent wait to every node's grace (the unit
    tests of `down_reason`) and shows it as a metric."""
    dispatcher = cluster.m.manager_role.dispatcher  # type: ignore[union-attr]
    agent = cluster.w.agent
    assert agent is not None and agent.connected_to is not None

    def longest() -> float:
        return dispatcher.queue_waits.longest(time.monotonic(), 60.0)

    assert longest() < 0.5
    beat = agent._heartbeat_request(dispatcher.sessions[cluster.worker_id].session_id, 10.0)
    with grpc.secure_channel(agent.connected_to, agent.config.credentials(),
                             options=agent.config.channel_options) as channel:
        call = cluster_pb2_grpc.DispatcherStub(channel).Heartbeat
        await asyncio.to_thread(call, beat, timeout=10)  # connected, TLS done
        loop = asyncio.get_running_loop()
        answered = loop.run_in_executor(None, lambda: call(beat, timeout=10))
        time.sleep(1.5)  # the leader's event loop is busy: the heartbeat waits
        assert (await answered).period_ns > 0
    assert 1.3 <= longest() < 5.0
    assert 1.3 <= dispatcher.queue_wait() < 5.0
    text = (await cluster.m.metrics.scrape())[0].decode()
    [family] = [f for f in text_string_to_metric_families(text)
                if f.name == "shoal_dispatcher_heartbeat_queue_wait_seconds"]
    assert family.samples[0].value >= 1.3
