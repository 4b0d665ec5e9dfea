"""Issue 9 item 5 on one lab (1 manager + 1 worker, real dockerd): secrets and configs through
the docker CLI, docker-py and the shoal CLI; a service's secret placed on tmpfs in its task's
container with the uid, gid and mode asked for, sent only to the node that runs the task, and
nowhere in clear in the nodes' files or logs."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
from pathlib import Path

import docker
import pytest

from shoal import lab as labmod
from shoal.client import APIError
from shoal.lab import LabState
from tests.system.conftest import module_lab, wait_until
from tests.system.helpers import run_docker, shoal
from tests.system.svc import IMAGE, containers, create, node_names, running, spec

pytestmark = pytest.mark.system



lab = module_lab()


def test_docker_cli_secret_and_config_commands(lab: LabState, docker_config: Path,
                                               tmp_path: Path) -> None:
    data = f"cli-{secrets.token_hex(8)}"
    out = run_docker(lab.host("m1"), docker_config, "secret", "create", "--label", "team=db",
                     "clis", "-", stdin=data)
    assert out.returncode == 0, out.stderr
    secret_id = out.stdout.strip()
    assert len(secret_id) == 25

    ls = run_docker(lab.host("m1"), docker_config, "secret", "ls")
    assert ls.returncode == 0, ls.stderr
    header, *rows = ls.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "DRIVER", "CREATED", "UPDATED"]
    assert any(r.split()[:2] == [secret_id, "clis"] for r in rows), ls.stdout

    inspect = run_docker(lab.host("m1"), docker_config, "secret", "inspect", "clis")
    assert inspect.returncode == 0, inspect.stderr
    [shown] = json.loads(inspect.stdout)
    assert shown["ID"] == secret_id and shown["Spec"] == {"Name": "clis",
                                                          "Labels": {"team": "db"}}
    assert shown["Version"]["Index"] > 0 and shown["CreatedAt"].endswith("Z")
    assert data not in inspect.stdout and base64.b64encode(data.encode()).decode() \
        not in inspect.stdout

    again = run_docker(lab.host("m1"), docker_config, "secret", "create", "clis", "-", stdin="x")
    assert again.returncode != 0
    assert "Error response from daemon: secret clis already exists" in again.stderr

    missing = run_docker(lab.host("m1"), docker_config, "secret", "inspect", "no-such")
    assert missing.returncode != 0 and "no-such" in missing.stderr

    rm = run_docker(lab.host("m1"), docker_config, "secret", "rm", "clis")
    assert rm.returncode == 0 and rm.stdout.strip() == "clis", rm.stderr
    assert "clis" not in run_docker(lab.host("m1"), docker_config, "secret", "ls").stdout

    cfg_file = tmp_path / "app.cfg"
    cfg_file.write_text("listen=8080\n")
    out = run_docker(lab.host("m1"), docker_config, "config", "create", "clic", str(cfg_file))
    assert out.returncode == 0, out.stderr
    config_id = out.stdout.strip()
    ls = run_docker(lab.host("m1"), docker_config, "config", "ls")
    assert ls.stdout.splitlines()[0].split() == ["ID", "NAME", "CREATED", "UPDATED"], ls.stdout
    assert any(r.split()[:2] == [config_id, "clic"] for r in ls.stdout.splitlines()[1:])
    [cfg] = json.loads(run_docker(lab.host("m1"), docker_config, "config", "inspect",
                                  "clic").stdout)
    assert base64.b64decode(cfg["Spec"]["Data"]) == b"listen=8080\n"
    rm = run_docker(lab.host("m1"), docker_config, "config", "rm", config_id)
    assert rm.returncode == 0, rm.stderr
    assert "clic" not in run_docker(lab.host("m1"), docker_config, "config", "ls").stdout


def test_docker_py_secrets_and_configs(lab: LabState) -> None:
    client = docker.DockerClient(base_url=f"unix://{lab.host('m1').api_socket}")
    try:
        secret = client.secrets.create(name="pys", data=b"py-data", labels={"k": "v"})
        assert [s.id for s in client.secrets.list(filters={"name": "pys"})] == [secret.id]
        got = client.secrets.get(secret.id)
        assert got.name == "pys" and got.attrs["Spec"]["Labels"] == {"k": "v"}
        assert "Data" not in got.attrs["Spec"]
        with pytest.raises(docker.errors.APIError) as err:
            client.secrets.create(name="bad name", data=b"x")
        assert err.value.status_code == 400
        got.remove()
        assert client.secrets.list(filters={"name": "pys"}) == []

        config = client.configs.create(name="pyc", data=b"c-data")
        assert client.configs.get("pyc").id == config.id
        assert base64.b64decode(client.configs.get(config.id).attrs["Spec"]["Data"]) == \
            b"c-data"
        assert [c.name for c in client.configs.list()] == ["pyc"]
        config.remove()
        assert client.configs.list() == []
    finally:
        client.close()


def test_shoal_cli_secrets(lab: LabState, tmp_path: Path) -> None:
    m1 = lab.host("m1")
    path = tmp_path / "s"
    path.write_text("shoal-cli-data")
    out = shoal(m1, "secret", "create", "--label", "a=b", "shs", str(path))
    assert out.returncode == 0, out.stderr
    secret_id = out.stdout.strip()
    ls = shoal(m1, "secret", "ls")
    assert ls.returncode == 0 and "shs" in ls.stdout and secret_id[:12] in ls.stdout
    inspect = shoal(m1, "secret", "inspect", "shs")
    assert json.loads(inspect.stdout)[0]["Spec"] == {"Name": "shs", "Labels": {"a": "b"}}
    assert "shoal-cli-data" not in inspect.stdout
    assert shoal(m1, "secret", "rm", "shs").returncode == 0
    out = shoal(m1, "config", "create", "shc", str(path))
    assert out.returncode == 0, out.stderr
    assert "shc" in shoal(m1, "config", "ls").stdout
    assert shoal(m1, "config", "rm", "shc").returncode == 0
    assert "shc" not in shoal(m1, "config", "ls").stdout


def _grep(root: str, needle: str) -> list[str]:
    found = subprocess.run(["grep", "-rlaF", needle, root], capture_output=True, text=True)
    return found.stdout.splitlines()


def test_service_secret_on_tmpfs_only_where_used(lab: LabState, docker_config: Path) -> None:
    m1, w1 = lab.host("m1"), lab.host("w1")
    client = m1.client()
    data = f"sekrit-{secrets.token_hex(16)}"
    secret_id = client.post("/secrets/create", {
        "Name": "dbpass", "Data": base64.b64encode(data.encode()).decode()})["ID"]
    client.post("/configs/create", {"Name": "appcfg",
                                    "Data": base64.b64encode(b"mode=prod\n").decode()})
    client.post("/configs/create", {"Name": "hello", "Data": base64.b64encode(
        b"#!/bin/sh\necho from-config\n").decode()})

    # an unknown secret: 400 naming it, nothing created
    body = spec("bad")
    body["TaskTemplate"]["ContainerSpec"]["Secrets"] = [
        {"File": {"Name": "x", "UID": "0", "GID": "0", "Mode": 292}, "SecretName": "no-such"}]
    with pytest.raises(APIError) as err:
        create(client, body)
    assert err.value.status == 404 and "no-such" in str(err.value)
    assert client.get("/services", filters={"name": ["bad"]}) == []

    out = run_docker(lab.host("m1"), docker_config, "service", "create", "-d", "--name", "sec",
                     "--secret", "source=dbpass,target=db,uid=1000,gid=1001,mode=0400",
                     "--config", "source=appcfg,target=/etc/app.cfg",
                     "--config", "source=hello,target=/usr/local/bin/hello,mode=0755",
                     "--constraint", "node.role==worker", IMAGE, "sleep", "3600")
    assert out.returncode == 0, out.stderr
    service_id = out.stdout.strip().splitlines()[-1]
    [task] = wait_until(lambda: running(client, "sec"), 90, "the task running")
    assert node_names(client)[task["NodeID"]] == "w1"

    container = docker.DockerClient(base_url=lab.engine, version="1.41").containers.get(
        containers(lab, service_id)[0]["Id"])

    def sh(cmd: str) -> str:
        code, output = container.exec_run(["sh", "-c", cmd])
        assert code == 0, output
        return output.decode()

    assert sh("cat /run/secrets/db") == data
    assert sh("stat -c '%u %g %a' /run/secrets/db").split() == ["1000", "1001", "400"]
    assert sh("cat /etc/app.cfg") == "mode=prod\n"
    assert sh("stat -c '%a' /etc/app.cfg").strip() == "444"
    assert sh("/usr/local/bin/hello") == "from-config\n"  # a config may be a script
    mounts = sh("mount")
    assert any(" /run/secrets/db type tmpfs " in line and "ro" in line
               for line in mounts.splitlines()), mounts

    # the service shows the reference, never the data
    inspect = run_docker(lab.host("m1"), docker_config, "service", "inspect", "sec")
    [svc] = json.loads(inspect.stdout)
    [ref] = svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]
    assert ref == {"File": {"Name": "db", "UID": "1000", "GID": "1001", "Mode": 0o400},
                   "SecretID": secret_id, "SecretName": "dbpass"}
    assert data not in inspect.stdout

    # in use: refused, naming the service
    rm = run_docker(lab.host("m1"), docker_config, "secret", "rm", "dbpass")
    assert rm.returncode != 0
    assert "secret 'dbpass' is in use by the following service: sec" in rm.stderr

    # only the worker that runs the task got it
    w1_log = Path(w1.log_file).read_text(errors="replace")
    m1_log = Path(m1.log_file).read_text(errors="replace")
    held = "secrets held for this node's tasks:"
    assert any(held in line and secret_id in line for line in w1_log.splitlines()), w1_log
    assert not any(held in line and secret_id in line for line in m1_log.splitlines())

    task_dirs = [str(p) for p in Path("/run/shoal-files").glob(f"*/{task['ID']}")]
    assert len(task_dirs) == 1

    assert run_docker(lab.host("m1"), docker_config, "service", "rm", "sec").returncode == 0
    wait_until(lambda: not containers(lab, service_id, all_=True), 90, "the container gone")
    wait_until(lambda: not Path(task_dirs[0]).exists(), 30, "the task's tmpfs removed")
    rm = run_docker(lab.host("m1"), docker_config, "secret", "rm", "dbpass")
    assert rm.returncode == 0, rm.stderr
    assert run_docker(lab.host("m1"), docker_config, "config", "rm", "appcfg",
                      "hello").returncode == 0

    # nowhere in clear: data roots (Raft log and snapshots included), logs. The Raft files
    # hold the store sealed (so not even the secret's ID is in clear there).
    assert any("/raft/" in p for p in _grep(m1.data_root, "shoal-sealed-1"))
    assert not any("/raft/" in p for p in _grep(m1.data_root, secret_id))
    for host in (m1, w1):
        assert _grep(host.data_root, data) == [], host.name
        assert data not in Path(host.log_file).read_text(errors="replace"), host.name
    assert os.path.exists(os.path.join(m1.data_root, "raft"))


def test_shoal_cli_service_secret_flags(lab: LabState, tmp_path: Path) -> None:
    m1 = lab.host("m1")
    client = m1.client()
    for name, data in (("first", "one-data"), ("second", "two-data")):
        (tmp_path / name).write_text(data)
        assert shoal(m1, "secret", "create", name, str(tmp_path / name)).returncode == 0
    out = shoal(m1, "service", "create", "-d", "--name", "shsec",
                "--secret", "source=first,target=/etc/first,mode=0440",
                "--constraint", "node.role==worker", IMAGE, "sleep", "3600")
    assert out.returncode == 0, out.stderr
    service_id = out.stdout.strip()
    engine = docker.DockerClient(base_url=lab.engine, version="1.41")

    def read(path: str) -> str:
        found = containers(lab, service_id)
        if len(found) != 1:
            return ""
        try:
            code, output = engine.containers.get(found[0]["Id"]).exec_run(["cat", path])
        except docker.errors.APIError:  # it stopped since it was listed (the update)
            return ""
        return output.decode() if code == 0 else ""

    wait_until(lambda: read("/etc/first") == "one-data", 90, "/etc/first in the task")
    [first_task] = wait_until(lambda: running(client, "shsec"), 60, "the task running")
    out = shoal(m1, "service", "update", "-d", "--secret-rm", "first", "--secret-add",
                "second", "shsec")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: read("/run/secrets/second") == "two-data", 90,
               "the updated task with /run/secrets/second")
    [ref] = client.get(f"/services/{service_id}")["Spec"]["TaskTemplate"]["ContainerSpec"][
        "Secrets"]
    assert ref["SecretName"] == "second" and ref["File"]["Name"] == "second"
    # the replaced task's container is kept (task history) but its tmpfs went when it stopped
    assert containers(lab, service_id, all_=True) != containers(lab, service_id)
    wait_until(lambda: not list(Path("/run/shoal-files").glob(f"*/{first_task['ID']}")), 30,
               "the stopped task's tmpfs removed")
    # the first is no longer used: it can go; the second can't
    assert shoal(m1, "secret", "rm", "first").returncode == 0
    refused = shoal(m1, "secret", "rm", "second")
    assert refused.returncode != 0 and "shsec" in refused.stderr
    assert shoal(m1, "service", "rm", "shsec").returncode == 0
    wait_until(lambda: not containers(lab, service_id, all_=True), 90, "the containers gone")
    assert shoal(m1, "secret", "rm", "second").returncode == 0


def test_update_changes_labels_only_and_filters(lab: LabState) -> None:
    client = lab.host("m1").client()
    data = base64.b64encode(b"same-data").decode()
    secret_id = client.post("/secrets/create", {"Name": "upd", "Data": data})["ID"]
    client.post("/secrets/create", {"Name": "upd2", "Data": data,
                                    "Labels": {"com.docker.stack.namespace": "app"}})
    version = client.get("/secrets/upd")["Version"]["Index"]
    # stack deploy sends the same data again on a redeploy: fine, labels change
    client.post(f"/secrets/{secret_id}/update", {"Name": "upd", "Data": data,
                                                 "Labels": {"k": "v"}}, version=version)
    shown = client.get(f"/secrets/{secret_id[:6]}")
    assert shown["Spec"]["Labels"] == {"k": "v"} and shown["Version"]["Index"] > version
    with pytest.raises(APIError) as err:
        client.post(f"/secrets/{secret_id}/update", {"Name": "upd", "Data": "b3RoZXI=",
                                                     "Labels": {}},
                    version=shown["Version"]["Index"])
    assert err.value.status == 400 and "only updates to Labels" in str(err.value)
    with pytest.raises(APIError) as err:
        client.post(f"/secrets/{secret_id}/update", {"Name": "upd", "Labels": {}},
                    version=version)
    assert "update out of sequence" in str(err.value)
    assert client.get("/secrets/upd")["Spec"]["Labels"] == {"k": "v"}  # nothing changed

    def names(**filters: list[str]) -> list[str]:
        return [s["Spec"]["Name"] for s in client.get("/secrets", filters=filters)]

    assert names(name=["upd"]) == ["upd", "upd2"]  # a prefix, as Docker's
    assert names(names=["upd"]) == ["upd"]
    assert names(label=["com.docker.stack.namespace=app"]) == ["upd2"]
    assert names(id=[secret_id[:8]]) == ["upd"]
    with pytest.raises(APIError) as err:
        client.get("/secrets", filters={"driver": ["x"]})
    assert err.value.status == 400
    for name in ("upd", "upd2"):
        client.delete(f"/secrets/{name}")
    assert names() == []


def test_a_restarted_worker_keeps_a_running_tasks_secret(lab: LabState) -> None:
    client = lab.host("m1").client()
    secret_id = client.post("/secrets/create", {
        "Name": "kept", "Data": base64.b64encode(b"kept-data").decode()})["ID"]
    body = spec("keeper", Placement={"Constraints": ["node.role==worker"]})
    body["TaskTemplate"]["ContainerSpec"]["Secrets"] = [
        {"File": {"Name": "kept", "UID": "0", "GID": "0", "Mode": 0o444}, "SecretName": "kept"}]
    service_id = create(client, body)
    [task] = wait_until(lambda: running(client, "keeper"), 90, "the task running")
    [before] = containers(lab, service_id)

    labmod.stop_host(lab.name, "w1")
    labmod.start_host(lab.name, "w1")
    log = Path(lab.host("w1").log_file)

    def restarted() -> bool:
        text = log.read_text(errors="replace")
        held = [line for line in text.splitlines() if "secrets held for this node's tasks: "
                f"{secret_id}" in line]
        return "found 1 containers of this node to adopt" in text and len(held) == 2

    # the new daemon listed the container, pruned the tmpfs of gone tasks, got its set again
    wait_until(restarted, 60, "the restarted worker adopting its task")
    # the same container, still running, still with its secret
    [after] = wait_until(lambda: containers(lab, service_id), 30, "the container")
    assert after["Id"] == before["Id"]
    code, output = docker.DockerClient(base_url=lab.engine, version="1.41").containers.get(
        after["Id"]).exec_run(["cat", "/run/secrets/kept"])
    assert (code, output) == (0, b"kept-data")
    assert [t["ID"] for t in wait_until(lambda: running(client, "keeper"), 60, "running")] \
        == [task["ID"]]
    client.delete(f"/services/{service_id}")
    wait_until(lambda: not containers(lab, service_id, all_=True), 90, "the container gone")
    client.delete("/secrets/kept")
