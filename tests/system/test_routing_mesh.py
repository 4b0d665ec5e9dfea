"""Issue 8, items 4 and 5: the routing mesh and load balancing under change.

- A port published in mode ingress answers on every lab host's address, served by tasks on
  any node and spread over them; a port published in mode host answers only on the nodes
  that run a task; a published port another service holds is refused, nothing created.
- A client looping on a service's VIP from another service's task sees no failed connection
  while the service is updated task by task, scaled down, scaled up, or a node running it
  drained; nor does a client through the routing mesh.
- A slow-starting task with a health check joins the backends only once healthy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
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

    def all_answer(client_host: HostState) -> list[str]:
        """[] until every host's address answers and reaches both tasks over its tries (a
        round where the random pick lands on one task 8 times, 1 in 128, or where a host
        does not have the second task yet, is tried again); never a wrong answer."""
        answers = get_from(client_host, targets)
        if not all(answered(a) for a in answers):
            return []
        assert set(answers) <= set(web), (answers, web)
        spread = all(set(answers[i * tries:(i + 1) * tries]) == set(web)
                     for i in range(len(lab.hosts)))
        return answers if spread else []

    seen: Counter[str] = Counter()
    for client_host in lab.hosts:
        answers = wait_until(partial(all_answer, client_host), 60,
                             f"every host's :8080 to answer from {client_host.name}, "
                             "each reaching both tasks", interval=1.0)
        seen.update(answers)
    print(f"ingress :8080: {sum(seen.values())} answers, per task {dict(seen)}")
    # Served by tasks on two different nodes, whichever host was asked.
    assert len(set(web.values())) == 2, web

    # Mode host: only the nodes running a task answer, each with its own task; the other
    # refuses. (The scheduler puts the two tasks on two nodes: one port per host.)
    task_on = {node: name for name, node in pinned.items()}  # node ID → its task's hostname
    assert len(task_on) == 2, pinned
    order = sorted(lab.hosts, key=lambda h: h.node_id not in task_on)  # the idle host last

    def only_where_tasks_run(client_host: HostState) -> list[str]:
        answers = get_from(client_host, [f"{h.address}:9090" for h in order])
        ok = (answers[:2] == [task_on[h.node_id or ""] for h in order[:2]]
              and not answered(answers[2]))
        return answers if ok else []

    for client_host in lab.hosts:
        answers = wait_until(partial(only_where_tasks_run, client_host), 60,
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
    # The same through an update of another service: refused, its spec unchanged.
    spec = client.get("/services/pinned")["Spec"]
    out = shoal(m1, "service", "update", "-d", "--publish-add", "8080:8080", "pinned")
    assert out.returncode != 0
    assert "already published by service web" in out.stderr, out.stderr
    assert client.get("/services/pinned")["Spec"] == spec


# A server that quits at once on SIGTERM, as most do (SERVE's httpd is PID 1 and ignores it,
# so it would go on serving for the whole stop grace period and hide any gap).
SERVE_QUIT = ["sh", "-c", "ip -4 -o addr show dev eth0; trap 'exit 0' TERM; "
              "httpd -f -p 8080 -h /etc & wait"]


# A client looping on the VIP: one line per try, `ok <hostname>` or `fail <try>`; 0.02 s
# between tries. timeout(1) bounds a try that hangs (3 s) (busybox wget has no usable -T here).
def client_loop(vip: str) -> list[str]:
    return ["sh", "-c", "i=0; while true; do i=$((i+1)); "
            f"if out=$(timeout 3 wget -O - http://{vip}:8080/hostname 2>/dev/null); "
            'then echo "ok $out"; else echo "fail $i"; fi; usleep 20000; done']


def client_lines(lab: LabState, task: dict[str, Any]) -> list[str]:
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    logs = engine(lab).containers.get(cid).logs(stdout=True, stderr=True).decode()
    return [line for line in logs.splitlines() if line.startswith(("ok ", "fail "))]


# The same from a lab host's namespace, through the routing mesh: `ok <hostname>` or
# `fail <target> <error>` per try, alternating over the targets (addr:port).
_MESH_LOOP = r"""
import socket, sys, time
i = 0
while True:
    target = sys.argv[1 + i % (len(sys.argv) - 1)]
    i += 1
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3) as s:
            s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
        ok = " 200 " in head.split("\r\n")[0]
        print(f"ok {body.strip()}" if ok else f"fail {target} HTTP", flush=True)
    except OSError as err:
        print(f"fail {target} {type(err).__name__}", flush=True)
    time.sleep(0.02)
