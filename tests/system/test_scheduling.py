"""Issue 3, item 4: constraints, reservations, spread, host ports; a task that can't be
placed stays pending and says why with counts, and is placed by itself once a node fits."""

from __future__ import annotations

from collections import Counter

import pytest

from shoal import lab as labmod
from shoal.lab import LabState
from tests.system.conftest import wait_until
from tests.system.helpers import by_hostname, shoal
from tests.system.svc import node_names, running, tasks

pytestmark = pytest.mark.system
IMAGE = "shoal/busybox:latest"
SLEEP = [IMAGE, "sleep", "3600"]


def create(m1: labmod.HostState, name: str, *flags: str) -> None:
    out = shoal(m1, "service", "create", "-d", "--name", name, *flags, *SLEEP)
    assert out.returncode == 0, out.stderr


def pending_err(client: object, service: str) -> str:
    errs = [t["Status"].get("Err") for t in tasks(client, service)  # type: ignore[arg-type]
            if t["Status"]["State"] == "pending" and t["Status"].get("Err")]
    return errs[0] if errs else ""


def hosts_of(client: object, service: str) -> Counter[str]:
    names = node_names(client)  # type: ignore[arg-type]
    return Counter(names[t["NodeID"]] for t in running(client, service))  # type: ignore[arg-type]


@pytest.mark.lab(managers=1, workers=2)
def test_constraints_and_spread(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    create(m1, "workers", "--replicas", "4", "--constraint", "node.role==worker",
           "--constraint", "node.hostname!=w2")
    wait_until(lambda: hosts_of(client, "workers") == Counter({"w1": 4}), 60, "4 on w1")
    create(m1, "zoned", "--constraint", "node.labels.zone==b")
    err = wait_until(lambda: pending_err(client, "zoned"), 30, "a pending reason")
    assert err == "no suitable node (constraint node.labels.zone==b not met on 3 nodes)", err
    ps = shoal(m1, "service", "ps", "--no-trunc", "zoned")
    assert "constraint node.labels.zone==b not met on 3 nodes" in ps.stdout, ps.stdout
    assert shoal(m1, "node", "update", "--label-add", "zone=b", "w2").returncode == 0
    wait_until(lambda: hosts_of(client, "zoned") == Counter({"w2": 1}), 30,
               "placed on w2 once it got the label")
    create(m1, "os", "--replicas", "2", "--constraint", "node.platform.os==linux",
           "--constraint", "engine.labels.missing!=x")
    wait_until(lambda: sum(hosts_of(client, "os").values()) == 2, 30, "platform constraint")

    for host, rack in (("m1", "a"), ("w1", "a"), ("w2", "b")):
        assert shoal(m1, "node", "update", "--label-add", f"rack={rack}", host).returncode == 0
    create(m1, "spread", "--replicas", "4", "--placement-pref", "spread=node.labels.rack")
    placed = wait_until(lambda: (h := hosts_of(client, "spread")) and sum(h.values()) == 4
                        and h, 60, "4 spread tasks")
    assert placed["w2"] == 2 and placed["m1"] + placed["w1"] == 2, placed


@pytest.mark.lab(managers=1, workers=2)
def test_resources_and_ports_pending_until_a_node_fits(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    memory = by_hostname(client)["w1"]["Description"]["Resources"]["MemoryBytes"]
    big = str(int(memory * 0.6))  # one such task per node
    create(m1, "hog", "--replicas", "3", "--reserve-memory", big)
    wait_until(lambda: sum(hosts_of(client, "hog").values()) == 3, 60, "3 hogs")
    create(m1, "late", "--reserve-memory", big)
    err = wait_until(lambda: pending_err(client, "late"), 30, "a pending reason")
    assert err == "no suitable node (insufficient memory on 3 nodes)", err
    assert shoal(m1, "service", "scale", "-d", "hog=2").returncode == 0
    wait_until(lambda: sum(hosts_of(client, "late").values()) == 1, 60,
               "placed once memory was freed")

    # host-mode ports: one task per node per port; a new node takes the one left over
    create(m1, "ports", "--replicas", "4", "--publish",
           "mode=host,published=8080,target=80")
    err = wait_until(lambda: pending_err(client, "ports"), 60, "a pending reason")
    assert err == "no suitable node (host port 8080/tcp in use on 3 nodes)", err
    wait_until(lambda: sum(hosts_of(client, "ports").values()) == 3, 60, "3 port tasks")
    token = client.get("/swarm")["JoinTokens"]["Worker"]
    w3 = labmod.add_host(lab.name, "w3")
    w3.client().post("/swarm/join", {"RemoteAddrs": [f"{m1.address}:2377"],
                                     "JoinToken": token, "AdvertiseAddr": w3.address})
    wait_until(lambda: hosts_of(client, "ports").get("w3") == 1, 60,
               "the pending task placed on the node that joined")
