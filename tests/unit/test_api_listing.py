"""The list endpoints' caches (shoal/api/listing.py): what `GET /services` and `GET /tasks`
send is byte for byte `json.dumps` of the converters' output, and follows every change of a
service or of one of its tasks (status, a new task, a removed one, a scaled service)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.ca.authority import RootCA
from proto import objects_pb2 as pb
from proto import store_pb2
from shoal.api import convert
from shoal.api import service_json as sjson
from shoal.api.server import make_app
from shoal.api.status import service_status
from tests.unit.test_service_control import Api, FakeNode, task


@pytest.fixture
async def lists() -> AsyncIterator[Api]:
    node = FakeNode()
    client = TestClient(TestServer(make_app(node)))  # type: ignore[arg-type]
    await client.start_server()
    yield Api(client, node.mgr)
    await client.close()


async def raw(api: Api, path: str, **params: str) -> bytes:
    resp = await api.client.get("/v1.44" + path, params=params)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    return await resp.read()


def expected_services(api: Api, status: bool) -> bytes:
    view = api.mgr.store.view()
    services = sorted(view.list(pb.Service), key=lambda s: s.spec.annotations.name)
    return json.dumps([sjson.service_json(
        s, status=service_status(s, view.tasks_of_service(s.id)) if status else None)
        for s in services]).encode()


def expected_tasks(api: Api, svc: pb.Service, job: bool) -> bytes:
    tasks = sorted(api.mgr.store.view().tasks_of_service(svc.id),
                   key=lambda t: (t.meta.created_at_ns, t.id))
    return json.dumps([sjson.task_json(t, job=job) for t in tasks]).encode()


async def status_of(api: Api, name: str) -> dict[str, int]:
    listed = json.loads(await raw(api, "/services", status="true"))
    return next(s["ServiceStatus"] for s in listed if s["Spec"]["Name"] == name)


async def test_bodies_are_the_converters_output(lists: Api) -> None:
    api = lists
    await api.create()
    await api.create(name="job", EndpointSpec={},
                     Mode={"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}})
    web, job = api.service("web"), api.service("job")
    api.mgr.put(task("a", web, 1, "n1", pb.RUNNING), task("b", web, 2, "n1", pb.STARTING),
                task("e", job, 1, "n1", pb.COMPLETE, desired=pb.COMPLETE))
    for _ in range(2):  # once converted, once from the caches
        assert await raw(api, "/services") == expected_services(api, status=False)
        assert await raw(api, "/services", status="1") == expected_services(api, status=True)
        assert await raw(api, "/tasks", filters=json.dumps({"service": {"web": True}})) == \
            expected_tasks(api, web, job=False)
        assert await raw(api, "/tasks", filters=json.dumps({"service": ["job"]})) == \
            expected_tasks(api, job, job=True)


async def test_status_follows_task_and_service_changes(lists: Api) -> None:
    api = lists
    await api.create()
    web = api.service("web")
    api.mgr.put(task("a", web, 1, "n1", pb.RUNNING), task("b", web, 2, "n1", pb.STARTING))
    assert await status_of(api, "web") == {"RunningTasks": 1, "DesiredTasks": 3,
                                           "CompletedTasks": 0}
    api.mgr.put(task("b", web, 2, "n1", pb.RUNNING))  # a status report
    assert (await status_of(api, "web"))["RunningTasks"] == 2
    api.mgr.put(task("c", web, 3, "n1", pb.RUNNING))  # a new task
    assert (await status_of(api, "web"))["RunningTasks"] == 3
    gone = store_pb2.StoreBatch(timestamp_ns=time.time_ns())
    gone.actions.append(store_pb2.StoreAction(kind=store_pb2.DELETE,
                                              object=store_pb2.StoreObject(task=pb.Task(id="a"))))
    assert api.mgr.store.apply(gone).error is None
    assert (await status_of(api, "web"))["RunningTasks"] == 2
    scaled = api.service("web")
    scaled.spec.replicated.replicas = 5
    await api.mgr.update(scaled)
    listed = json.loads(await raw(api, "/services", status="true"))
    assert listed[0]["Spec"]["Mode"] == {"Replicated": {"Replicas": 5}}
    assert listed[0]["ServiceStatus"]["DesiredTasks"] == 5
    assert await raw(api, "/tasks", filters=json.dumps({"service": {"web": True}})) == \
        expected_tasks(api, api.service("web"), job=False)


async def test_nodes_are_the_converters_output_and_follow_changes(lists: Api) -> None:
    api = lists
    cluster = pb.Cluster(id="c1")
    cluster.root_ca.ca_cert_pem = RootCA.create().cert_pem
    api.mgr.put(cluster, *(pb.Node(id=f"n{i}") for i in range(3)))

    def expected() -> bytes:
        tls = convert.tls_info(api.mgr.cluster())
        return json.dumps([convert.node_json(n, tls)
                           for n in api.mgr.store.view().list(pb.Node)]).encode()
    first = await raw(api, "/nodes")
    assert first == expected() and json.loads(first)
    node = api.mgr.store.list(pb.Node)[0]
    node.spec.annotations.labels["zone"] = "b"
    await api.mgr.update(node)
    changed = await raw(api, "/nodes")
    assert changed == expected() != first
    assert json.loads(changed)[0]["Spec"]["Labels"] == {"zone": "b"}
    filtered = await raw(api, "/nodes", filters=json.dumps({"node.label": ["zone=a"]}))
    assert filtered == b"[]"
