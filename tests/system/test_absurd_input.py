"""Issue 7's last fault: absurd numbers and a 16 MB spec sent to real shoald managers get a
400 naming the limit, nothing is stored on any manager, and the cluster goes on working (a
follower forwards nothing either; the node that would have run such a task stays Ready)."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.client import APIError
from shoal.lab import LabState
from tests.system.conftest import wait_until
from tests.system.helpers import nodes, shoal
from tests.system.svc import create, running, spec

pytestmark = [pytest.mark.system, pytest.mark.lab(managers=2, workers=1)]

BIG = 16 * 1024 * 1024


def refused(client: Any, body: dict[str, Any]) -> str:
    with pytest.raises(APIError) as err:
        client.post("/services/create", body)
    assert err.value.status == 400, err.value
    return err.value.message


def state_of(client: Any) -> tuple[list[str], list[str]]:
    services = sorted(s["Spec"]["Name"] for s in client.get("/services"))
    return services, sorted(t["ID"] for t in client.get("/tasks"))


def test_absurd_input_is_refused_and_nothing_is_stored(lab: LabState) -> None:
    m1, m2 = lab.host("m1").client(), lab.host("m2").client()
    create(m1, spec("web", replicas=2))
    wait_until(lambda: len(running(m1, "web")) == 2, 60, "2 web tasks running")
    before = state_of(m1)
    for manager in (m1, m2):  # the leader and a follower
        for replicas in (2**63, 2**64, 9223372036854775808, -1):
            message = refused(manager, spec("absurd", replicas=replicas))
            assert "Replicas" in message, message
        assert "100000" in refused(manager, spec("absurd", replicas=100_001))
        huge = spec("absurd", Env=[f"X={'x' * BIG}"])
        assert "limit" in refused(manager, huge)
        big = spec("absurd", Env=[f"X{i}={'y' * 1024}" for i in range(1024)])  # ~1 MB
        assert "KiB" in refused(manager, big)
        bad_port = spec("absurd", EndpointSpec={"Ports": [{"TargetPort": 70000}]})
        assert "70000" in refused(manager, bad_port)
    out = shoal(lab.host("m2"), "service", "create", "--name", "absurd", "--replicas",
                "9223372036854775808", "shoal/busybox:latest", "sleep", "1")
    assert out.returncode == 1 and "Replicas" in out.stderr, out
    for manager in (m1, m2):
        assert state_of(manager) == before
    assert all(n["Status"]["State"] == "ready" for n in nodes(m1))
    create(m2, spec("after", replicas=1))  # the cluster still works
    wait_until(lambda: len(running(m1, "after")) == 1, 60, "the next service running")
