"""The TCP API of a real shoald (issue 10, items 4 and 6) in a one-manager lab: the manager
restarted with `-H tcp://ADDR:2376 --tlsverify ...` serves the real docker CLI and the
shoal CLI with the certificates `shoal ca issue-client|issue-server` made; without a client
certificate or over plain HTTP it refuses. A tcp:// listener without TLS stops shoald at
start unless --insecure-tcp, which logs a warning. With --log-format json every line of
its log is JSON naming the node, and a task's lines name the task and its service."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shoal import lab as labmod
from shoal.lab import HostState, LabState
from tests.system.conftest import module_lab, wait_until
from tests.system.helpers import SHOAL, shoal, try_get
from tests.system.svc import create, running, spec

pytestmark = pytest.mark.system

DOCKER = "/usr/local/bin/docker"


lab = module_lab(1, 0)


@pytest.fixture(scope="module")
def certs(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """client/ and server/ (for m1's lab address), each with ca.pem, cert.pem, key.pem."""
    base = tmp_path_factory.mktemp("certs")
    m1 = lab.host("m1")
    out = shoal(m1, "ca", "issue-client", "--out", str(base / "client"))
    assert out.returncode == 0, out.stderr
    out = shoal(m1, "ca", "issue-server", "--host", m1.address, "--out", str(base / "server"))
    assert out.returncode == 0, out.stderr
    return base


def restart(lab: LabState, *argv: str, wait: bool = True) -> tuple[HostState, int]:
    """Restart m1's shoald with extra flags; returns it and where its log continues."""
    labmod.stop_host(lab.name, "m1")
    offset = os.path.getsize(lab.host("m1").log_file)
    host = labmod.start_host(lab.name, "m1", wait=wait, extra_argv=argv)
    if wait:  # the manager answers once it has caught up with its Raft log
        wait_until(lambda: try_get(host.client(timeout=5), "/nodes"), 30, "m1 to answer")
    return host, offset


def log_since(host: HostState, offset: int) -> str:
    with open(host.log_file, errors="replace") as f:
        f.seek(offset)
        return f.read()


def in_m1(lab: LabState, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a client inside m1's namespace (lab addresses are reachable only there)."""
    return labmod.exec_in(lab.name, "m1", ["env", "-i", *(f"{k}={v}" for k, v in env.items()),
                                           *argv], capture_output=True, text=True, timeout=60)


def server_flags(certs: Path) -> list[str]:
    s = certs / "server"
    return ["--tlsverify", "--tlscacert", str(s / "ca.pem"), "--tlscert", str(s / "cert.pem"),
            "--tlskey", str(s / "key.pem")]


def test_tcp_without_tls_is_refused_and_insecure_tcp_warns(lab: LabState,
                                                          docker_config: Path) -> None:
    m1 = lab.host("m1")
    tcp = f"tcp://{m1.address}:2375"
    host, offset = restart(lab, "-H", tcp, wait=False)
    wait_until(lambda: not labmod.status(lab.name).host("m1").alive, 20,
               "shoald to refuse a tcp:// listener without TLS")
    said = log_since(host, offset)
    assert f"refusing to listen on {tcp} without TLS" in said, said
    assert "--tlsverify" in said and "--insecure-tcp" in said

    host, offset = restart(lab, "-H", tcp, "--insecure-tcp")
    said = log_since(host, offset)
    assert "WARNING" in said and f"API listener {tcp} is plain HTTP" in said, said
    env = {"DOCKER_CONFIG": str(docker_config), "PATH": "/usr/bin:/bin"}
    out = in_m1(lab, [DOCKER, "-H", tcp, "node", "ls"], env)
    assert out.returncode == 0 and "m1" in out.stdout, out.stderr


def test_docker_and_shoal_clis_over_tls(lab: LabState, certs: Path,
                                        docker_config: Path) -> None:
    m1 = lab.host("m1")
    tcp = f"tcp://{m1.address}:2376"
    restart(lab, "-H", tcp, *server_flags(certs))
    c = certs / "client"
    client_flags = ["--tlsverify", "--tlscacert", str(c / "ca.pem"),
                    "--tlscert", str(c / "cert.pem"), "--tlskey", str(c / "key.pem")]
    env = {"DOCKER_CONFIG": str(docker_config), "PATH": "/usr/bin:/bin"}
    out = in_m1(lab, [DOCKER, *client_flags, "-H", tcp, "node", "ls"], env)
    assert out.returncode == 0, out.stderr
    assert "m1" in out.stdout and "Leader" in out.stdout
    out = in_m1(lab, [DOCKER, "-H", tcp, "node", "ls"],
                {**env, "DOCKER_CERT_PATH": str(c), "DOCKER_TLS_VERIFY": "1"})
    assert out.returncode == 0 and "m1" in out.stdout, out.stderr
    # No client certificate, and plain HTTP: refused.
    out = in_m1(lab, [DOCKER, "--tlsverify", "--tlscacert", str(c / "ca.pem"), "-H", tcp,
                      "node", "ls"], env)
    assert out.returncode != 0 and "m1" not in out.stdout
    assert "error during connect" in out.stderr, out.stderr
    out = in_m1(lab, [DOCKER, "-H", tcp, "node", "ls"], env)
    assert out.returncode != 0 and "m1" not in out.stdout
    # The shoal CLI, with flags and with docker's environment.
    py_env = {"PATH": "/usr/bin:/bin", "HOME": str(certs),
              "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    out = in_m1(lab, [SHOAL, "-H", tcp, *client_flags, "node", "ls"], py_env)
    assert out.returncode == 0 and "m1" in out.stdout, out.stderr
    out = in_m1(lab, [SHOAL, "-H", tcp, "node", "ls"],
                {**py_env, "DOCKER_CERT_PATH": str(c), "DOCKER_TLS_VERIFY": "1"})
    assert out.returncode == 0 and "m1" in out.stdout, out.stderr
    out = in_m1(lab, [SHOAL, "-H", tcp, "--tlsverify", "--tlscacert", str(c / "ca.pem"),
                      "node", "ls"], py_env)
    assert out.returncode == 1 and "cannot connect" in out.stderr, out.stderr


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "shoald wrote nothing"
    return [json.loads(line) for line in lines]  # every line parses, or the test fails


def test_json_logs_name_the_node_and_tasks(lab: LabState, certs: Path) -> None:
    m1 = lab.host("m1")
    host, offset = restart(lab, "-H", f"tcp://{m1.address}:2376", *server_flags(certs),
                           "--log-format", "json")
    client = host.client()
    node_id = client.get("/info")["Swarm"]["NodeID"]
    service_id = create(client, spec("logged", ["sleep", "300"]))
    task = wait_until(lambda: running(client, "logged"), 60, "the task to run")[0]
    wait_until(lambda: f'"task": "{task["ID"]}"' in log_since(host, offset), 20,
               "a log line naming the task")
    lines = json_lines(log_since(host, offset))
    for line in lines:
        assert {"time", "level", "component", "msg", "node", "service", "task"} <= set(line)
    assert {line["node"] for line in lines if line["component"] != "shoald"} >= {node_id}
    about_task = [line for line in lines if line["task"] == task["ID"]]
    assert about_task and all(line["service"] == service_id for line in about_task)
    assert {"worker.task_manager", "worker.executor.docker.executor"} <= \
        {line["component"] for line in about_task}, about_task
    assert any(line["msg"] == f"task {task['ID']}: running" for line in about_task)
    assert any(line["service"] == service_id and line["task"] is None and
               line["component"].startswith("manager.orchestrator") for line in lines)
    client.delete(f"/services/{service_id}")
