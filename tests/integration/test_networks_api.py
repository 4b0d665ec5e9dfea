"""Networks through the CLI and the HTTP API on a real one-manager, one-worker cluster in
one process (real Raft, allocator, orchestrators, dispatcher; fake executors): create, ls,
inspect, rm; bad input refused with nothing written; services on networks get VIPs and
addresses; 200 tasks churn through a /27 without an address handed out twice."""

from __future__ import annotations

import asyncio
import json
import time

from proto import objects_pb2 as pb
from tests.integration.test_service_cli import Served, served  # noqa: F401
from tests.integration.test_worker_fake import until


def network_state(served: Served) -> tuple[list[str], list[str]]:  # noqa: F811
    store = served.cluster.mgr.store
    return (sorted(n.spec.annotations.name for n in store.list(pb.Network)),
            sorted(s.spec.annotations.name for s in store.list(pb.Service)))


async def test_create_inspect_ls_rm(served: Served) -> None:  # noqa: F811
    out = await served.run("network", "create", "-d", "overlay", "--subnet", "10.20.0.0/24",
                           "--gateway", "10.20.0.254", "--attachable", "--label", "team=a",
                           "--opt", "encrypted", "backend")
    assert out.returncode == 0, out.stderr
    net_id = out.stdout.strip()
    await until(lambda: served.cluster.mgr.store.get(pb.Network, net_id).vni > 0,
                what="the network's VNI")
    out = await served.run("network", "inspect", "backend")
    info = json.loads(out.stdout)[0]
    assert info["Id"] == net_id and info["Driver"] == "overlay" and info["Scope"] == "swarm"
    assert info["IPAM"]["Config"] == [{"Subnet": "10.20.0.0/24", "Gateway": "10.20.0.254"}]
    assert info["Attachable"] is True and info["Labels"] == {"team": "a"}
    assert info["Options"]["encrypted"] == ""
    assert int(info["Options"]["com.docker.network.driver.overlay.vxlanid_list"]) >= 4096
    out = await served.run("network", "ls")
    names = [line.split()[1] for line in out.stdout.splitlines()[1:]]
    assert names == ["backend", "ingress"]
    ingress = json.loads((await served.run("network", "inspect", "ingress")).stdout)[0]
    assert ingress["Ingress"] is True
    assert ingress["IPAM"]["Config"][0]["Subnet"] == "10.0.0.0/24"
    out = await served.run("network", "rm", "backend")
    assert out.returncode == 0, out.stderr
    assert network_state(served)[0] == ["ingress"]


async def test_bad_input_is_refused_and_nothing_is_written(served: Served) -> None:  # noqa: F811
    out = await served.run("network", "create", "--subnet", "10.30.0.0/24", "taken")
    assert out.returncode == 0, out.stderr
    before = network_state(served)
    cases = [
        (["--subnet", "10.1.0.0/33", "x"], "invalid subnet '10.1.0.0/33'"),
        (["--subnet", "10.30.0.128/25", "x"], "overlaps network taken (10.30.0.0/24)"),
        (["--subnet", "10.40.0.0/24", "--gateway", "10.41.0.1", "x"],
         "gateway 10.41.0.1 is not a host address of subnet 10.40.0.0/24"),
        (["--opt", "turbo=1", "x"], "unknown overlay option 'turbo'"),
        (["-d", "bridge", "x"], "network driver 'bridge' is not supported"),
        (["taken"], "network with name taken already exists"),
    ]
    for args, error in cases:
        out = await served.run("network", "create", *args)
        assert out.returncode == 1 and error in out.stderr, (args, out.stderr)
    out = await served.run("service", "create", "-d", "--network", "nope",
                           "shoal/busybox:latest")
    assert out.returncode == 1
    assert "network nope not found: create it first" in out.stderr
    out = await served.run("service", "create", "-d", "--network", "ingress",
                           "shoal/busybox:latest")
    assert out.returncode == 1 and "can't be attached to the ingress network" in out.stderr
    assert network_state(served) == before


async def test_services_get_vips_and_rm_of_a_used_network_names_them(
        served: Served) -> None:  # noqa: F811
    assert (await served.run("network", "create", "--subnet", "10.50.0.0/24", "app")
            ).returncode == 0
    out = await served.run("service", "create", "-d", "--name", "api", "--replicas", "2",
                           "--network", "name=app,alias=backend", "shoal/busybox:latest")
    assert out.returncode == 0, out.stderr
    await until(lambda: len(_running(served)) == 2, what="two running tasks")
    svc = json.loads((await served.run("service", "inspect", "api")).stdout)[0]
    vips = svc["Endpoint"]["VirtualIPs"]
    assert [v["Addr"] for v in vips] == ["10.50.0.2/24"]
    assert svc["Spec"]["TaskTemplate"]["Networks"][0]["Aliases"] == ["backend"]
    addrs = sorted(t.networks[0].addresses[0] for t in _running(served))
    assert addrs == ["10.50.0.3/24", "10.50.0.4/24"]
    out = await served.run("network", "rm", "app")
    assert out.returncode == 1 and "in use by service(s) api" in out.stderr
    assert (await served.run("service", "rm", "api")).returncode == 0
    await until(lambda: not served.tasks(), 20.0, what="the service's tasks to go")
    assert (await served.run("network", "rm", "app")).returncode == 0


def _running(served: Served) -> list[pb.Task]:  # noqa: F811
    return [t for t in served.tasks() if t.status.state == pb.RUNNING]


async def test_200_tasks_churn_through_a_27_without_an_address_given_twice(
        served: Served) -> None:  # noqa: F811
    assert (await served.run("network", "create", "--subnet", "10.60.0.0/27", "tiny")
            ).returncode == 0
    out = await served.run("service", "create", "-d", "--name", "churn", "--replicas", "20",
                           "--network", "tiny",
                           "--container-label", "shoal.fake.run_for=0.05",
                           "shoal/busybox:latest")
    assert out.returncode == 0, out.stderr
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    while len(seen) < 200:
        assert time.monotonic() < deadline, f"only {len(seen)} tasks in 120 s"
        tasks = served.tasks()
        holding = [t.networks[0].addresses[0] for t in tasks
                   if t.networks and t.status.state < pb.COMPLETE]
        assert len(holding) == len(set(holding)), sorted(holding)
        assert all(t.status.state != pb.NEW or time.monotonic() - t.meta.created_at_ns / 1e9
                   < 10 for t in tasks), "a task waited 10 s for an address"
        seen |= {t.id for t in tasks if t.networks}
        await asyncio.sleep(0.05)
