"""Limits at the control API: the pure checks (manager/controlapi/limits.py), and through the
HTTP API on a store we own that absurd numbers and oversized specs get a 400 (also for a
body over the HTTP limit) with a message naming the limit, and that nothing is written."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.controlapi import limits
from manager.controlapi.services import new_service, validate_name
from manager.errors import InvalidArgument
from proto import objects_pb2 as pb
from shoal.api import convert
from shoal.api.request import int_param
from shoal.api.server import make_app
from shoal.errors import InvalidRequest
from tests.unit.test_service_control import Api, FakeNode, body, node, with_task

YEAR_NS = limits.MAX_DURATION_NS


def spec(change: Callable[[pb.ServiceSpec], object] = lambda s: None) -> pb.ServiceSpec:
    s = pb.ServiceSpec()
    s.annotations.name = "web"
    s.task.container.image = "busybox:latest"
    s.replicated.replicas = 3
    change(s)
    return s


def test_ordinary_and_boundary_specs_pass() -> None:
    limits.check_service_spec(spec())

    def at_limits(s: pb.ServiceSpec) -> None:
        s.replicated.replicas = limits.MAX_REPLICAS
        s.endpoint.ports.add(target_port=65535, published_port=65535)
        s.task.container.stop_grace_period.ns = YEAR_NS
        s.task.restart.delay.ns = YEAR_NS
        s.update.parallelism = limits.MAX_REPLICAS
        s.task.resources.limits.memory_bytes = limits.MAX_MEMORY_BYTES
        s.task.placement.constraints.extend(["node.role==worker"] * limits.MAX_CONSTRAINTS)
        s.task.container.env.append("K=" + "x" * (limits.MAX_SPEC_BYTES - 4000))
    limits.check_service_spec(spec(at_limits))
    assert spec(at_limits).ByteSize() <= limits.MAX_SPEC_BYTES


def _set_job(s: pb.ServiceSpec, concurrent: int, total: int) -> None:
    s.replicated_job.max_concurrent, s.replicated_job.total_completions = concurrent, total


BAD_SPECS: list[tuple[Callable[[pb.ServiceSpec], object], str]] = [
    (lambda s: setattr(s.replicated, "replicas", 2**63),
     "invalid Replicas 9223372036854775808: the limit is 100000"),
    (lambda s: setattr(s.replicated, "replicas", limits.MAX_REPLICAS + 1), "the limit is 100000"),
    (lambda s: _set_job(s, 2**63, 1), "ReplicatedJob.MaxConcurrent 9223372036854775808"),
    (lambda s: _set_job(s, 1, 2**64 - 1), "ReplicatedJob.TotalCompletions"),
    (lambda s: s.endpoint.ports.add(target_port=70000), "target port 70000: must be between"),
    (lambda s: s.endpoint.ports.add(target_port=80, published_port=65536),
     "published port 65536"),
    (lambda s: setattr(s.task.resources.limits, "nano_cpus", -1), "NanoCPUs -1"),
    (lambda s: setattr(s.task.resources.reservations, "memory_bytes", 2**63 - 1),
     "Resources.Reservations.MemoryBytes"),
    (lambda s: setattr(s.task.container.stop_grace_period, "ns", -1), "StopGracePeriod (ns) -1"),
    (lambda s: setattr(s.task.restart.window, "ns", YEAR_NS + 1), "RestartPolicy.Window"),
    (lambda s: setattr(s.task.container.healthcheck, "interval_ns", 2**62),
     "Healthcheck.Interval"),
    (lambda s: setattr(s.task.container.healthcheck, "retries", -5), "Healthcheck.Retries -5"),
    (lambda s: setattr(s.update, "parallelism", 2**63), "UpdateConfig.Parallelism"),
    (lambda s: setattr(s.rollback, "delay_ns", -1), "RollbackConfig.Delay"),
    (lambda s: setattr(s.task.placement, "max_replicas", 2**63), "Placement.MaxReplicas"),
    (lambda s: s.task.placement.constraints.extend(["node.role==worker"] * 101),
     "too many placement constraints: 101, the limit is 100"),
    (lambda s: s.task.container.mounts.add(type=pb.Mount.TMPFS, target="/t",
                                           tmpfs_mode=0o17777), "tmpfs mode of mount /t"),
    (lambda s: s.task.container.env.extend(["K=" + "x" * 1000] * 200),
     "the spec of service web is too large"),
]


@pytest.mark.parametrize("change, message", BAD_SPECS)
def test_absurd_specs_are_refused_with_the_limit_named(
        change: Callable[[pb.ServiceSpec], object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        limits.check_service_spec(spec(change))
    with pytest.raises(InvalidArgument):  # and the create decision uses the check
        new_service([], spec(change))


def test_size_message_says_what_to_do() -> None:
    big = spec(lambda s: s.task.container.labels.update({f"k{i}": "v" * 1000
                                                         for i in range(200)}))
    with pytest.raises(InvalidArgument) as err:
        limits.check_service_spec(big)
    assert "the limit is 131072 bytes (128 KiB)" in str(err.value)
    assert "out of the spec" in str(err.value)


def test_node_and_cluster_specs() -> None:
    limits.check_node_spec(pb.NodeSpec())
    huge = pb.NodeSpec()
    huge.annotations.labels.update({f"k{i}": "v" * 1000 for i in range(100)})
    with pytest.raises(InvalidArgument, match="spec of node .* is too large"):
        limits.check_node_spec(huge)
    limits.check_cluster_spec(pb.ClusterSpec())  # zeros are the defaults
    for change, message in [
            (lambda c: setattr(c.dispatcher, "heartbeat_period_ns", 1), "HeartbeatPeriod"),
            (lambda c: setattr(c.dispatcher, "heartbeat_period_ns", 2**62), "HeartbeatPeriod"),
            (lambda c: setattr(c.ca_config, "node_cert_expiry_ns", 10 * 10**9),
             "NodeCertExpiry"),
            (lambda c: setattr(c.orchestration, "task_history_retention_limit", 2**62),
             "TaskHistoryRetentionLimit"),
            (lambda c: setattr(c.orchestration, "task_history_retention_limit", -1),
             "TaskHistoryRetentionLimit -1")]:
        c = pb.ClusterSpec()
        change(c)
        with pytest.raises(InvalidArgument, match=message):
            limits.check_cluster_spec(c)


def test_a_long_bad_name_fails_fast() -> None:
    # The old name pattern backtracked exponentially: 25 characters took 0.3 s, 63 for ever.
    start = time.monotonic()
    for bad in ("a" * 62 + "!", "ab-" * 20 + "!", "a_" * 31 + "!"):
        with pytest.raises(InvalidArgument, match="invalid service name"):
            validate_name(bad)
    assert time.monotonic() - start < 0.5


def test_http_integers_out_of_range() -> None:
    with pytest.raises(InvalidRequest, match="cannot unmarshal number 9223372036854775808 into "
                       "TaskHistoryRetentionLimit of type int64"):
        convert.cluster_spec({"Orchestration": {"TaskHistoryRetentionLimit": 2**63}})
    with pytest.raises(InvalidRequest, match="between 0 and"):
        int_param(str(2**64), "version")
    with pytest.raises(InvalidRequest, match="between 0 and"):
        int_param("-1", "version")


# ---------------------------------------------------------------- through the HTTP API


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    fake = FakeNode()
    client = TestClient(TestServer(make_app(fake)))  # type: ignore[arg-type]
    await client.start_server()
    yield Api(client, fake.mgr)
    await client.close()


def _big_env(total: int) -> list[str]:
    return [f"K{i}=" + "x" * 1000 for i in range(total // 1000)]


HTTP_BAD: list[tuple[dict[str, Any], str]] = [
    (body(replicas=2**63), "invalid Replicas 9223372036854775808: the limit is 100000"),
    (body(replicas=2**64), "json: cannot unmarshal number 18446744073709551616 into "
     "ServiceSpec.Mode.Replicated.Replicas of type uint64"),
    (body(replicas=-1), "Replicas -1: must not be negative"),
    (body(Mode={"ReplicatedJob": {"MaxConcurrent": 2**70}}), "ReplicatedJob.MaxConcurrent"),
    (body(EndpointSpec={"Ports": [{"TargetPort": 70000}]}), "TargetPort 70000: must be 0-65535"),
    (body(EndpointSpec={"Ports": [{"TargetPort": 80, "PublishedPort": -1}]}),
     "PublishedPort -1"),
    (body(EndpointSpec={"Ports": [{"PublishedPort": 80}]}), "target (container) port is missing"),
    (with_task(body(), StopGracePeriod=2**63),
     "9223372036854775808 into ServiceSpec.TaskTemplate.ContainerSpec.StopGracePeriod"),
    (with_task(body(), StopGracePeriod=2 * YEAR_NS), "StopGracePeriod (ns)"),
    (with_task(body(), Healthcheck={"Test": ["NONE"], "Retries": 2**31}), "of type int32"),
    (body(TaskTemplate={"ContainerSpec": {"Image": "a"},
                        "Resources": {"Limits": {"MemoryBytes": 2**62}}}),
     "Resources.Limits.MemoryBytes 4611686018427387904: must be between 0 and"),
    (body(UpdateConfig={"Parallelism": 2**64 - 1}), "UpdateConfig.Parallelism"),
    (with_task(body(), Env=_big_env(1024 * 1024)), "the spec of service web is too large"),
    (body(name="a" * 62 + "!"), "invalid service name"),
]


@pytest.mark.parametrize("bad, message", HTTP_BAD)
async def test_absurd_creates_are_a_400_and_write_nothing(api: Api, bad: dict[str, Any],
                                                          message: str) -> None:
    before = api.mgr.store.version
    code, out = await api.call("POST", "/services/create", bad)
    assert code == 400 and message in out["message"], out
    assert api.mgr.store.version == before and not api.mgr.store.list(pb.Service)


async def test_a_16_mb_spec_is_a_clear_400(api: Api) -> None:
    raw = json.dumps(with_task(body(), Env=_big_env(16 * 1000 * 1000))).encode()
    resp = await api.client.post("/v1.44/services/create", data=raw,
                                 headers={"Content-Type": "application/json"})
    out = await resp.json()
    assert resp.status == 400, out
    assert "larger than the API's limit of 4 MiB" in out["message"]
    assert "at most 128 KiB" in out["message"]
    assert not api.mgr.store.list(pb.Service)


async def test_absurd_updates_change_nothing(api: Api) -> None:
    await api.create()
    before, stored = api.mgr.store.version, api.service("web")
    for bad in (body(replicas=2**63), with_task(body(), Env=_big_env(300_000)),
                body(UpdateConfig={"Delay": -1})):
        code, out = await api.call("POST", "/services/web/update", bad,
                                   version=stored.meta.version.index)
        assert code == 400, out
    code, out = await api.call("POST", "/services/web/update", body(), version=2**64)
    assert code == 400 and "invalid version" in out["message"]
    assert api.mgr.store.version == before and api.service("web") == stored


async def test_node_update_with_huge_labels_is_refused(api: Api) -> None:
    api.mgr.put(node("n1", "host1"))
    before = api.mgr.store.version
    labels = {f"k{i}": "v" * 1000 for i in range(100)}
    code, out = await api.call("POST", "/nodes/n1/update", {"Labels": labels,
                                                            "Availability": "active"},
                               version=before)
    assert code == 400 and "spec of node" in out["message"] and "64 KiB" in out["message"]
    assert api.mgr.store.version == before
