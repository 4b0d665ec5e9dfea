"""Issue 9, items 1, 7, 8 and the "Wrong" list: the real docker CLI (28.2) and docker-py
against a lab's Shoal sockets: the handshake (ping, version, info, API versions), `docker
events`, Docker's error codes and messages, attached jobs, nodes' TLSInfo.

One lab (a manager and a worker) for the module; each test cleans up what it creates.
Expected texts are dockerd's (moby daemon/cluster/errors.go, api/server/middleware/version.go)
and the docker CLI's, as recorded in shared/reference/swarm-features.md.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from shoal import lab as labmod
from shoal.lab import HostState, LabState
from tests.system.conftest import LabFactory, module_lab, wait_until
from tests.system.helpers import DOCKER, ok, request, run_docker
from tests.system.svc import IMAGE, engine

pytestmark = pytest.mark.system

NOT_A_MANAGER = ("This node is not a swarm manager. Worker nodes can't be used to view or "
                 "modify cluster state. Please run this command on a manager node or promote "
                 "the current node to a manager.")
ALREADY_IN_SWARM = ('This node is already part of a swarm. Use "docker swarm leave" to leave '
                    "this swarm and join another one.")


lab = module_lab()




def answers(host: HostState) -> bool:
    try:
        return request(host, "GET", "/_ping")[0] == 200
    except OSError:
        return False


def pyclient(host: HostState) -> docker.DockerClient:
    return docker.DockerClient(base_url=host.api, version="auto", timeout=60)


def remove_service(host: HostState, name: str) -> None:
    client = pyclient(host)
    for svc in client.services.list(filters={"name": [name]}):
        if svc.name == name:
            svc.remove()


# -- 1. handshake --------------------------------------------------------------------------

def test_ping_headers_and_api_versions(lab: LabState) -> None:
    m1 = lab.host("m1")
    for method in ("HEAD", "GET"):
        status, headers, body = request(m1, method, "/_ping")
        assert status == 200
        assert headers["Api-Version"] == "1.50" and headers["Ostype"] == "linux"
        assert headers["Swarm"] == "active/manager"
        assert headers["Docker-Experimental"] == "false"
        assert headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
        assert body == (b"OK" if method == "GET" else b"")
    assert request(lab.host("w1"), "GET", "/_ping")[1]["Swarm"] == "active/worker"
    # every version the docker CLI and docker-py of the last years speak, and none
    for minor in range(41, 51):
        status, _, body = request(m1, "GET", f"/v1.{minor}/info")
        assert status == 200, body
        assert json.loads(body)["Swarm"]["ControlAvailable"] is True
    assert request(m1, "GET", "/info")[0] == 200
    status, _, body = request(m1, "GET", "/v1.51/info")
    assert status == 400 and json.loads(body) == {
        "message": "client version 1.51 is too new. Maximum supported API version is 1.50"}
    status, _, body = request(m1, "GET", "/v1.12/services")
    assert status == 400 and json.loads(body)["message"].startswith(
        "client version 1.12 is too old. Minimum supported API version is 1.24")


def test_docker_version_and_info_show_the_node_and_its_engine(
        lab: LabState, docker_config: str) -> None:
    m1 = lab.host("m1")
    out = ok(run_docker(m1, docker_config, "version"))
    client_part, _, server_part = out.partition("Server:")
    assert "API version:       1.50" in client_part  # negotiated: the server says 1.50
    assert server_part.startswith(" Shoal\n Engine:\n  Version:          0.1.0\n"), out
    for line in ("  API version:      1.50 (minimum version 1.24)",
                 "  Go version:       python3.", "  OS/Arch:          linux/",
                 "  Experimental:     false"):
        assert line in server_part, out
    commit = [ln for ln in server_part.splitlines() if ln.startswith("  Git commit:")]
    assert commit and commit[0].split()[-1] not in ("", "<no"), out
    built = [ln for ln in server_part.splitlines() if ln.startswith("  Built:")]
    assert built and len(built[0].split()) > 1, out

    eng = engine(lab).info()
    info = json.loads(ok(run_docker(m1, docker_config, "info", "--format", "{{json .}}")))
    for key in ("Images", "MemTotal", "NCPU", "DockerRootDir", "Driver", "ServerVersion",
                "OperatingSystem", "KernelVersion"):
        assert info[key] == eng[key], key
    assert info["Name"] == "m1" and info["Swarm"]["NodeID"] == m1.node_id
    assert info["Swarm"]["ControlAvailable"] is True and info["Swarm"]["Nodes"] == 2
    text = ok(run_docker(m1, docker_config, "info"))
    assert f" Images: {eng['Images']}\n" in text and " Swarm: active\n" in text
    assert "  Is Manager: true\n" in text
    assert " Total Memory: 0B" not in text and " Containers: " in text


def test_docker_py_encodings(lab: LabState) -> None:
    """docker-py negotiates with /version, sends list-form filters, True/False booleans and
    lower-case keys; each is taken as dockerd takes it."""
    m1 = lab.host("m1")
    client = pyclient(m1)
    assert client.api.api_version == "1.50"
    assert client.ping() is True
    assert [n["Description"]["Hostname"] for n in
            client.api.nodes(filters={"role": ["manager"]})] == ["m1"]
    assert [n["Description"]["Hostname"] for n in
            client.api.nodes(filters={"role": "worker"})] == ["w1"]
    # lower-case keys (Go's encoding/json matches them case-insensitively)
    status, _, body = request(m1, "POST", "/v1.50/services/create", {
        "name": "lowercase", "taskTemplate": {"containerSpec": {
            "image": IMAGE, "args": ["sleep", "3600"]}},
        "mode": {"replicated": {"replicas": 1}}})
    try:
        assert status == 201, body
        sid = json.loads(body)["ID"]
        svc = client.api.inspect_service(sid, insert_defaults=True)  # insertDefaults=True
        assert svc["Spec"]["Name"] == "lowercase"
        assert svc["Spec"]["Mode"] == {"Replicated": {"Replicas": 1}}
        for true in ("1", "true", "True"):
            status, _, body = request(m1, "GET", f"/services/{sid}?insertDefaults={true}")
            assert status == 200 and "UpdateConfig" in json.loads(body)["Spec"], true
        for false in ("0", "false", "False", ""):
            status, _, body = request(m1, "GET", f"/services/{sid}?insertDefaults={false}")
            assert status == 200 and "UpdateConfig" not in json.loads(body)["Spec"], false
        wait_until(lambda: {t["ServiceID"] for t in client.api.tasks(
            filters={"service": ["lowercase"], "desired-state": "running"})} == {sid},
            60, "the service's task, by list-form filters")
    finally:
        remove_service(m1, "lowercase")


# -- 7. events -----------------------------------------------------------------------------

def read_events(proc: subprocess.Popen[str], until: Any, timeout: float) -> list[dict[str, Any]]:
    """Lines of `docker events --format '{{json .}}'` until `until(events)` holds."""
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, f"events so far: {events}"
        line = proc.stdout.readline()
        assert line, f"docker events ended: {events}"
        events.append(json.loads(line))
    return events


def test_docker_events_stream_service_and_node_changes(lab: LabState,
                                                       docker_config: str) -> None:
    # Item 7 names task events too: dockerd streams none in swarm scope (its cluster watch
    # covers nodes, services, networks, secrets and configs), so neither does Shoal; a task's
    # container events come from the engine (local scope, through the passthrough).
    m1 = lab.host("m1")
    w1_id = lab.host("w1").node_id
    env = {"DOCKER_HOST": m1.api, "DOCKER_CONFIG": docker_config}
    # --since takes whole seconds: start at one, so what came before is before it
    start = math.ceil(time.time())
    time.sleep(start - time.time())
    proc = subprocess.Popen([DOCKER, "events", "--filter", "scope=swarm", "--format",
                             "{{json .}}"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(1)  # the stream is open before the changes
        sid = ok(run_docker(m1, docker_config, "service", "create", "-d", "--name", "evweb",
                            IMAGE, "sleep", "3600")).strip()
        ok(run_docker(m1, docker_config, "service", "scale", "-d", "evweb=2"))
        ok(run_docker(m1, docker_config, "node", "update", "--availability", "pause", "w1"))
        ok(run_docker(m1, docker_config, "node", "update", "--availability", "active", "w1"))
        ok(run_docker(m1, docker_config, "service", "rm", "evweb"))
        nid = ok(run_docker(m1, docker_config, "network", "create", "-d", "overlay",
                            "evnet")).strip()
        ok(run_docker(m1, docker_config, "network", "rm", "evnet"))
        data_file = Path(docker_config) / "evdata"
        data_file.write_text("event-data\n")
        secret = ok(run_docker(m1, docker_config, "secret", "create", "evsec",
                               str(data_file))).strip()
        config = ok(run_docker(m1, docker_config, "config", "create", "evcfg",
                               str(data_file))).strip()
        ok(run_docker(m1, docker_config, "secret", "rm", "evsec"))
        ok(run_docker(m1, docker_config, "config", "rm", "evcfg"))
        events = read_events(proc, lambda evs: {sid, nid, secret, config} <= {
            e["Actor"]["ID"] for e in evs if e["Action"] == "remove"}, 90)
    finally:
        proc.terminate()
        proc.wait(10)
    end = time.time()
    assert all(e["scope"] == "swarm" and e["Type"] in ("service", "node", "network",
                                                         "secret", "config")
               for e in events)
    for kind, oid, name in (("secret", secret, "evsec"), ("config", config, "evcfg")):
        assert [(e["Type"], e["Action"], e["Actor"]["Attributes"]) for e in events
                if e["Actor"]["ID"] == oid] == [(kind, "create", {"name": name}),
                                               (kind, "remove", {"name": name})]
    net = [(e["Action"], e["Actor"]["Attributes"]) for e in events if e["Actor"]["ID"] == nid]
    assert net[0] == ("create", {"name": "evnet"}) and net[-1] == ("remove", {"name": "evnet"})
    mine = [e for e in events if e["Actor"]["ID"] in (sid, w1_id)]
    seen = [(e["Type"], e["Action"]) for e in mine]
    assert seen[0] == ("service", "create") and seen[-1] == ("service", "remove"), seen
    create, scale = mine[0], mine[1]
    assert create["Actor"]["Attributes"] == {"name": "evweb"}
    assert scale["Action"] == "update" and scale["Actor"]["Attributes"] == {
        "name": "evweb", "replicas.old": "1", "replicas.new": "2"}
    # (the node's other updates, e.g. of its data-plane report, carry only its name)
    nodes = [e for e in mine if "availability.new" in e["Actor"]["Attributes"]]
    assert [e["Actor"]["Attributes"] for e in nodes] == [
        {"name": "w1", "availability.old": "active", "availability.new": "pause"},
        {"name": "w1", "availability.old": "pause", "availability.new": "active"}]
    assert all(start - 1 <= e["time"] <= end + 1 and e["timeNano"] // 10**9 == e["time"]
               for e in mine)

    # --since/--until replay what the manager kept, filtered, and the stream ends by itself
    replay = run_docker(m1, docker_config, "events", "--since", str(start), "--until",
                        str(int(end) + 1), "--filter", "type=node", "--filter", f"node={w1_id}",
                        "--format", "{{.Type}} {{.Action}} {{.Actor.ID}} {{.Time}} "
                        "{{index .Actor.Attributes \"availability.new\"}}", timeout=60)
    rows = [line.split(" ") for line in ok(replay).splitlines()]
    assert all(row[:3] == ["node", "update", w1_id] and int(row[3]) >= start
               for row in rows), (start, rows)
    assert [row[4] for row in rows if row[4]] == ["pause", "active"], rows


def test_docker_py_events_and_worker_refusal(lab: LabState) -> None:
    m1 = lab.host("m1")
    client = pyclient(m1)
    stream = client.events(decode=True, filters={"type": ["service"], "event": ["create"]})
    try:
        svc = client.services.create(IMAGE, ["sleep", "3600"], name="pyevents")
        first = next(iter(stream))
    finally:
        stream.close()
        remove_service(m1, "pyevents")
    assert first["Type"] == "service" and first["Action"] == "create"
    assert first["Actor"] == {"ID": svc.id, "Attributes": {"name": "pyevents"}}
    # swarm events come from a manager's store: a worker says so, as for any cluster call
    # (docker-py does not check the status of an event stream: it yields the error body)
    status, _, body = request(lab.host("w1"), "GET", "/v1.50/events")
    assert status == 503 and NOT_A_MANAGER in json.loads(body)["message"]


# -- 8. errors -----------------------------------------------------------------------------

def test_errors_print_what_docker_prints(lab: LabState, docker_config: str) -> None:
    m1, w1 = lab.host("m1"), lab.host("w1")
    expected = [
        (m1, ("service", "inspect", "nope"), "Error: no such service: nope"),  # from a 404
        (m1, ("service", "rm", "nope"), "Error response from daemon: service nope not found"),
        (m1, ("node", "rm", "nope"), "Error response from daemon: node nope not found"),
        (m1, ("node", "inspect", "nope"), "Error response from daemon: node nope not found"),
        (m1, ("network", "rm", "nope"), "Error response from daemon: network nope not found"),
        (m1, ("swarm", "init", "--advertise-addr", m1.address),
         f"Error response from daemon: {ALREADY_IN_SWARM}"),
        (w1, ("node", "ls"), f"Error response from daemon: {NOT_A_MANAGER}"),
        (w1, ("service", "ls"), f"Error response from daemon: {NOT_A_MANAGER}"),
        (w1, ("events", "--filter", "scope=swarm"),
         f"Error response from daemon: {NOT_A_MANAGER}"),
    ]
    for host, args, text in expected:
        out = run_docker(host, docker_config, *args)
        assert out.returncode == 1 and text in out.stderr, (args, out.stderr)

    ok(run_docker(m1, docker_config, "service", "create", "-d", "--name", "dup", IMAGE,
                  "sleep", "3600"))
    try:
        out = run_docker(m1, docker_config, "service", "create", "-d", "--name", "dup", IMAGE)
        assert out.returncode == 1
        assert "Error response from daemon: service dup already exists" in out.stderr
        assert "docker service update" in out.stderr and "shoal" not in out.stderr
        client = pyclient(m1)
        with pytest.raises(docker.errors.APIError) as err:
            client.services.create(IMAGE, name="dup")
        assert err.value.status_code == 409
        assert len(client.services.list(filters={"name": ["dup"]})) == 1  # nothing changed
    finally:
        remove_service(m1, "dup")

    client = pyclient(m1)
    with pytest.raises(docker.errors.APIError) as err:
        client.services.create(IMAGE, name="bad name!")
    assert err.value.status_code == 400 and "invalid service name" in str(err.value)
    # a stale version: dockerd answers 500 "update out of sequence" (swarmkit's plain error)
    node = client.api.inspect_node(w1.node_id)
    stale = node["Version"]["Index"]
    spec = node["Spec"] | {"Labels": {"compat": "1"}}
    client.api.update_node(w1.node_id, stale, spec)
    with pytest.raises(docker.errors.APIError) as err:
        client.api.update_node(w1.node_id, stale, node["Spec"] | {"Labels": {"compat": "2"}})
    assert err.value.status_code == 500 and "update out of sequence" in str(err.value)
    assert client.api.inspect_node(w1.node_id)["Spec"]["Labels"] == {"compat": "1"}
    fresh = client.api.inspect_node(w1.node_id)
    client.api.update_node(w1.node_id, fresh["Version"]["Index"], node["Spec"])


# -- the "Wrong" list ----------------------------------------------------------------------

def test_attached_replicated_job_finishes(lab: LabState, docker_config: str) -> None:
    m1 = lab.host("m1")
    try:
        out = run_docker(m1, docker_config, "service", "create", "--name", "compatjob",
                         "--mode", "replicated-job", "--replicas", "3", IMAGE, "true",
                         timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.rstrip().endswith("job complete"), out.stdout[-500:]
        ps = ok(run_docker(m1, docker_config, "service", "ps", "compatjob", "--format",
                           "{{.CurrentState}}"))
        assert [line.split()[0] for line in ps.splitlines()] == ["Complete"] * 3
        out = run_docker(m1, docker_config, "service", "create", "--name", "compatglobaljob",
                         "--mode", "global-job", IMAGE, "true", timeout=120)
        assert out.returncode == 0 and out.stdout.rstrip().endswith("job complete"), out
    finally:
        remove_service(m1, "compatjob")
        remove_service(m1, "compatglobaljob")


def test_nodes_tls_info_and_docker_hints(lab: LabState, docker_config: str) -> None:
    m1 = lab.host("m1")
    cluster = json.loads(ok(run_docker(m1, docker_config, "info", "--format",
                                       "{{json .Swarm.Cluster.TLSInfo}}")))
    assert cluster["TrustRoot"].startswith("-----BEGIN CERTIFICATE-----")
    for node in ("self", "w1"):
        tls = json.loads(ok(run_docker(m1, docker_config, "node", "inspect", node, "--format",
                                       "{{json .Description.TLSInfo}}")))
        assert tls == cluster, node
    assert ok(run_docker(m1, docker_config, "swarm", "ca")).strip() == \
        cluster["TrustRoot"].strip()
    pretty = ok(run_docker(m1, docker_config, "node", "inspect", "--pretty", "w1"))
    assert f" Issuer Subject:\t{cluster['CertIssuerSubject']}\n" in pretty, pretty
    assert f" Issuer Public Key:\t{cluster['CertIssuerPublicKey']}\n" in pretty, pretty
    hint = ok(run_docker(m1, docker_config, "swarm", "join-token", "worker"))
    assert "docker swarm join --token SWMTKN-1-" in hint and f"{m1.address}:2377" in hint


def test_swarm_init_and_leave_with_the_docker_cli(lab_factory: LabFactory,
                                                 docker_config: str) -> None:
    """A node outside any swarm: `docker swarm init` prints the docker CLI's own join hints
    (from what the API answers: the node ID, the worker token, the manager's address)."""
    solo = lab_factory(managers=1, workers=0, form_swarm=False).host("m1")
    wait_until(lambda: answers(solo), 60, "the node's API")
    out = run_docker(solo, docker_config, "node", "ls")
    assert out.returncode == 1 and out.stderr.strip() == (
        'Error response from daemon: This node is not a swarm manager. Use "docker swarm '
        'init" or "docker swarm join" to connect this node to swarm and try again.')
    assert request(solo, "GET", "/_ping")[1]["Swarm"] == "inactive"
    init = ok(run_docker(solo, docker_config, "swarm", "init", "--advertise-addr",
                         solo.address))
    node_id = pyclient(solo).info()["Swarm"]["NodeID"]
    token = ok(run_docker(solo, docker_config, "swarm", "join-token", "-q", "worker")).strip()
    assert init == (
        f"Swarm initialized: current node ({node_id}) is now a manager.\n\n"
        "To add a worker to this swarm, run the following command:\n\n"
        f"    docker swarm join --token {token} {solo.address}:2377\n\n"
        "To add a manager to this swarm, run 'docker swarm join-token manager' and follow "
        "the instructions.\n")
    out = run_docker(solo, docker_config, "swarm", "leave")
    assert out.returncode == 1 and out.stderr.strip() == (
        "Error response from daemon: You are attempting to leave the swarm on a node that is "
        "participating as a manager. Removing the last manager erases all current state of "
        "the swarm. Use `--force` to ignore this message.")
    assert ok(run_docker(solo, docker_config, "swarm", "leave", "--force")).strip() == \
        "Node left the swarm."


def test_without_quorum_the_error_is_dockers(lab: LabState, docker_config: str) -> None:
    """Last in the module (it takes the lab's quorum away): a manager that has lost the
    majority answers 503 "The swarm does not have a leader..." as dockerd does."""
    m1, w1 = lab.host("m1"), lab.host("w1")
    start = math.floor(time.time())
    assert "Node w1 promoted to a manager in the swarm." in ok(
        run_docker(m1, docker_config, "node", "promote", "w1"))
    wait_until(lambda: "Reachable" in ok(run_docker(
        m1, docker_config, "node", "ls", "--filter", "name=w1", "--format",
        "{{.ManagerStatus}}")), 60, "w1 a reachable manager")
    # events work on any manager: the new one shows its own promotion
    wanted = f"update {w1.node_id} manager worker"

    def promotion_seen() -> bool:
        out = ok(run_docker(w1, docker_config, "events", "--since", str(start), "--until",
                            str(math.ceil(time.time())), "--filter", "type=node", "--format",
                            "{{.Action}} {{.Actor.ID}} {{index .Actor.Attributes \"role.new\"}}"
                            " {{index .Actor.Attributes \"role.old\"}}"))
        return wanted in out.splitlines()

    wait_until(promotion_seen, 60, "w1's promotion in w1's events", interval=1)
    labmod.stop_host(lab.name, "w1")
    out = wait_until(lambda: (lambda o: o if o.returncode else None)(
        run_docker(m1, docker_config, "node", "ls")), 60, "m1 to see the quorum lost")
    assert out.returncode == 1 and out.stderr.startswith(
        "Error response from daemon: The swarm does not have a leader. It's possible that "
        "too few managers are online. Make sure more than half of the managers are online."), \
        out.stderr
    assert "shoal" not in out.stderr
    with pytest.raises(docker.errors.APIError) as err:
        pyclient(m1).services.list()
    assert err.value.status_code == 503
