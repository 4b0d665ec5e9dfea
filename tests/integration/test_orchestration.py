"""Orchestrators on a real one-manager, one-worker cluster in one process (real Raft and
gRPC, fake executors): a service written to the store becomes running tasks through the
allocator, scheduler, dispatcher and agents; scaling, restarts and a failed rolling update
rolled back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from manager.orchestrator.tasks import SECOND
from proto import objects_pb2 as pb
from proto import store_pb2
from tests.integration.test_worker_fake import Cluster, until

US = pb.UpdateStatus


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        await c.up()
        yield c
    finally:
        await c.down()


def web(replicas: int, **labels: str) -> pb.Service:
    svc = pb.Service(id="svc-web", spec_version=1)
    svc.spec.annotations.name = "web"
    svc.spec.replicated.replicas = replicas
    svc.spec.task.container.image = "shoal/busybox:latest"
    svc.spec.task.container.labels.update({f"shoal.fake.{k}": v for k, v in labels.items()})
    return svc


def tasks(cluster: Cluster) -> list[pb.Task]:
    return [t for t in cluster.mgr.store.list(pb.Task) if t.service_id == "svc-web"]


def running_slots(cluster: Cluster) -> list[tuple[int, str]]:
    return sorted((t.slot, t.spec.container.labels.get("v", "")) for t in tasks(cluster)
                  if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING)


async def change_service(cluster: Cluster, edit: Callable[[pb.Service], None]) -> None:
    def change(s: pb.Service) -> bool:
        s.previous_spec.CopyFrom(s.spec)
        s.has_previous_spec = True
        edit(s)
        s.spec_version += 1
        s.ClearField("update_status")
        return True
    await cluster.mgr.modify(pb.Service, "svc-web", change)


async def test_service_converges_and_scales_down_from_the_highest_slot(cluster: Cluster) -> None:
    await cluster.mgr.write((store_pb2.CREATE, web(4)))
    await until(lambda: len(running_slots(cluster)) == 4, what="4 running tasks")
    assert [s for s, _ in running_slots(cluster)] == [1, 2, 3, 4]
    assert len({t.node_id for t in tasks(cluster)}) == 2  # spread over both nodes
    await cluster.mgr.modify(pb.Service, "svc-web",
                             lambda s: setattr(s.spec.replicated, "replicas", 2) or True)
    await until(lambda: sorted(t.slot for t in tasks(cluster)) == [1, 2],
                what="slots 3 and 4 stopped and reaped")
    assert [s for s, _ in running_slots(cluster)] == [1, 2]


async def test_restart_policy_delay_and_max_attempts(cluster: Cluster) -> None:
    svc = web(1, run_for="0.1", exit="3")
    svc.spec.task.restart.delay.ns = SECOND // 2
    svc.spec.task.restart.max_attempts = 2
    await cluster.mgr.write((store_pb2.CREATE, svc))
    await until(lambda: len(tasks(cluster)) == 3 and all(
        t.status.state == pb.FAILED for t in tasks(cluster)), what="three failed attempts")
    created = sorted(t.meta.created_at_ns for t in tasks(cluster))
    assert all(b - a >= SECOND // 2 for a, b in zip(created, created[1:], strict=False))


async def test_failed_start_first_update_rolls_back(cluster: Cluster) -> None:
    svc = web(2)
    svc.spec.task.container.labels["v"] = "1"
    svc.spec.update.order = pb.UpdateConfig.START_FIRST
    svc.spec.update.failure_action = pb.UpdateConfig.ROLLBACK
    svc.spec.update.monitor.ns = SECOND
    svc.spec.rollback.parallelism = 0
    svc.spec.rollback.monitor.ns = SECOND // 2
    await cluster.mgr.write((store_pb2.CREATE, svc))
    await until(lambda: running_slots(cluster) == [(1, "1"), (2, "1")], what="2 running")

    def bad_version(s: pb.Service) -> None:
        s.spec.task.container.labels.update({"v": "2", "shoal.fake.fail": "start"})
    await change_service(cluster, bad_version)
    low = [2]

    def state() -> int:
        low.append(len(running_slots(cluster)))
        return int(cluster.mgr.store.get(pb.Service, "svc-web").update_status.state)
    await until(lambda: state() == US.ROLLBACK_COMPLETED, timeout=30, what="rolled back")
    status = cluster.mgr.store.get(pb.Service, "svc-web").update_status
    assert status.message.startswith("rollback completed (update rolled back")
    assert running_slots(cluster) == [(1, "1"), (2, "1")]
    assert min(low) == 2  # start-first: never fewer running than the replicas
    failed = [t for t in tasks(cluster) if t.spec.container.labels.get("v") == "2"]
    assert failed and all(t.status.state == pb.FAILED for t in failed)
