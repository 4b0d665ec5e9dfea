"""Issue 8, items 4 and 5: the routing mesh and load balancing under change.

- A port published in mode ingress answers on every lab host's address, served by tasks on
  any node and spread over them; a port published in mode host answers only on the nodes
  that run a task; a published port another service holds is refused, nothing created.
- A client looping on a service's VIP from another service's task sees no failed connection
  while the service is updated task by task, scaled down, or a node running it drained.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from shoal.client import Client
from shoal.lab import HostState, LabState
from tests.system.conftest import wait_until
from tests.system.helpers import shoal
from tests.system.overlay import IMAGE, SERVE, network_id, task_addr, wait_running
from tests.system.svc import engine, running

pytestmark = [pytest.mark.system, pytest.mark.timeout(420)]

# Run inside a lab host's namespace: one HTTP/1.0 GET /hostname per target, each answer's
# body or the name of the error (ConnectionRefusedError, TimeoutError, ...), as JSON.
_GET = r"""
import json, socket, sys
out = []
for target in json.loads(sys.argv[1]):
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3) as s:
            s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
        out.append(body.strip() if " 200 " in head.split("\r\n")[0] else "HTTP:" + head[:40])
    except OSError as err:
        out.append(type(err).__name__)
print(json.dumps(out))
"""


def get_from(client_host: HostState, targets: list[str]) -> list[str]:
    """GET /hostname from each `addr:port`, connecting from `client_host`'s namespace."""
    result = subprocess.run(["nsenter", f"--net=/run/netns/{client_host.namespace}",
                             sys.executable, "-c", _GET, json.dumps(targets)],
                            capture_output=True, text=True, timeout=60 + 5 * len(targets))
    assert result.returncode == 0, result.stderr
    answers: list[str] = json.loads(result.stdout)
    return answers


def answered(answer: str) -> bool:
    return not answer.endswith("Error") and not answer.startswith("HTTP:")


def hostnames(lab: LabState, tasks: list[dict[str, Any]]) -> dict[str, str]:
    """Each task's container hostname (what GET /hostname answers) → its node ID."""
    out = {}
    for task in tasks:
        cid = task["Status"]["ContainerStatus"]["ContainerID"]
        attrs = engine(lab).containers.get(cid).attrs
        out[attrs["Config"]["Hostname"]] = task["NodeID"]
    return out


def service_names(client: Client) -> set[str]:
    return {s["Spec"]["Name"] for s in client.get("/services")}


