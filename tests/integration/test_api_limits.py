"""Limits through the real HTTP API of a one-manager, one-worker cluster in one process (real
Raft, gRPC sessions and dispatcher; fake executors): absurd numbers from the CLIs and
oversized bodies get a clear error and nothing is stored; a node running many tasks whose
specs are just under the size limit keeps its session (the assignment message fits)."""

from __future__ import annotations

import copy
import json
from typing import Any

import aiohttp

from proto import objects_pb2 as pb
from tests.integration.test_service_cli import Served, served  # noqa: F401 (fixture)
from tests.integration.test_worker_fake import until
from tests.unit.test_convert_service import CLI_SIMPLE


async def post(api: Served, path: str, raw: bytes) -> tuple[int, Any]:
    conn = aiohttp.UnixConnector(path=api.sock)
    async with aiohttp.ClientSession(connector=conn) as session:
        async with session.post(f"http://shoal/v1.44{path}", data=raw,
                                headers={"Content-Type": "application/json"}) as resp:
            return resp.status, await resp.json()


def spec_with_env(name: str, env_bytes: int, replicas: int = 1) -> dict[str, Any]:
    b = copy.deepcopy(CLI_SIMPLE)
    b["Name"] = name
    b["Mode"] = {"Replicated": {"Replicas": replicas}}
    b.pop("EndpointSpec", None)
    container = b["TaskTemplate"]["ContainerSpec"]
    container["Image"] = "shoal/busybox:latest"
    container["Env"] = [f"K{i}=" + "x" * 1000 for i in range(env_bytes // 1000)]
    return b


def stored(api: Served) -> tuple[dict[str, int], list[pb.Service]]:
    """What a request could have written: every service, task and network with its version
    (nodes' own status writes, e.g. a heartbeat that came late on a loaded machine, are not
    the request's)."""
    store = api.cluster.mgr.store
    versions = {o.id: o.meta.version.index for cls in (pb.Service, pb.Task, pb.Network)
                for o in store.list(cls)}
    return versions, list(store.list(pb.Service))


async def test_absurd_replicas_from_the_clis(served: Served) -> None:  # noqa: F811
    before = stored(served)
    out = await served.run("service", "create", "-d", "--replicas", "9223372036854775808",
                           "shoal/busybox:latest")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "Error response from daemon: invalid Replicas 9223372036854775808: the limit is "
        "100000; Shoal runs at most that many tasks per service; split the work over several "
        "services")
    out = await served.run("service", "create", "-d", "--replicas", str(2**64),
                           "shoal/busybox:latest")
    assert out.returncode == 1
    assert "cannot unmarshal number 18446744073709551616" in out.stderr
    out = await served.run("service", "create", "-d", "--replicas", "9223372036854775808",
                           "shoal/busybox:latest", docker=True)
    assert out.returncode == 1
    assert "invalid Replicas 9223372036854775808: the limit is 100000" in out.stderr
    assert stored(served) == before and before[1] == []


async def test_oversized_specs_are_refused_and_not_stored(served: Served) -> None:  # noqa: F811
    before = stored(served)
    code, out = await post(served, "/services/create",
                           json.dumps(spec_with_env("big", 16_000_000)).encode())
    assert code == 400 and "larger than the API's limit of 4 MiB" in out["message"]
    code, out = await post(served, "/services/create",
                           json.dumps(spec_with_env("big", 1_000_000)).encode())
    assert code == 400 and "the spec of service big is too large" in out["message"]
    code, out = await post(served, "/services/create", json.dumps(spec_with_env(
        "ports", 0) | {"EndpointSpec": {"Ports": [{"TargetPort": 70000}]}}).encode())
    assert code == 400 and "TargetPort 70000" in out["message"]
    assert stored(served) == before


async def test_many_max_size_tasks_on_one_node_keep_its_session(
        served: Served) -> None:  # noqa: F811
    # 40 tasks of ~125 KiB: one ~5 MiB assignment message, over gRPC's default 4 MiB limit.
    body = spec_with_env("wide", 125_000, replicas=40)
    body["TaskTemplate"]["Placement"] = {"Constraints": ["node.role==worker"]}
    code, out = await post(served, "/services/create", json.dumps(body).encode())
    assert code == 201, out
    cluster = served.cluster

    def running() -> int:
        return sum(t.status.state == pb.RUNNING and t.node_id == cluster.worker_id
                   for t in served.tasks())
    await until(lambda: running() == 40, 60, "40 tasks running on the worker")
    assert cluster.node_ready(cluster.worker_id)
