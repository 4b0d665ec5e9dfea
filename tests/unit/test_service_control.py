"""Services and tasks through the HTTP API on a store we own: validation (and that a refused
request writes nothing), update / rollback / remove decisions, filters, ServiceStatus."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.controlapi.services import NAME_RE, random_name
from manager.rules.uptodate import needs_new_tasks
from manager.store.memory import MemoryStore, wrap
from proto import objects_pb2 as pb
from proto import store_pb2
from shoal.api.server import make_app
from shoal.metrics.registry import NodeMetrics
from tests.unit.test_convert_service import CLI_SIMPLE


class FakeManager:
    """The store and the write path of Manager, without Raft: a batch applies directly."""

    def __init__(self) -> None:
        self.store = MemoryStore()

    async def write(self, *actions: tuple[int, Any]) -> int:
        batch = store_pb2.StoreBatch(timestamp_ns=time.time_ns())
        for kind, obj in actions:
            batch.actions.append(store_pb2.StoreAction(kind=kind, object=wrap(obj)))  # type: ignore[arg-type]
        result = self.store.apply(batch)
        if result.error:
            raise result.error
        return result.version

    async def update(self, obj: Any) -> int:
        return await self.write((store_pb2.UPDATE, obj))

    def cluster(self) -> pb.Cluster:
        found: pb.Cluster = self.store.list(pb.Cluster)[0]
        return found

    async def modify(self, cls: type, obj_id: str, change: Any) -> bool:
        obj = self.store.get(cls, obj_id)
        if obj is None or not change(obj):
            return False
        await self.update(obj)
        return True

    def put(self, *objs: Any) -> None:
        batch = store_pb2.StoreBatch(timestamp_ns=time.time_ns())
        for obj in objs:
            batch.actions.append(store_pb2.StoreAction(kind=store_pb2.PUT, object=wrap(obj)))
        assert self.store.apply(batch).error is None


class FakeNode:
    state = "active"
    manager_role = "manager"
    locked = False

    def __init__(self) -> None:
        self.mgr = FakeManager()
        self.metrics = NodeMetrics()  # the API counts its requests there

    def manager(self) -> FakeManager:
        return self.mgr


class Api:
    def __init__(self, client: TestClient, mgr: FakeManager) -> None:
        self.client, self.mgr = client, mgr

    async def call(self, method: str, path: str, body: Any = None,
                   **params: Any) -> tuple[int, Any]:
        query = {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in params.items()}
        resp = await self.client.request(method, "/v1.44" + path, json=body, params=query)
        text = await resp.text()
        return resp.status, json.loads(text) if text else None

    async def create(self, **changes: Any) -> str:
        status, out = await self.call("POST", "/services/create", body(**changes))
        assert status == 201, out
        return str(out["ID"])

    def service(self, ref: str) -> pb.Service:
        return next(s for s in self.mgr.store.list(pb.Service)
                    if ref in (s.id, s.spec.annotations.name))


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    node = FakeNode()
    client = TestClient(TestServer(make_app(node)))  # type: ignore[arg-type]
    await client.start_server()
    yield Api(client, node.mgr)
    await client.close()


def body(name: str = "web", replicas: int | None = 3, image: str = "busybox:latest",
         **top: Any) -> dict[str, Any]:
    b = copy.deepcopy(CLI_SIMPLE)
    b["Name"] = name
    b["TaskTemplate"]["ContainerSpec"]["Image"] = image
    b["Mode"] = {"Replicated": {} if replicas is None else {"Replicas": replicas}}
    b.update(top)
    return b


def with_task(b: dict[str, Any], **container: Any) -> dict[str, Any]:
    b["TaskTemplate"]["ContainerSpec"].update(container)
    return b


# ---------------------------------------------------------------- create and validation


async def test_create_inspect_list(api: Api) -> None:
    sid = await api.create()
    status, svc = await api.call("GET", "/services/web", insertDefaults="false")
    assert status == 200 and svc["ID"] == sid
    assert svc["Spec"]["Mode"] == {"Replicated": {"Replicas": 3}}
    assert api.service(sid).spec_version == 1
    for ref in (sid, sid[:6]):
        assert (await api.call("GET", f"/services/{ref}"))[1]["ID"] == sid
    status, listed = await api.call("GET", "/services", status="true")
    assert [s["ID"] for s in listed] == [sid]
    assert listed[0]["ServiceStatus"] == {"RunningTasks": 0, "DesiredTasks": 3,
                                          "CompletedTasks": 0}
    assert "ServiceStatus" not in (await api.call("GET", "/services"))[1][0]


async def test_empty_name_gets_a_random_one(api: Api) -> None:
    sid = await api.create(name="")
    assert NAME_RE.match(api.service(sid).spec.annotations.name)
    assert random_name({"a"}) != "a"


BAD_CREATES = [
    (body(name="-web"), 400, "invalid service name"),
    (body(name="w" * 64), 400, "invalid service name"),
    (body(image=""), 400, "no image"),
    (body(image="BusyBox"), 400, "must be lowercase"),
    (body(replicas=-1), 400, "Replicas -1: must not be negative"),
    (body(TaskTemplate={"ContainerSpec": {"Image": "a"},
                        "Placement": {"Constraints": ["node.role=worker"]}}),
     400, 'invalid constraint "node.role=worker"'),
    (body(TaskTemplate={"ContainerSpec": {"Image": "a"},
                        "Placement": {"Constraints": ["node.colour==red"]}}),
     400, "unknown key"),
    (with_task(body(), Mounts=[{"Type": "nfs", "Target": "/x"}]), 400, "unknown mount type"),
    (with_task(body(), Mounts=[{"Type": "bind", "Source": "rel", "Target": "/x"}]), 400,
     "must be an absolute path on the node"),
    (with_task(body(), Mounts=[{"Type": "volume", "Target": "x"}]), 400,
     "absolute path in the container"),
    (body(TaskTemplate={"ContainerSpec": {"Image": "a"},
                        "RestartPolicy": {"Condition": "always"}}), 400, "restart condition"),
    (body(UpdateConfig={"Order": "random"}), 400, "UpdateConfig.Order"),
    (body(RollbackConfig={"FailureAction": "panic"}), 400, "RollbackConfig.FailureAction"),
    (body(Mode={"Global": {}}, TaskTemplate={"ContainerSpec": {"Image": "a"},
                                             "Placement": {"MaxReplicas": 2}}),
     400, "can't be used with a global service"),
    (body(TaskTemplate={"ContainerSpec": {"Image": "a"},
                        "Resources": {"Reservations": {"MemoryBytes": 1024}}}),
     400, "at least 4MiB"),
    (body(EndpointSpec={"Mode": "dnsrr", "Ports": [{"TargetPort": 80, "PublishedPort": 81}]}),
     400, "needs endpoint mode vip"),
    (with_task(body(), Healthcheck={"Test": ["SHELL", "x"]}), 400, "health check test"),
    (with_task(body(), Env=["=x"]), 400, "invalid environment variable"),
    (body(Extra=1), 400, 'unknown field "Extra"'),
]


@pytest.mark.parametrize("bad, status, message", BAD_CREATES)
async def test_bad_create_is_refused_and_writes_nothing(api: Api, bad: dict[str, Any],
                                                        status: int, message: str) -> None:
    before = api.mgr.store.version
    code, out = await api.call("POST", "/services/create", bad)
    assert code == status and message in out["message"], out
    assert api.mgr.store.version == before and not api.mgr.store.list(pb.Service)


async def test_conflicts_with_existing_services(api: Api) -> None:
    await api.create()
    before = api.mgr.store.version
    code, out = await api.call("POST", "/services/create", body())
    assert code == 409 and "service web already exists" in out["message"]
    code, out = await api.call("POST", "/services/create", body(name="other"))
    assert code == 400 and "port 8080/tcp is already published by service web" in out["message"]
    assert api.mgr.store.version == before


# ---------------------------------------------------------------- update and rollback


async def update(api: Api, ref: str, b: dict[str, Any] | None = None,
                 **params: Any) -> tuple[int, Any]:
    version = api.service(ref).meta.version.index
    return await api.call("POST", f"/services/{ref}/update", b or body(),
                          **({"version": version} | params))


async def test_scaling_does_not_start_an_update(api: Api) -> None:
    sid = await api.create()
    svc = api.service(sid)
    svc.update_status.state = pb.UpdateStatus.COMPLETED
    api.mgr.put(svc)
    assert (await update(api, sid, body(replicas=5))) == (200, {"Warnings": None})
    svc = api.service(sid)
    assert svc.spec.replicated.replicas == 5 and svc.spec_version == 1
    assert svc.has_previous_spec and svc.previous_spec.replicated.replicas == 3
    assert svc.update_status.state == pb.UpdateStatus.UNKNOWN


async def test_image_change_bumps_spec_version(api: Api) -> None:
    sid = await api.create()
    assert (await update(api, "web", body(image="busybox:1.36")))[0] == 200
    svc = api.service(sid)
    assert svc.spec_version == 2 and svc.spec.task.container.image == "busybox:1.36"
    assert svc.previous_spec.task.container.image == "busybox:latest"
    # labels only: no new tasks
    assert (await update(api, sid, body(image="busybox:1.36", Labels={"a": "b"})))[0] == 200
    assert api.service(sid).spec_version == 2


async def test_sending_back_inspect_defaults_is_not_a_change(api: Api) -> None:
    sid = await api.create(replicas=None)
    before = api.service(sid)
    shown = (await api.call("GET", f"/services/{sid}", insertDefaults="true"))[1]
    assert (await update(api, sid, shown["Spec"]))[0] == 200
    after = api.service(sid)
    assert after.spec.task == before.spec.task and after.spec_version == 1
    b = body(replicas=None)  # as created, less the empty "Resources":{"Limits":{},...}
    del b["TaskTemplate"]["Resources"]
    assert (await update(api, sid, b))[0] == 200
    assert api.service(sid).spec_version == 1


async def test_stale_version_is_out_of_sequence(api: Api) -> None:
    sid = await api.create()
    before = api.mgr.store.version
    code, out = await api.call("POST", f"/services/{sid}/update", body(replicas=1),
                               version=api.service(sid).meta.version.index - 1)
    assert code == 500 and "update out of sequence" in out["message"]
    code, out = await api.call("POST", f"/services/{sid}/update", body(replicas=1))
    assert code == 400 and "version=N" in out["message"]
    assert api.mgr.store.version == before


async def test_manual_rollback(api: Api) -> None:
    sid = await api.create()
    code, out = await update(api, sid, body(), rollback="previous")
    assert code == 400 and "no previous spec" in out["message"]
    await update(api, sid, body(image="busybox:1.36"))
    assert (await update(api, sid, body(image="ignored:1"), rollback="previous"))[0] == 200
    svc = api.service(sid)
    assert svc.spec.task.container.image == "busybox:latest"
    assert svc.previous_spec.task.container.image == "busybox:1.36"
    assert svc.spec_version == 3
    assert svc.update_status.state == pb.UpdateStatus.ROLLBACK_STARTED
    assert svc.update_status.message == "manually requested rollback"
    out = (await api.call("GET", f"/services/{sid}"))[1]
    assert out["UpdateStatus"]["State"] == "rollback_started"


@pytest.mark.parametrize("changed, message", [
    (body(name="renamed"), "can't be renamed"),
    (body(Mode={"Global": {}}), "can't change its mode from replicated to global"),
    (body(replicas=-2), "must not be negative"),
])
async def test_bad_updates_write_nothing(api: Api, changed: dict[str, Any],
                                         message: str) -> None:
    sid = await api.create()
    before = api.mgr.store.version
    code, out = await update(api, sid, changed)
    assert code == 400 and message in out["message"]
    assert api.mgr.store.version == before


async def test_job_update_runs_the_job_again(api: Api) -> None:
    sid = await api.create(Mode={"ReplicatedJob": {"MaxConcurrent": 2,
                                                   "TotalCompletions": 4}})
    assert api.service(sid).spec_version == 1
    await update(api, sid, body(Mode={"ReplicatedJob": {"MaxConcurrent": 2,
                                                        "TotalCompletions": 6}}))
    assert api.service(sid).spec_version == 2  # a new run, though only the count changed


def test_needs_new_tasks() -> None:
    a = pb.ServiceSpec()
    a.task.container.image = "x"
    b = pb.ServiceSpec()
    b.CopyFrom(a)
    b.replicated.replicas = 4
    b.annotations.labels["k"] = "v"
    assert not needs_new_tasks(a, b)
    b.endpoint.mode = pb.EndpointSpec.DNSRR
    assert needs_new_tasks(a, b)


# ---------------------------------------------------------------- remove


async def test_remove_marks_pending_delete(api: Api) -> None:
    sid = await api.create()
    api.mgr.put(task("t1", api.service(sid), 1, "n1", pb.RUNNING))
    assert (await api.call("DELETE", "/services/web"))[0] == 200
    svc = api.service(sid)
    assert svc.pending_delete
    assert (await api.call("GET", "/services/web"))[0] == 404
    assert (await api.call("GET", "/services"))[1] == []
    assert len((await api.call("GET", "/tasks"))[1]) == 1  # the reaper removes them later
    assert (await api.call("DELETE", "/services/web"))[0] == 404
    await api.create()  # the name is free again


# ---------------------------------------------------------------- tasks, filters, status


def task(tid: str, svc: pb.Service, slot: int, node: str, state: pb.TaskState.ValueType,
         desired: pb.TaskState.ValueType = pb.RUNNING, old: bool = False,
         labels: dict[str, str] | None = None) -> pb.Task:
    """A task of `svc`, made from its current spec unless `old`."""
    t = pb.Task(id=tid, service_id=svc.id, slot=slot, node_id=node, desired_state=desired,
                spec_version=svc.spec_version - old, spec=svc.spec.task)
    if old:
        t.spec.container.image = "old:1"
    t.annotations.name = f"{svc.spec.annotations.name}.{slot}.{tid}"
    t.annotations.labels.update(labels or {})
    t.status.state = state
    return t


def node(nid: str, host: str) -> pb.Node:
    n = pb.Node(id=nid)
    n.description.hostname = host
    return n


async def tasks(api: Api, **filters: Any) -> list[str]:
    code, out = await api.call("GET", "/tasks", filters=filters)
    assert code == 200, out
    return sorted(t["ID"] for t in out)


async def test_task_filters(api: Api) -> None:
    sid = await api.create()
    other = await api.create(name="db", EndpointSpec={})
    web, db = api.service(sid), api.service(other)
    api.mgr.put(node("n1", "host1"), node("n2", "host2"),
                task("a", web, 1, "n1", pb.RUNNING, labels={"x": "1"}),
                task("b", web, 2, "n2", pb.PENDING),
                task("c", web, 1, "n1", pb.SHUTDOWN, desired=pb.SHUTDOWN, old=True),
                task("d", db, 1, "n2", pb.RUNNING))
    assert await tasks(api) == ["a", "b", "c", "d"]
    assert await tasks(api, service={"web": True}) == ["a", "b", "c"]
    assert await tasks(api, service=[sid[:5], "db"]) == ["a", "b", "c", "d"]  # docker-py form
    assert await tasks(api, node={"host2": True}) == ["b", "d"]
    assert await tasks(api, **{"desired-state": {"running": True}}) == ["a", "b", "d"]
    assert await tasks(api, **{"desired-state": {"shutdown": True}}) == ["c"]
    assert await tasks(api, label={"x=1": True}) == ["a"]
    assert await tasks(api, label={"x=2": True}) == []
    assert await tasks(api, id={"b": True}) == ["b"]
    assert await tasks(api, name={"web.1": True}) == ["a", "c"]
    assert await tasks(api, **{"_up-to-date": {"true": True}, "service": {sid: True}}) == [
        "a", "b"]
    code, out = await api.call("GET", "/tasks", filters={"service": {"nope": True}})
    assert code == 404 and "service nope not found" in out["message"]
    code, out = await api.call("GET", "/tasks", filters={"colour": {"red": True}})
    assert code == 400 and "invalid filter 'colour'" in out["message"]
    code, out = await api.call("GET", "/tasks", filters={"desired-state": {"dancing": True}})
    assert code == 400
    assert (await api.call("GET", "/tasks/a"))[1]["Status"]["State"] == "running"
    assert (await api.call("GET", "/tasks/zzz"))[0] == 404


async def test_service_filters(api: Api) -> None:
    web = await api.create(Labels={"tier": "front"})
    job = await api.create(name="job", EndpointSpec={}, Mode={"GlobalJob": {}})

    async def ids(**filters: Any) -> list[str]:
        return [s["ID"] for s in (await api.call("GET", "/services", filters=filters))[1]]

    assert await ids(name={"we": True}) == [web]
    assert await ids(id={job: True}) == [job]
    assert await ids(label={"tier": True}) == [web]
    assert await ids(label={"tier=back": True}) == []
    assert await ids(mode={"global-job": True}) == [job]
    assert await ids(mode={"replicated": True}) == [web]
    code, out = await api.call("GET", "/services", filters={"colour": {"x": True}})
    assert code == 400 and "invalid filter" in out["message"]


async def test_service_status_counts(api: Api) -> None:
    web = await api.create()
    job = await api.create(name="job", EndpointSpec={},
                           Mode={"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 5}})
    glob = await api.create(name="glob", EndpointSpec={}, Mode={"Global": {}})
    w, j, g = api.service(web), api.service(job), api.service(glob)
    api.mgr.put(task("a", w, 1, "n1", pb.RUNNING), task("b", w, 2, "n1", pb.STARTING),
                task("c", w, 3, "n1", pb.RUNNING, desired=pb.SHUTDOWN),
                task("d", w, 3, "n1", pb.RUNNING, old=True),
                task("e", j, 1, "n1", pb.COMPLETE, desired=pb.COMPLETE),
                task("f", j, 2, "n1", pb.RUNNING, desired=pb.COMPLETE),
                task("x", j, 3, "n1", pb.COMPLETE, desired=pb.COMPLETE, old=True),
                task("g", g, 0, "n1", pb.RUNNING), task("h", g, 0, "n2", pb.PENDING))
    listed = {s["ID"]: s["ServiceStatus"] for s in
              (await api.call("GET", "/services", status="1"))[1]}
    assert listed[web] == {"RunningTasks": 1, "DesiredTasks": 3, "CompletedTasks": 0}
    assert listed[job] == {"RunningTasks": 1, "DesiredTasks": 2, "CompletedTasks": 1}
    assert listed[glob] == {"RunningTasks": 1, "DesiredTasks": 2, "CompletedTasks": 0}
    tasks_json = (await api.call("GET", "/tasks", filters={"service": {"job": True}}))[1]
    assert all(t["JobIteration"] == {"Index": 0} for t in tasks_json)


async def test_distribution_is_a_clear_404(api: Api) -> None:
    code, out = await api.call("GET", "/distribution/library/busybox:latest/json")
    assert code == 404 and "busybox:latest" in out["message"]
