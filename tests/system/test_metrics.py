"""Issue 10 item 2: GET /metrics on every node of a lab (a manager and a worker), read with
prometheus_client's own parser. A global service on an encrypted overlay network runs a task
on each node, and the tasks talk, so every family has something true to say: nodes, tasks,
services, Raft, the dispatcher's sessions, the agents' heartbeats, overlay peers and the
WireGuard handshake between the two nodes."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.lab import HostState, LabState
from tests.system.conftest import module_lab, wait_until
from tests.system.helpers import request, shoal
from tests.system.overlay import IMAGE, SERVE, http_get, network_id, task_addr, wait_running

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


lab = module_lab()


def scrape(host: HostState) -> tuple[Samples, set[str]]:
    """The node's samples by (name, sorted labels), and its family names."""
    status, headers, body = request(host, "GET", "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers
    families = list(text_string_to_metric_families(body.decode()))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in families for s in fam.samples}
    return samples, {fam.name for fam in families}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), math.nan)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of `name` whose labels include `labels`."""
    return sum(v for (n, lab), v in samples.items()
               if n == name and set(labels.items()) <= set(lab))


@pytest.fixture(scope="module")
def service(lab: LabState) -> str:
    """A global service on an encrypted overlay, its two tasks having talked both ways."""
    m1 = lab.host("m1")
    client = m1.client()
    out = shoal(m1, "network", "create", "-d", "overlay", "--opt", "encrypted", "metrics")
    assert out.returncode == 0, out.stderr
    out = shoal(m1, "service", "create", "-d", "--name", "web", "--mode", "global",
                "--network", "metrics", IMAGE, *SERVE)
    assert out.returncode == 0, out.stderr
    tasks = wait_running(client, "web", 2)
    net = network_id(client, "metrics")
    for src, dst in ((tasks[0], tasks[1]), (tasks[1], tasks[0])):
        url = f"http://{task_addr(dst, net)}:8080/hostname"
        wait_until(lambda s=src, u=url: http_get(lab, s, u), 60, f"{url} to answer")
    return str(client.get("/services/web")["ID"])


def test_manager_metrics_describe_the_cluster(lab: LabState, service: str) -> None:
    m1, w1 = lab.host("m1"), lab.host("w1")
    s, names = wait_until(lambda: (got := scrape(m1)) and
                          value(got[0], "shoal_service_running_tasks", service="web",
                                service_id=service) == 2 and got, 30,
                          "the manager's metrics to show web's 2 running tasks")
    assert value(s, "shoal_service_desired_tasks", service="web", service_id=service) == 2
    assert value(s, "shoal_tasks", state="running") == 2
    assert total(s, "shoal_nodes", state="ready") == 2
    assert value(s, "shoal_nodes", state="ready", availability="active") == 2
    assert total(s, "shoal_nodes", state="down") == 0
    assert total(s, "shoal_scheduler_unplaceable_tasks") == 0
    # Raft: the only manager leads; it has applied what it committed.
    assert value(s, "shoal_raft_leader") == 1
    assert value(s, "shoal_raft_term") >= 1
    assert value(s, "shoal_raft_commit_index") >= value(s, "shoal_raft_applied_index") > 0
    # Writes and decisions were counted where they happened.
    assert value(s, "shoal_store_write_duration_seconds_count", outcome="committed") > 0
    assert value(s, "shoal_scheduler_decisions_total", decision="assigned") >= 2
    # The leader's dispatcher holds both nodes' sessions, heard from within a period or so.
    assert value(s, "shoal_dispatcher_sessions") == 2
    ages = [v for (n, _), v in s.items() if n == "shoal_dispatcher_heartbeat_age_seconds"]
    assert len(ages) == 2 and all(0 <= a < 15 for a in ages), ages
    assert value(s, "shoal_agent_session_up") == 1
    # The worker serves its own families only: no cluster state, no Raft.
    w, worker_names = scrape(w1)
    assert value(w, "shoal_agent_session_up") == 1
    assert 0 <= value(w, "shoal_agent_heartbeat_age_seconds") < 15
    assert not {"shoal_nodes", "shoal_tasks", "shoal_raft_leader",
                "shoal_dispatcher_sessions"} & worker_names
    assert {"shoal_nodes", "shoal_tasks", "shoal_raft_term"} <= names


def test_every_node_reports_its_overlay_peer_and_tunnel_handshake(lab: LabState,
                                                                   service: str) -> None:
    ids = {n["Description"]["Hostname"]: n["ID"] for n in lab.host("m1").client().get("/nodes")}
    for host, peer in (("m1", "w1"), ("w1", "m1")):
        s, _ = wait_until(lambda h=host: (got := scrape(lab.host(h))) and
                          value(got[0], "shoal_network_tunnel_peers") == 1 and got, 30,
                          f"{host}'s data plane to report its WireGuard peer")
        assert total(s, "shoal_network_peers", network="metrics") == 1, host
        age = value(s, "shoal_network_tunnel_handshake_age_seconds", peer_node_id=ids[peer])
        assert 0 <= age < 180, (host, age)  # the tasks talked: a handshake happened


def test_api_requests_are_counted_by_route_pattern_and_code(lab: LabState,
                                                            service: str) -> None:
    for host in lab.hosts:
        before, _ = scrape(host)
        status, _, _ = request(host, "GET", "/v1.41/services/no-such-service")
        assert status in (404, 503)  # 503 on the worker: not a manager
        after, _ = scrape(host)
        labels = {"method": "GET", "route": "/services/{ref}", "code": str(status)}
        grown = total(after, "shoal_api_requests_total", **labels) - \
            total(before, "shoal_api_requests_total", **labels)
        assert grown == 1, (host.name, grown)
        metrics = {"method": "GET", "route": "/metrics", "code": "200"}
        assert total(after, "shoal_api_requests_total", **metrics) > \
            total(before, "shoal_api_requests_total", **metrics)
        # never a raw path as a label
        assert not [k for k in after if "no-such-service" in str(k)]
        assert value(after, "shoal_api_request_duration_seconds_count", method="GET",
                     route="/metrics") >= 1


def test_metrics_is_never_passed_to_the_engine(lab: LabState) -> None:
    m1 = lab.host("m1")
    assert request(m1, "POST", "/metrics")[0] == 404
    assert request(m1, "GET", "/v1.41/metrics")[0] == 404
