"""Allocator and scheduler on a real one-manager, one-worker cluster in one process (real
Raft and gRPC, fake executors): tasks written NEW, as the orchestrator writes them, are
given their endpoint, placed, and run; one that fits nowhere waits with the reason and is
placed by itself once a node fits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from manager.identity import new_id
from proto import objects_pb2 as pb
from proto import store_pb2
from tests.integration.test_worker_fake import Cluster, until


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        await c.up()
        yield c
    finally:
        await c.down()


def new_task(slot: int, *constraints: str, memory: int = 0) -> pb.Task:
    task = pb.Task(id=new_id(), service_id="svc", service_name="web", slot=slot,
                   desired_state=pb.RUNNING)
    task.annotations.name = f"web.{slot}.{task.id}"
    task.spec.container.image = "shoal/busybox:latest"
    task.spec.placement.constraints.extend(constraints)
    task.spec.resources.reservations.memory_bytes = memory
    return task


async def test_new_tasks_are_allocated_placed_and_run(cluster: Cluster) -> None:
    service = pb.Service(id="svc")
    service.spec.annotations.name = "web"
    service.spec.endpoint.ports.add(target_port=80)  # ingress, no number: one is allocated
    tasks = [new_task(i, "node.role==worker") for i in range(1, 5)]
    await cluster.mgr.write((store_pb2.CREATE, service),
                            *[(store_pb2.CREATE, t) for t in tasks])
    for t in tasks:
        running = await cluster.wait_state(t.id, pb.RUNNING)
        assert running.node_id == cluster.worker_id
        assert running.endpoint.ports[0].published_port == 30000
    svc = cluster.mgr.store.get(pb.Service, "svc")
    assert svc.endpoint.ports[0].published_port == 30000


async def test_unplaceable_task_waits_with_reason_then_runs_when_a_node_fits(
        cluster: Cluster) -> None:
    await cluster.mgr.write((store_pb2.CREATE, pb.Service(id="svc")))
    zoned = new_task(1, "node.labels.zone==b")
    huge = new_task(2, memory=1 << 60)
    await cluster.mgr.write((store_pb2.CREATE, zoned), (store_pb2.CREATE, huge))
    await until(lambda: cluster.task(zoned.id).status.err and cluster.task(huge.id).status.err,
                what="both tasks to say why they wait")
    assert cluster.task(zoned.id).status.state == pb.PENDING
    assert cluster.task(zoned.id).status.err == \
        "no suitable node (constraint node.labels.zone==b not met on 2 nodes)"
    assert cluster.task(huge.id).status.err == "no suitable node (insufficient memory on 2 nodes)"

    def label(node: pb.Node) -> bool:
        node.spec.annotations.labels["zone"] = "b"
        return True

    await cluster.mgr.modify(pb.Node, cluster.worker_id, label)
    running = await cluster.wait_state(zoned.id, pb.RUNNING)
    assert running.node_id == cluster.worker_id and running.status.err == ""
    assert cluster.task(huge.id).status.state == pb.PENDING
