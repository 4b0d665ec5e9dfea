"""Issue 3, items 1, 2, 6 and 11 on a lab with a real dockerd: replicated and global
services, jobs, drain/pause, and bad input."""

from __future__ import annotations

import pytest

from shoal import lab as labmod
from shoal.client import APIError
from shoal.lab import LabState
from tests.system.conftest import LabFactory, wait_until
from tests.system.helpers import by_hostname, shoal
from tests.system.svc import (
    containers,
    create,
    node_names,
    running,
    running_slots,
    spec,
    tasks,
)

pytestmark = pytest.mark.system


@pytest.mark.lab(managers=1, workers=2)
def test_replicated_service_spreads_scales_and_drains(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    out = shoal(m1, "service", "create", "--detach", "--name", "web", "--replicas", "6",
                "shoal/busybox:latest", "sleep", "3600")
    assert out.returncode == 0, out.stderr
    sid = out.stdout.strip()
    wait_until(lambda: len(running(client, "web")) == 6, 60, "6 running tasks")
    assert len(containers(lab, sid)) == 6
    names = node_names(client)
    per_node = {}
    for t in running(client, "web"):
        per_node[names[t["NodeID"]]] = per_node.get(names[t["NodeID"]], 0) + 1
    assert per_node == {"m1": 2, "w1": 2, "w2": 2}
    ls = shoal(m1, "service", "ls")
    assert "6/6" in ls.stdout, ls.stdout

    assert shoal(m1, "service", "scale", "--detach", "web=10").returncode == 0
    wait_until(lambda: len(running(client, "web")) == 10, 60, "10 running")
    assert shoal(m1, "service", "scale", "--detach", "web=2").returncode == 0
    wait_until(lambda: sorted(running_slots(client, "web")) == [1, 2] and
               len(containers(lab, sid)) == 2, 60, "slots 1 and 2 left")

    # drain moves w1's tasks away; pause keeps tasks but takes no new ones
    assert shoal(m1, "service", "scale", "--detach", "web=6").returncode == 0
    wait_until(lambda: len(running(client, "web")) == 6, 60, "6 running again")
    assert shoal(m1, "node", "update", "--availability", "drain", "w1").returncode == 0
    wait_until(lambda: len(running(client, "web")) == 6 and
               "w1" not in {names[t["NodeID"]] for t in running(client, "web")},
               60, "w1 drained and 6 running elsewhere")
    assert shoal(m1, "node", "update", "--availability", "active", "w1").returncode == 0
    assert shoal(m1, "node", "update", "--availability", "pause", "w2").returncode == 0
    on_w2 = {t["ID"] for t in running(client, "web") if names[t["NodeID"]] == "w2"}
    assert shoal(m1, "service", "scale", "--detach", "web=9").returncode == 0
    wait_until(lambda: len(running(client, "web")) == 9, 60, "9 running")
    now_on_w2 = {t["ID"] for t in running(client, "web") if names[t["NodeID"]] == "w2"}
    assert now_on_w2 == on_w2  # kept its tasks, got no new one


def test_global_service_and_jobs(lab_factory: LabFactory) -> None:
    lab = lab_factory(1, 2)
    m1 = lab.host("m1")
    client = m1.client()
    assert shoal(m1, "node", "update", "--availability", "drain", "w2").returncode == 0
    create(client, spec("agent", replicas=None) | {"Mode": {"Global": {}}})
    wait_until(lambda: sorted(node_names(client)[t["NodeID"]]
                              for t in running(client, "agent")) == ["m1", "w1"],
               60, "one agent task on m1 and w1, none on the drained w2")
    # a node that joins later gets one
    token = client.get("/swarm")["JoinTokens"]["Worker"]
    late = _add_host(lab)
    late.client().post("/swarm/join", {"RemoteAddrs": [f"{m1.address}:2377"],
                                       "JoinToken": token, "AdvertiseAddr": late.address})
    wait_until(lambda: len(running(client, "agent")) == 3, 60, "agent on the late node")

    # replicated job: 4 completions, at most 2 at a time; never restarted after success
    create(client, spec("batch", ["sh", "-c", "sleep 1"], replicas=None) |
           {"Mode": {"ReplicatedJob": {"MaxConcurrent": 2, "TotalCompletions": 4}}})
    max_seen = 0

    def job_done() -> bool:
        nonlocal max_seen
        ts = tasks(client, "batch")
        max_seen = max(max_seen, sum(t["Status"]["State"] == "running" for t in ts))
        return sum(t["Status"]["State"] == "complete" for t in ts) == 4

    wait_until(job_done, 60, "4 completions", interval=0.2)
    assert max_seen <= 2
    ls = shoal(m1, "service", "ls")
    assert "4/4 completed" in ls.stdout or "(4/4" in ls.stdout, ls.stdout
    before = {t["ID"] for t in tasks(client, "batch")}
    create(client, spec("once", ["true"], replicas=None) | {"Mode": {"GlobalJob": {}}})
    wait_until(lambda: sum(t["Status"]["State"] == "complete"
                           for t in tasks(client, "once")) == 3, 60, "global job everywhere")
    import time
    time.sleep(6)  # longer than the default restart delay: nothing may start again
    assert {t["ID"] for t in tasks(client, "batch")} == before
    assert len(tasks(client, "once")) == 3


def _add_host(lab: LabState) -> labmod.HostState:
    return labmod.add_host(lab.name, "w3")


@pytest.mark.lab(managers=1, workers=1)
def test_bad_service_input_is_refused_and_changes_nothing(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    create(client, spec("taken"))
    bad = {
        "negative replicas": (spec("neg") | {"Mode": {"Replicated": {"Replicas": -1}}}, 400),
        "constraint": (spec("con", Placement={"Constraints": ["node.labels.zone=a"]}), 400),
        "mount": (spec("mnt", Mounts=[{"Type": "nfs", "Source": "x", "Target": "/x"}]), 400),
        "name": (spec("taken"), 409),
        "no image": ({"Name": "img", "TaskTemplate": {"ContainerSpec": {}}}, 400),
    }
    for what, (body, status) in bad.items():
        with pytest.raises(APIError) as err:
            client.post("/services/create", body)
        assert err.value.status == status, (what, err.value.message)
    assert [s["Spec"]["Name"] for s in client.get("/services")] == ["taken"]
    out = shoal(m1, "service", "create", "--constraint", "node.role=manager",
                "shoal/busybox:latest")
    assert out.returncode != 0 and "invalid constraint" in out.stderr
    # an image that does not exist: rejected tasks carrying the engine's message
    create(client, spec("ghost") | {"TaskTemplate": {"ContainerSpec": {
        "Image": "shoal/does-not-exist:1"}}})
    rejected = wait_until(lambda: [t for t in tasks(client, "ghost")
                                   if t["Status"]["State"] == "rejected"], 60, "a rejected task")
    assert "does-not-exist" in rejected[0]["Status"]["Err"], rejected[0]["Status"]
    ps = shoal(m1, "service", "ps", "--no-trunc", "ghost")
    assert "Rejected" in ps.stdout and "does-not-exist" in ps.stdout, ps.stdout
    assert by_hostname(client)["w1"]["Status"]["State"] == "ready"