"""


def start_mesh_loop(client_host: HostState, targets: list[str], out: Path
                    ) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink:
        return subprocess.Popen(["nsenter", f"--net=/run/netns/{client_host.namespace}",
                                 sys.executable, "-c", _MESH_LOOP, *targets],
                                stdout=sink, stderr=subprocess.STDOUT)


def file_lines(path: Path) -> list[str]:
    """Complete lines only: the loop may be writing the last one."""
    text = path.read_text(errors="replace")
    return text[:text.rfind("\n") + 1].splitlines()


class Phases:
    """Counts a client's tries and failures between calls to `mark`."""

    def __init__(self, name: str, lines: Callable[[], list[str]]) -> None:
        self.name, self.lines = name, lines
        self.start = len(lines())
        self.counts: dict[str, tuple[int, int, set[str]]] = {}

    def more(self, count: int) -> bool:
        return len(self.lines()) >= self.start + count

    def mark(self, phase: str) -> tuple[int, int, set[str]]:
        lines = self.lines()
        window = lines[self.start:]
        self.start = len(lines)
        fails = [line for line in window if line.startswith("fail")]
        served = {line.split(" ", 1)[1] for line in window if line.startswith("ok ")}
        self.counts[phase] = (len(window), len(fails), served)
        print(f"{self.name}, {phase}: {len(window)} tries, {len(fails)} failed "
              f"{sorted(set(fails))[:3]}, {len(served)} tasks answered")
        return self.counts[phase]


def check(phases: list[Phases], phase: str) -> set[str]:
    """Mark the phase on every client; each tried at least 20 times and never failed.
    The tasks that answered any of them."""
    marks = {p.name: p.mark(phase) for p in phases}  # all marked (and printed) first
    for name, (total, fails, _) in marks.items():
        assert total >= 20 and fails == 0, (name, phase, total, fails)
    return {task for _, _, served in marks.values() for task in served}


@pytest.mark.lab(managers=1, workers=1)
def test_clients_see_no_failure_during_update_scale_down_and_drain(lab: LabState,
                                                                   tmp_path: Path) -> None:
    """One client in a task loops on the VIP; another, in m1's namespace, loops on the
    published port of both hosts' addresses (the routing mesh)."""
    m1 = lab.host("m1")
    client = m1.client()
    out = shoal(m1, "network", "create", "-d", "overlay", "app")
    assert out.returncode == 0, out.stderr
    app = network_id(client, "app")
    out = shoal(m1, "service", "create", "-d", "--name", "web", "--replicas", "4",
                "--network", "app", "--publish", "8080:8080", IMAGE, *SERVE_QUIT)
    assert out.returncode == 0, out.stderr
    web = wait_running(client, "web", 4)
    assert len({t["NodeID"] for t in web}) == 2
    vip = next(v["Addr"].split("/")[0] for v in client.get("/services/web")["Endpoint"]
               ["VirtualIPs"] if v["NetworkID"] == app)
    assert vip not in {task_addr(t, app) for t in web}
    out = shoal(m1, "service", "create", "-d", "--name", "client", "--replicas", "1",
                "--network", "app", IMAGE, *client_loop(vip))
    assert out.returncode == 0, out.stderr
    loop = wait_running(client, "client", 1)[0]
    mesh_out = tmp_path / "mesh-client.log"
    # The mesh must answer before the loop starts (it is set up as the tasks start).
    wait_until(lambda: all(answered(a) for a in get_from(
        m1, [f"{h.address}:8080" for h in lab.hosts])), 60, "the routing mesh", interval=1.0)
    mesh = start_mesh_loop(m1, [f"{h.address}:8080" for h in lab.hosts], mesh_out)
    try:
        clients_see_no_failure(lab, client, loop, mesh_out)
    finally:
        mesh.terminate()
        mesh.wait(timeout=10)


