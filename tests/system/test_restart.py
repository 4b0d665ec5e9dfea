"""Issue 2, item 7: stop every shoald of a lab and start them again; nothing is lost."""

from __future__ import annotations

import pytest

from shoal import lab as labmod
from shoal.lab import LabState
from tests.system.conftest import wait_until
from tests.system.helpers import by_hostname, shoal

pytestmark = pytest.mark.system


def _summary(lab: LabState) -> dict:
    client = lab.host("m1").client()
    swarm = client.get("/swarm")
    nodes = {name: (n["ID"], n["Spec"]["Role"], n["Spec"]["Labels"], n["Spec"]["Availability"])
             for name, n in by_hostname(client).items()}
    return {"cluster": swarm["ID"], "tokens": swarm["JoinTokens"],
            "ca": swarm["TLSInfo"]["TrustRoot"], "nodes": nodes}


@pytest.mark.lab(managers=3, workers=2)
def test_full_restart_keeps_everything(lab: LabState) -> None:
    m1 = lab.host("m1")
    assert shoal(m1, "node", "update", "--label-add", "zone=a", "w1").returncode == 0
    assert shoal(m1, "node", "update", "--availability", "drain", "w2").returncode == 0
    assert shoal(m1, "swarm", "join-token", "--rotate", "-q", "worker").returncode == 0
    before = _summary(lab)
    for host in lab.hosts:
        labmod.stop_host(lab.name, host.name)
    for host in lab.hosts:
        labmod.start_host(lab.name, host.name)
    wait_until(lambda: _all_ready(lab), 60, "all nodes ready with one leader after restart")
    after = _summary(lab)
    assert after == before
    assert after["nodes"]["w1"][2] == {"zone": "a"}
    assert after["nodes"]["w2"][3] == "drain"


def _all_ready(lab: LabState) -> bool:
    try:
        nodes = by_hostname(lab.host("m1").client(timeout=5))
    except Exception:
        return False
    leaders = [n for n in nodes.values() if n.get("ManagerStatus", {}).get("Leader")]
    return len(leaders) == 1 and all(n["Status"]["State"] == "ready" for n in nodes.values())
