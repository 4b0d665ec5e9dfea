"""Issue 8, items 2 and 3 (and 4 from inside the overlay): tasks on one overlay network
reach each other across lab hosts by address and by name, over TCP and ICMP; tasks on
another network cannot; each task's first printed line is its overlay address; the
resolver answers the VIP, dnsrr addresses, tasks.<service> and aliases; connections to the
VIP are spread over the tasks."""

from __future__ import annotations

import pytest

from shoal.lab import LabState
from tests.system.conftest import wait_until
from tests.system.helpers import shoal
from tests.system.overlay import (
    IMAGE,
    SERVE,
    exec_in_task,
    first_line,
    http_get,
    network_id,
    task_addr,
    wait_running,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


@pytest.mark.lab(managers=1, workers=2)
def test_tasks_reach_each_other_across_hosts_and_not_across_networks(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    for name in ("app", "other"):
        out = shoal(m1, "network", "create", "-d", "overlay", name)
        assert out.returncode == 0, out.stderr
    app = network_id(client, "app")
    out = shoal(m1, "service", "create", "-d", "--name", "web", "--mode", "global",
                "--network", "name=app,alias=frontend", IMAGE, *SERVE)
    assert out.returncode == 0, out.stderr
    out = shoal(m1, "service", "create", "-d", "--name", "db", "--mode", "global",
                "--endpoint-mode", "dnsrr", "--network", "app", IMAGE, *SERVE)
    assert out.returncode == 0, out.stderr
    out = shoal(m1, "service", "create", "-d", "--name", "stranger", "--replicas", "1",
                "--network", "other", IMAGE, *SERVE)
    assert out.returncode == 0, out.stderr
    web = wait_running(client, "web", 3)
    db = wait_running(client, "db", 3)
    stranger = wait_running(client, "stranger", 1)[0]
    assert len({t["NodeID"] for t in web}) == 3

    # The task's process starts with its interface and address in place.
    for task in web + db:
        addr = task_addr(task, app)
        assert f"inet {addr}/" in first_line(lab, task), (task["ID"], first_line(lab, task))

    # Across hosts, by address: ICMP and TCP.
    source = web[0]
    for target in web[1:] + db:
        addr = task_addr(target, app)
        code, out = exec_in_task(lab, source, "ping", "-c", "1", "-W", "3", addr)
        assert code == 0, f"ping {addr} from {source['NodeID']} to {target['NodeID']}: {out}"
        assert http_get(lab, source, f"http://{addr}:8080/hostname"), addr

    # By name: the VIP, tasks.<service>, dnsrr, the alias.
    svc = client.get("/services/web")
    vip = svc["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]
    code, out = exec_in_task(lab, db[0], "nslookup", "web")
    assert code == 0 and vip in out, out
    code, out = exec_in_task(lab, db[0], "nslookup", "frontend")
    assert code == 0 and vip in out, out
    code, out = exec_in_task(lab, db[0], "nslookup", "tasks.web")
    assert code == 0 and all(task_addr(t, app) in out for t in web), out
    code, out = exec_in_task(lab, web[0], "nslookup", "db")
    assert code == 0 and all(task_addr(t, app) in out for t in db), out

    # Through the VIP, from another host's task: spread over the tasks.
    names = {http_get(lab, db[1], "http://web:8080/hostname") for _ in range(30)}
    names.discard(None)
    assert len(names) >= 2, names

    # Another network's task can't reach this network's tasks, nor resolve its names.
    code, _ = exec_in_task(lab, stranger, "ping", "-c", "1", "-W", "2", task_addr(web[0], app))
    assert code != 0
    code, _ = exec_in_task(lab, stranger, "nslookup", "web")
    assert code != 0
    assert http_get(lab, stranger, f"http://{task_addr(web[1], app)}:8080/hostname") is None

    # network doctor: every node on the network checked and nothing wrong.
    out = wait_until(lambda: (r := shoal(m1, "network", "doctor", "app")).returncode == 0 and r,
                     40, "network doctor to find nothing wrong")
    assert out.stdout.count("\nnode ") == 3, out.stdout