@pytest.mark.lab(managers=1, workers=2)
def test_published_ports_answer_on_every_host_and_host_mode_only_where_tasks_run(
        lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    out = shoal(m1, "service", "create", "-d", "--name", "web", "--replicas", "2",
                "--publish", "8080:8080", IMAGE, *SERVE)
    assert out.returncode == 0, out.stderr
    out = shoal(m1, "service", "create", "-d", "--name", "pinned", "--replicas", "2",
                "--publish", "mode=host,published=9090,target=8080", IMAGE, *SERVE)
    assert out.returncode == 0, out.stderr
    web = hostnames(lab, wait_running(client, "web", 2))
    pinned = hostnames(lab, wait_running(client, "pinned", 2))

    # Mode ingress: every host's address answers, from every host (its own address through
    # the output hook, the others' through prerouting), and both tasks serve.
    tries = 8
    targets = [f"{h.address}:8080" for h in lab.hosts for _ in range(tries)]

    def all_answer(client_host: HostState) -> list[str] | None:
        answers = get_from(client_host, targets)
        return answers if all(answered(a) for a in answers) else None

    seen: Counter[str] = Counter()
    for client_host in lab.hosts:
        answers = wait_until(lambda h=client_host: all_answer(h), 60,
                             f"every host's :8080 to answer from {client_host.name}",
                             interval=1.0)
        assert set(answers) <= set(web), (answers, web)
        for i, host in enumerate(lab.hosts):
            # Spread: each host's address reaches both tasks over its tries.
            per_host = set(answers[i * tries:(i + 1) * tries])
            assert per_host == set(web), (client_host.name, host.name, per_host, web)
        seen.update(answers)
    print(f"ingress :8080: {sum(seen.values())} answers, per task {dict(seen)}")
    # Served by tasks on two different nodes, whichever host was asked.
    assert len(set(web.values())) == 2, web

    # Mode host: only the nodes running a task answer, each with its own task; the other
    # refuses. (The scheduler puts the two tasks on two nodes: one port per host.)
    task_on = {node: name for name, node in pinned.items()}  # node ID → its task's hostname
    assert len(task_on) == 2, pinned
    order = sorted(lab.hosts, key=lambda h: h.node_id not in task_on)  # the idle host last

    def only_where_tasks_run(client_host: HostState) -> list[str] | None:
        answers = get_from(client_host, [f"{h.address}:9090" for h in order])
        ok = (answers[:2] == [task_on[h.node_id or ""] for h in order[:2]]
              and not answered(answers[2]))
        return answers if ok else None

    for client_host in lab.hosts:
        answers = wait_until(lambda h=client_host: only_where_tasks_run(h), 60,
                             f":9090 to answer only where pinned runs, from {client_host.name}",
                             interval=1.0)
        print(f"host :9090 from {client_host.name}: "
              + ", ".join(f"{h.name} {a}" for h, a in zip(order, answers, strict=True)))

    # A published port another service holds: refused with a clear error, nothing created.
    before = service_names(client)
    out = shoal(m1, "service", "create", "-d", "--name", "thief", "--publish", "8080:8080",
                IMAGE, *SERVE)
    assert out.returncode != 0
    assert "port 8080" in out.stderr and "already published by service web" in out.stderr, \
        out.stderr
    assert service_names(client) == before
    assert not [t for t in client.get("/tasks") if t["ServiceID"] not in
                {s["ID"] for s in client.get("/services")}]
    print(f"duplicate publish refused: {out.stderr.strip()}")


# A server that quits at once on SIGTERM, as most do (SERVE's httpd is PID 1 and ignores it,
# so it would go on serving for the whole stop grace period and hide any gap).
SERVE_QUIT = ["sh", "-c", "ip -4 -o addr show dev eth0; trap 'exit 0' TERM; "
              "httpd -f -p 8080 -h /etc & wait"]


# A client looping on the VIP: one line per try, `ok <hostname>` or `fail <try>`; 0.02 s
# between tries. timeout(1) bounds a try that hangs (busybox wget has no usable -T here).
def client_loop(vip: str) -> list[str]:
    return ["sh", "-c", "i=0; while true; do i=$((i+1)); "
            f"if out=$(timeout 3 wget -O - http://{vip}:8080/hostname 2>/dev/null); "
            'then echo "ok $out"; else echo "fail $i"; fi; usleep 20000; done']


def client_lines(lab: LabState, task: dict[str, Any]) -> list[str]:
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    logs = engine(lab).containers.get(cid).logs(stdout=True, stderr=True).decode()
    return [line for line in logs.splitlines() if line.startswith(("ok ", "fail "))]


class Phases:
    """Counts the client's tries and failures between calls to `mark`."""

    def __init__(self, lab: LabState, task: dict[str, Any]) -> None:
        self.lab, self.task = lab, task
        self.start = len(client_lines(lab, task))
        self.counts: dict[str, tuple[int, int, set[str]]] = {}

    def mark(self, phase: str) -> tuple[int, int, set[str]]:
        lines = client_lines(self.lab, self.task)
        window = lines[self.start:]
        self.start = len(lines)
        fails = [line for line in window if line.startswith("fail")]
        served = {line.split(" ", 1)[1] for line in window if line.startswith("ok ")}
        self.counts[phase] = (len(window), len(fails), served)
        print(f"{phase}: {len(window)} tries, {len(fails)} failed, "
              f"{len(served)} tasks answered")
        return self.counts[phase]


@pytest.mark.lab(managers=1, workers=1)
def test_vip_client_sees_no_failure_during_update_scale_down_and_drain(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    out = shoal(m1, "network", "create", "-d", "overlay", "app")
    assert out.returncode == 0, out.stderr
    app = network_id(client, "app")
    out = shoal(m1, "service", "create", "-d", "--name", "web", "--replicas", "4",
                "--network", "app", IMAGE, *SERVE_QUIT)
    assert out.returncode == 0, out.stderr
    web = wait_running(client, "web", 4)
    assert len({t["NodeID"] for t in web}) == 2
    vip = client.get("/services/web")["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]
    assert vip not in {task_addr(t, app) for t in web}
    out = shoal(m1, "service", "create", "-d", "--name", "client", "--replicas", "1",
                "--network", "app", IMAGE, *client_loop(vip))
    assert out.returncode == 0, out.stderr
    loop = wait_running(client, "client", 1)[0]
    # The client must be getting answers before anything changes.
    wait_until(lambda: sum(line.startswith("ok") for line in client_lines(lab, loop)) >= 10,
               60, "the client's first answers", interval=0.5)
    phases = Phases(lab, loop)
    wait_until(lambda: len(client_lines(lab, loop)) >= phases.start + 20, 60,
               "20 steady tries", interval=0.5)
    total, fails, served = phases.mark("steady")
    assert fails == 0 and len(served) == 4, phases.counts

    # Rolling update, one task at a time (stop-first: each old task leaves, then its
    # replacement starts); the CLI waits for the update to complete.
    old = {t["ID"] for t in running(client, "web")}
    out = shoal(m1, "service", "update", "--env-add", "X=1", "--update-parallelism", "1",
                "web")
    assert out.returncode == 0, out.stderr
    new = wait_running(client, "web", 4)
    assert not old & {t["ID"] for t in new}
    new_names = set(hostnames(lab, new))
    total, fails, served = phases.mark("rolling update")
    assert total >= 20 and fails == 0, phases.counts
    assert served & new_names, (served, new_names)

    # Scale down 4 → 1.
    out = shoal(m1, "service", "scale", "web=1")
    assert out.returncode == 0, out.stderr
    left = wait_running(client, "web", 1)
    wait_until(lambda: len(client_lines(lab, loop)) >= phases.start + 20, 60,
               "20 tries after the scale-down", interval=0.5)
    total, fails, served = phases.mark("scale down")
    assert total >= 20 and fails == 0, phases.counts
    assert set(hostnames(lab, left)) <= served

    # Drain the node running web's task (not the client's): the task moves to the other
    # node (stop-first: a moment with no task, which the client may see as failures; it is
    # the scale-up to 2 first that must make the drain invisible).
    out = shoal(m1, "service", "scale", "web=2")
    assert out.returncode == 0, out.stderr
    wait_running(client, "web", 2)
    node_of = {h.node_id: h for h in lab.hosts}
    drained = node_of[next(t["NodeID"] for t in running(client, "web")
                           if t["NodeID"] != loop["NodeID"])]
    phases.mark("scale up")
    out = shoal(m1, "node", "update", "--availability", "drain", drained.node_id or "")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: (r := running(client, "web")) and len(r) == 2
               and all(t["NodeID"] != drained.node_id for t in r), 90,
               f"web's tasks off {drained.name}", interval=0.5)
    wait_until(lambda: len(client_lines(lab, loop)) >= phases.start + 20, 60,
               "20 tries after the drain", interval=0.5)
    total, fails, served = phases.mark("drain")
    assert total >= 20 and fails == 0, phases.counts
    assert wait_running(client, "client", 1)[0]["ID"] == loop["ID"]
