"""The log broker routes a subscription to the nodes that ran the selected tasks and relays
what they publish; non-following subscriptions end when every asked node is done."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from manager.logbroker.broker import LogBroker
from manager.store.memory import MemoryStore, wrap
from proto import cluster_pb2, store_pb2
from proto import objects_pb2 as pb


def store_with(*tasks: pb.Task) -> MemoryStore:
    store = MemoryStore()
    batch = store_pb2.StoreBatch()
    for t in tasks:
        batch.actions.append(store_pb2.StoreAction(kind=store_pb2.PUT, object=wrap(t)))
    store.apply(batch)
    return store


def task(task_id: str, service: str, node: str, state: int = pb.RUNNING) -> pb.Task:
    t = pb.Task(id=task_id, service_id=service, node_id=node)
    t.status.state = state  # type: ignore[assignment]
    return t


def line(task_id: str, text: str) -> cluster_pb2.LogMessage:
    return cluster_pb2.LogMessage(task_id=task_id, service_id="s1", data=text.encode())


async def collect(broker: LogBroker, selector: cluster_pb2.LogSelector,
                  options: cluster_pb2.LogOptions) -> list[bytes]:
    out = []
    async for batch in broker.subscribe(selector, options):
        out.extend(m.data for m in batch)
    return out


async def test_subscription_reaches_only_nodes_with_tasks_and_ends_when_all_are_done() -> None:
    store = store_with(task("t1", "s1", "n1"), task("t2", "s1", "n2", pb.FAILED),
                       task("t3", "s2", "n3"), task("t4", "s1", "", pb.PENDING))
    broker = LogBroker(SimpleNamespace(store=store))  # type: ignore[arg-type]
    queues = {n: broker.agent_connected(n) for n in ("n1", "n2", "n3")}
    reader = asyncio.create_task(collect(broker, cluster_pb2.LogSelector(service_ids=["s1"]),
                                         cluster_pb2.LogOptions(tail=-1)))
    sub1 = await asyncio.wait_for(queues["n1"].get(), 1)
    sub2 = await asyncio.wait_for(queues["n2"].get(), 1)
    assert queues["n3"].empty()  # n3 ran no task of s1
    assert sub1.id == sub2.id and list(sub1.selector.service_ids) == ["s1"]
    broker.publish("n1", cluster_pb2.PublishLogsMessage(
        subscription_id=sub1.id, messages=[line("t1", "hello\n")], close=True))
    assert not reader.done()
    broker.publish("n2", cluster_pb2.PublishLogsMessage(
        subscription_id=sub1.id, messages=[line("t2", "exited task\n")], close=True))
    assert await asyncio.wait_for(reader, 1) == [b"hello\n", b"exited task\n"]
    assert not broker.subs


async def test_following_reaches_nodes_that_get_tasks_later_and_closes_on_exit() -> None:
    store = store_with(task("t1", "s1", "n1"))
    broker = LogBroker(SimpleNamespace(store=store))  # type: ignore[arg-type]
    q1, q2 = broker.agent_connected("n1"), broker.agent_connected("n2")
    seen: list[bytes] = []

    async def follow() -> None:
        async for batch in broker.subscribe(cluster_pb2.LogSelector(service_ids=["s1"]),
                                            cluster_pb2.LogOptions(follow=True)):
            seen.extend(m.data for m in batch)

    reader = asyncio.create_task(follow())
    sub = await asyncio.wait_for(q1.get(), 1)
    store.apply(store_pb2.StoreBatch(actions=[store_pb2.StoreAction(
        kind=store_pb2.PUT, object=wrap(task("t9", "s1", "n2")))]))
    assert (await asyncio.wait_for(q2.get(), 2)).id == sub.id
    broker.publish("n2", cluster_pb2.PublishLogsMessage(subscription_id=sub.id,
                                                        messages=[line("t9", "new\n")]))
    await asyncio.sleep(0.05)
    assert seen == [b"new\n"]
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    closing = await asyncio.wait_for(q1.get(), 1)
    assert closing.close and closing.id == sub.id


async def test_a_node_without_a_session_does_not_block_the_end() -> None:
    store = store_with(task("t1", "s1", "gone"))
    broker = LogBroker(SimpleNamespace(store=store))  # type: ignore[arg-type]
    result = await asyncio.wait_for(
        collect(broker, cluster_pb2.LogSelector(service_ids=["s1"]), cluster_pb2.LogOptions()),
        1)
    assert result == []
