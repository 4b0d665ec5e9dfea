"""Issue 8, item 1 on a lab: the ingress network exists from `swarm init`; a subnet that
overlaps a route of a lab host is refused naming the route; allocations (subnets, VNIs,
VIPs, task addresses) survive a leader change, and the new leader hands out no address
twice."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import TypeVar

import pytest

from shoal import lab as labmod
from shoal import lab_state
from shoal.client import APIError, Client
from shoal.lab import LabState
from tests.system.conftest import wait_until
from tests.system.helpers import leader_host, shoal
from tests.system.overlay import IMAGE, network_id, task_addr, wait_running
from tests.system.svc import running

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]
T = TypeVar("T")


def allocations(client: Client, net: str) -> dict[str, object]:
    network = client.get(f"/networks/{net}")
    web = client.get("/services/web")
    return {"subnet": network["IPAM"]["Config"],
            "vni": network["Options"]["com.docker.network.driver.overlay.vxlanid_list"],
            "vip": web["Endpoint"]["VirtualIPs"]}


@pytest.mark.lab(managers=3, workers=0)
def test_allocations_survive_a_leader_change(lab: LabState) -> None:
    leader = leader_host(lab)
    client = leader.client()
    ingress = client.get("/networks/ingress")
    assert ingress["Ingress"] is True and ingress["IPAM"]["Config"][0]["Subnet"]

    lab_subnet = str(lab_state.LAB_NET)  # every lab host has a route into its lab /24
    out = shoal(leader, "network", "create", "--subnet", lab_subnet, "clash")
    assert out.returncode == 1
    assert "overlaps route" in out.stderr and "dev lab0 on node" in out.stderr, out.stderr

    assert shoal(leader, "network", "create", "--subnet", "10.77.0.0/28", "app"
                 ).returncode == 0
    app = network_id(client, "app")
    out = shoal(leader, "service", "create", "-d", "--name", "web", "--replicas", "4",
                "--network", "app", IMAGE, "sleep", "3600")
    assert out.returncode == 0, out.stderr
    before_tasks = wait_running(client, "web", 4)
    before = allocations(client, "app")
    addrs = {t["ID"]: task_addr(t, app) for t in before_tasks}

    labmod.kill_host(lab.name, leader.name, signal.SIGKILL)
    others = [h for h in lab.hosts if h.name != leader.name]
    new = wait_until(lambda: (h := _leader_among(lab, others)) and h, 60, "a new leader")
    client = new.client()
    # two managers left on a loaded machine may still hold an election or two: a read that
    # meets one gets Docker's 503 "does not have a leader" and is asked again, as a user would
    assert _no_election(lambda: allocations(client, "app")) == before
    now = _no_election(lambda: running(client, "web"))
    assert {t["ID"]: task_addr(t, app) for t in now if t["ID"] in addrs} == {
        i: a for i, a in addrs.items() if i in {t["ID"] for t in now}}

    # The new leader continues from the store: new tasks get addresses no task holds.
    wait_until(lambda: shoal(new, "service", "scale", "-d", "web=8").returncode == 0, 30,
               "scale to 8 accepted", interval=0.5)  # idempotent: asked again after a 503
    tasks = _no_election(lambda: wait_running(client, "web", 8, timeout=120))
    held = [task_addr(t, app) for t in tasks]
    assert len(set(held)) == 8 and json.dumps(before["vip"]).count("10.77.0.") == 1
    vip = before["vip"][0]["Addr"].split("/")[0]  # type: ignore[index]
    assert vip not in held and "10.77.0.1" not in held  # neither the VIP nor the gateway
    out = shoal(new, "network", "create", "other")
    assert out.returncode == 0, out.stderr
    subnets = {n["IPAM"]["Config"][0]["Subnet"] for n in client.get("/networks")}
    assert len(subnets) == 3  # ingress, app, other: all different


def _no_election(read: Callable[[], T]) -> T:
    """`read()`, asked again while the managers answer 503 (an election under way)."""
    def attempt() -> tuple[T] | None:
        try:
            return (read(),)
        except APIError as err:
            if err.status != 503:
                raise
            return None
    return wait_until(attempt, 30, "an answer without an election under way", interval=0.5)[0]


def _leader_among(lab: LabState, hosts: list[labmod.HostState]) -> labmod.HostState | None:
    """The live host that the live managers agree leads."""
    names = {h.name for h in hosts}
    for host in hosts:
        try:
            nodes = host.client(timeout=5).get("/nodes")
        except Exception:  # not answering (yet): ask another
            continue
        for node in nodes:
            name = node["Description"]["Hostname"]
            if node.get("ManagerStatus", {}).get("Leader") and name in names:
                return lab.host(name)
    return None