def clients_see_no_failure(lab: LabState, client: Client, loop: dict[str, Any],
                           mesh_out: Path) -> None:
    m1 = lab.host("m1")
    # Both clients must be getting answers before anything changes.
    wait_until(lambda: sum(line.startswith("ok") for line in client_lines(lab, loop)) >= 10,
               60, "the VIP client's first answers", interval=0.5)
    phases = [Phases("VIP client", lambda: client_lines(lab, loop)),
              Phases("mesh client", lambda: file_lines(mesh_out))]

    def tries(count: int, what: str) -> None:
        wait_until(lambda: all(p.more(count) for p in phases), 60, f"{count} tries {what}",
                   interval=0.5)

    tries(20, "steady")
    assert len(check(phases, "steady")) == 4

    # Rolling update, one task at a time (stop-first: each old task leaves, then its
    # replacement starts); the CLI waits for the update to complete.
    old = {t["ID"] for t in running(client, "web")}
    out = shoal(m1, "service", "update", "--env-add", "X=1", "--update-parallelism", "1",
                "web")
    assert out.returncode == 0, out.stderr
    new = wait_running(client, "web", 4)
    assert not old & {t["ID"] for t in new}
    served = check(phases, "rolling update")
    assert served & set(hostnames(lab, new)), served

    # Scale down 4 → 1.
    out = shoal(m1, "service", "scale", "web=1")
    assert out.returncode == 0, out.stderr
    left = wait_running(client, "web", 1)
    tries(20, "after the scale-down")
    assert set(hostnames(lab, left)) <= check(phases, "scale down")

    # Scale up 1 → 4: the new tasks get addresses the old ones had, some on another node
    # than before (the overlay must not send them where the address used to be).
    out = shoal(m1, "service", "scale", "web=4")
    assert out.returncode == 0, out.stderr
    four = wait_running(client, "web", 4)
    assert len({t["NodeID"] for t in four}) == 2, four
    tries(20, "after the scale-up")
    assert set(hostnames(lab, four)) <= check(phases, "scale up")

    # Drain the node (not the client's) running two of web's tasks: they move to the other
    # node while the other two keep serving.
    node_of = {h.node_id: h for h in lab.hosts}
    drained = node_of[next(t["NodeID"] for t in four if t["NodeID"] != loop["NodeID"])]
    out = shoal(m1, "node", "update", "--availability", "drain", drained.node_id or "")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: (r := running(client, "web")) and len(r) == 4
               and all(t["NodeID"] != drained.node_id for t in r), 90,
               f"web's tasks off {drained.name}", interval=0.5)
    tries(20, "after the drain")
    check(phases, "drain")
    assert wait_running(client, "client", 1)[0]["ID"] == loop["ID"]


# Listens only 3 s after it starts, like a server that loads before it serves.
SERVE_SLOW = ["sh", "-c", "trap 'exit 0' TERM; sleep 3; httpd -f -p 8080 -h /etc & wait"]
HEALTH = ["--health-cmd", "wget -O /dev/null http://127.0.0.1:8080/hostname",
          "--health-interval", "1s", "--health-retries", "30"]


@pytest.mark.lab(managers=1)
def test_a_starting_task_joins_the_backends_only_once_healthy(lab: LabState) -> None:
    """A task is running (and a backend) only once its health check passes: a client
    looping on the VIP while slow-starting tasks are added sees no failure."""
    m1 = lab.host("m1")
    client = m1.client()
    out = shoal(m1, "network", "create", "-d", "overlay", "app")
    assert out.returncode == 0, out.stderr
    out = shoal(m1, "service", "create", "-d", "--name", "web", "--replicas", "1",
                "--network", "app", *HEALTH, IMAGE, *SERVE_SLOW)
    assert out.returncode == 0, out.stderr
    wait_running(client, "web", 1)
    vip = client.get("/services/web")["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0]
    out = shoal(m1, "service", "create", "-d", "--name", "client", "--replicas", "1",
                "--network", "app", IMAGE, *client_loop(vip))
    assert out.returncode == 0, out.stderr
    loop = wait_running(client, "client", 1)[0]
    wait_until(lambda: sum(line.startswith("ok") for line in client_lines(lab, loop)) >= 10,
               60, "the client's first answers", interval=0.5)
    phases = [Phases("VIP client", lambda: client_lines(lab, loop))]
    wait_until(lambda: phases[0].more(20), 60, "20 steady tries", interval=0.5)
    check(phases, "steady")

    out = shoal(m1, "service", "scale", "web=3")
    assert out.returncode == 0, out.stderr
    three = wait_running(client, "web", 3)
    wait_until(lambda: phases[0].more(40), 60, "40 tries after the scale-up", interval=0.5)
    assert set(hostnames(lab, three)) <= check(phases, "scale up (tasks listen after 3 s)")
