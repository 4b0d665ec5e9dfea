"""Issue 3, items 3 and 5: exits, restart policy, health checks, node failure."""

from __future__ import annotations

import time

import pytest

from shoal import lab as labmod
from shoal.lab import LabState
from tests.system.conftest import wait_until
from tests.system.helpers import shoal
from tests.system.svc import containers, engine, node_names, running, tasks

pytestmark = pytest.mark.system
IMAGE = "shoal/busybox:latest"


def _ts(text: str) -> float:
    from shoal.cli.service_show import parse_time

    value = parse_time(text)
    assert value is not None, text
    return value


@pytest.mark.lab(managers=1, workers=1)
def test_exit_codes_and_restart_policy(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    out = shoal(m1, "service", "create", "-d", "--name", "crash", "--restart-condition",
                "on-failure", "--restart-delay", "2s", "--restart-max-attempts", "2", IMAGE,
                "sh", "-c", "exit 3")
    assert out.returncode == 0, out.stderr
    failed = wait_until(lambda: (f := [t for t in tasks(client, "crash")
                                       if t["Status"]["State"] == "failed"]) and len(f) == 3
                        and f, 60, "three failed attempts (1 + 2 restarts)")
    assert all(t["Status"]["ContainerStatus"]["ExitCode"] == 3 for t in failed)
    assert all("non-zero exit (3)" in t["Status"]["Err"] for t in failed)
    ordered = sorted(failed, key=lambda t: _ts(t["CreatedAt"]))
    for before, after in zip(ordered, ordered[1:], strict=False):
        gap = _ts(after["CreatedAt"]) - _ts(before["Status"]["Timestamp"])
        assert gap >= 1.9, f"restart came {gap:.2f} s after the failure; delay is 2 s"
    time.sleep(5)  # past another delay: max attempts reached, nothing more starts
    assert len(tasks(client, "crash")) == 3
    ps = shoal(m1, "service", "ps", "--no-trunc", "crash")
    assert ps.stdout.count("non-zero exit (3)") == 3 and "Failed" in ps.stdout, ps.stdout

    # condition none: a completed task stays completed; on-failure: success isn't restarted
    for name, condition in (("once", "none"), ("fine", "on-failure")):
        assert shoal(m1, "service", "create", "-d", "--name", name, "--restart-condition",
                     condition, "--restart-delay", "1s", IMAGE, "true").returncode == 0
    for name in ("once", "fine"):
        wait_until(lambda n=name: [t["Status"]["State"] for t in tasks(client, n)] ==
                   ["complete"], 60, f"{name} complete")
    time.sleep(3)
    assert [len(tasks(client, n)) for n in ("once", "fine")] == [1, 1]

    # condition any within a window: restarts stop once max attempts fall in the window
    assert shoal(m1, "service", "create", "-d", "--name", "windowed", "--restart-condition",
                 "any", "--restart-delay", "1s", "--restart-max-attempts", "1",
                 "--restart-window", "1h", IMAGE, "true").returncode == 0
    wait_until(lambda: len([t for t in tasks(client, "windowed")
                            if t["Status"]["State"] == "complete"]) == 2, 60, "2 runs")
    time.sleep(3)
    assert len(tasks(client, "windowed")) == 2


@pytest.mark.lab(managers=1, workers=1)
def test_unhealthy_container_is_replaced(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    script = "touch /tmp/ok; sleep 3; rm /tmp/ok; sleep 3600"
    out = shoal(m1, "service", "create", "-d", "--name", "sick", "--health-cmd",
                "test -f /tmp/ok", "--health-interval", "1s", "--health-retries", "1",
                "--restart-delay", "1s", IMAGE, "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    first = wait_until(lambda: running(client, "sick"), 60, "healthy and running")[0]
    wait_until(lambda: any(t["ID"] == first["ID"] and t["Status"]["State"] == "failed"
                           for t in tasks(client, "sick")), 60, "the unhealthy task failed")
    failed = next(t for t in tasks(client, "sick") if t["ID"] == first["ID"])
    assert "unhealthy" in failed["Status"]["Err"]
    wait_until(lambda: [t for t in running(client, "sick") if t["ID"] != first["ID"]], 60,
               "a replacement running")


@pytest.mark.lab(managers=1, workers=2)
def test_node_failure_replaces_its_tasks(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    assert shoal(m1, "node", "update", "--availability", "drain", "m1").returncode == 0
    out = shoal(m1, "service", "create", "-d", "--name", "web", "--replicas", "4", IMAGE,
                "sleep", "3600")
    sid = out.stdout.strip()
    wait_until(lambda: len(running(client, "web")) == 4, 60, "4 running")
    names = node_names(client)
    w1_id = next(i for i, n in names.items() if n == "w1")
    on_w1 = [t for t in running(client, "web") if t["NodeID"] == w1_id]
    assert on_w1
    labmod.kill_host(lab.name, "w1")
    docker = engine(lab)
    for c in docker.api.containers(filters={"label": f"com.docker.swarm.node.id={w1_id}"}):
        docker.api.remove_container(c["Id"], force=True)
    killed = time.monotonic()
    wait_until(lambda: len(running(client, "web")) == 4 and
               all(t["NodeID"] != w1_id for t in running(client, "web")), 60,
               "4 running again, none on w1")
    print(f"replacements running {time.monotonic() - killed:.1f} s after the kill")
    assert len(containers(lab, sid)) == 4
