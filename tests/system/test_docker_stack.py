"""Issue 9, item 6: `docker stack deploy` (all client-side, reference §2.7) with the real docker
CLI against a lab manager: a stack of three services on two overlay networks, with a secret
and a config from files, a named volume, published ports and `deploy` (replicas, resources,
placement, update_config, restart_policy) comes up and serves through the routing mesh; its
services reach each other by service name over the overlay; `stack ls/services/ps` show it;
a redeploy with a new image rolls it; `stack rm` removes everything at once (the networks
while their tasks are still stopping, as Docker allows).

One lab (a manager and a worker) for the module; the tests run in order on one stack.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shoal.lab import HostState, LabState
from tests.system.conftest import module_lab, wait_until
from tests.system.helpers import ok, run_docker
from tests.system.svc import engine

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

TOKEN = "s3cret-token"
PAGE = "hello from a stack config\n"
SERVICES = ("app_api", "app_probe", "app_web")

COMPOSE = """\
version: "3.8"
services:
  web:
    image: shoal/busybox:{image}
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    networks: [front]
    ports: ["8080:80"]
    configs:
      - source: page
        target: /www/index.html
    stop_grace_period: 2s
    deploy:
      replicas: 2
      resources:
        limits: {{cpus: "0.5", memory: 64M}}
        reservations: {{cpus: "0.1", memory: 16M}}
      placement:
        constraints: ["node.platform.os == linux"]
      update_config: {{parallelism: 1, delay: 1s, order: start-first}}
      restart_policy: {{condition: on-failure, delay: 2s, max_attempts: 3}}
  api:
    image: shoal/busybox:{image}
    command: ["httpd", "-f", "-p", "81", "-h", "/run/secrets"]
    init: true
    networks: [front, back]
    secrets: [token]
    volumes: ["data:/data"]
    deploy:
      placement:
        constraints: ["node.role == worker"]
        max_replicas_per_node: 1
  probe:
    image: shoal/busybox:{image}
    init: true
    command: ["sh", "-c", "mkdir -p /tmp/www; httpd -p 80 -h /tmp/www; while true; do
      wget -q -O /tmp/www/api.tmp http://api:81/token && mv /tmp/www/api.tmp /tmp/www/api.txt;
      sleep 1; done"]
    networks: [back]
    ports:
      - {{target: 80, published: 8081, mode: ingress}}
networks:
  front:
    driver: overlay
  back: {{}}
volumes:
  data: {{}}
secrets:
  token:
    file: ./token.txt
configs:
  page:
    file: ./page.html
"""


lab = module_lab()


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stack")
    (path / "token.txt").write_text(TOKEN)
    (path / "page.html").write_text(PAGE)
    return path


def deploy(lab: LabState, config: Path, stack_dir: Path, image: str
           ) -> subprocess.CompletedProcess[str]:
    compose = stack_dir / f"compose-{image}.yml"
    compose.write_text(COMPOSE.format(image=image))
    return run_docker(lab.host("m1"), config, "stack", "deploy", "-c", str(compose), "app")


def docker_json(lab: LabState, config: Path, *args: str) -> Any:
    return json.loads(ok(run_docker(lab.host("m1"), config, *args)))


def table(out: str) -> list[list[str]]:
    """A docker table's rows split on runs of 2+ spaces, the header first."""
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip()]


def fetch(client: HostState, url: str) -> str:
    """GET `url` from a lab host's namespace ('' if it failed)."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{client.namespace}", "wget", "-q",
                          "-T", "3", "-O", "-", url], capture_output=True, text=True,
                         timeout=20)
    return out.stdout if out.returncode == 0 else ""


def replicas(lab: LabState, config: Path) -> dict[str, str]:
    rows = table(ok(run_docker(lab.host("m1"), config, "stack", "services", "app")))
    return {row[1]: row[3] for row in rows[1:]}


def converged(lab: LabState, config: Path) -> bool:
    got = {name: count.split()[0] for name, count in replicas(lab, config).items()}
    return got == {"app_api": "1/1", "app_probe": "1/1", "app_web": "2/2"}


def serves(lab: LabState) -> bool:
    """Every lab host's address answers both published ports: the config's page, and the
    secret as `probe` fetched it from `api` by name over the `back` overlay."""
    client = lab.host("m1")
    return all(fetch(client, f"http://{h.address}:8080/") == PAGE and
               fetch(client, f"http://{h.address}:8081/api.txt") == TOKEN
               for h in lab.hosts)


def test_deploy_creates_the_stack_and_it_serves(lab: LabState, docker_config: Path,
                                                 stack_dir: Path) -> None:
    out = deploy(lab, docker_config, stack_dir, "v1")
    assert out.returncode == 0, out.stderr
    for line in ("Creating network app_front", "Creating network app_back",
                 "Creating secret app_token", "Creating config app_page",
                 "Creating service app_web", "Creating service app_api",
                 "Creating service app_probe"):
        assert line in out.stdout, out.stdout
    assert table(ok(run_docker(lab.host("m1"), docker_config, "stack", "ls"))) == \
        [["NAME", "SERVICES"], ["app", "3"]]
    wait_until(lambda: converged(lab, docker_config), 90, "the stack's replicas running")
    wait_until(lambda: serves(lab), 60, "ports 8080 and 8081 answering on every host")


def test_stack_services_and_ps(lab: LabState, docker_config: Path) -> None:
    m1 = lab.host("m1")
    rows = table(ok(run_docker(m1, docker_config, "stack", "services", "app")))
    assert rows[0] == ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
    by_name = {row[1]: row for row in rows[1:]}
    assert sorted(by_name) == list(SERVICES)
    assert by_name["app_api"][3] == "1/1 (max 1 per node)"
    assert by_name["app_web"][2:] == ["replicated", "2/2", "shoal/busybox:v1",
                                      "*:8080->80/tcp"]
    assert by_name["app_probe"][5] == "*:8081->80/tcp"
    ps = table(ok(run_docker(m1, docker_config, "stack", "ps", "app")))
    assert ps[0] == ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR",
                     "PORTS"]
    names = sorted(row[1] for row in ps[1:])
    assert names == ["app_api.1", "app_probe.1", "app_web.1", "app_web.2"]
    api = next(row for row in ps[1:] if row[1] == "app_api.1")
    assert api[3] == "w1"  # placement: node.role == worker


def test_the_compose_deploy_section_arrived(lab: LabState, docker_config: Path) -> None:
    web = docker_json(lab, docker_config, "service", "inspect", "app_web")[0]["Spec"]
    assert web["Labels"] == {"com.docker.stack.image": "shoal/busybox:v1",
                             "com.docker.stack.namespace": "app"}
    task = web["TaskTemplate"]
    assert task["ContainerSpec"]["Labels"] == {"com.docker.stack.namespace": "app"}
    assert task["ContainerSpec"]["StopGracePeriod"] == 2_000_000_000
    assert task["ContainerSpec"]["Configs"][0]["File"]["Name"] == "/www/index.html"
    assert task["Resources"] == {
        "Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20},
        "Reservations": {"NanoCPUs": 100_000_000, "MemoryBytes": 16 << 20}}
    assert task["Placement"]["Constraints"] == ["node.platform.os == linux"]
    assert task["RestartPolicy"] == {"Condition": "on-failure", "Delay": 2_000_000_000,
                                     "MaxAttempts": 3}
    assert task["Networks"][0]["Aliases"] == ["web"]
    assert web["Mode"] == {"Replicated": {"Replicas": 2}}
    assert web["UpdateConfig"]["Order"] == "start-first"
    assert web["UpdateConfig"]["Delay"] == 1_000_000_000
    assert web["EndpointSpec"]["Ports"] == [{"Protocol": "tcp", "TargetPort": 80,
                                             "PublishedPort": 8080,
                                             "PublishMode": "ingress"}]
    api = docker_json(lab, docker_config, "service", "inspect", "app_api")[0]["Spec"]
    assert api["TaskTemplate"]["ContainerSpec"]["Init"] is True
    assert api["TaskTemplate"]["Placement"]["MaxReplicas"] == 1
    # The named volume: the engine created it with the stack's label.
    assert api["TaskTemplate"]["ContainerSpec"]["Mounts"] == [{
        "Type": "volume", "Source": "app_data", "Target": "/data",
        "VolumeOptions": {"Labels": {"com.docker.stack.namespace": "app"}}}]
    assert engine(lab).volumes.get("app_data").attrs["Labels"] == \
        {"com.docker.stack.namespace": "app"}
    assert api["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["SecretName"] == "app_token"
    networks = docker_json(lab, docker_config, "network", "inspect", "app_front", "app_back")
    for network in networks:
        assert network["Driver"] == "overlay" and network["Scope"] == "swarm"
        assert network["Labels"] == {"com.docker.stack.namespace": "app"}


def test_redeploy_with_a_new_image_rolls_the_services(lab: LabState, docker_config: Path,
                                                      stack_dir: Path) -> None:
    m1 = lab.host("m1")
    before = set(ok(run_docker(m1, docker_config, "stack", "ps", "app", "-q")).split())
    out = deploy(lab, docker_config, stack_dir, "v2")
    assert out.returncode == 0, out.stderr
    for name in SERVICES:
        assert f"Updating service {name} (id: " in out.stdout, out.stdout

    def rolled() -> bool:
        ps = table(ok(run_docker(m1, docker_config, "stack", "ps", "app", "--filter",
                                 "desired-state=running", "--format",
                                 "{{.ID}}  {{.Image}}  {{.CurrentState}}")))
        return len(ps) == 4 and all(row[0] not in before and row[1] == "shoal/busybox:v2"
                                    and row[2].startswith("Running") for row in ps)

    wait_until(rolled, 120, "every task replaced by one of shoal/busybox:v2")
    for name in SERVICES:
        image = ok(run_docker(m1, docker_config, "service", "inspect", name, "--format",
                              "{{.Spec.TaskTemplate.ContainerSpec.Image}}"))
        assert image.strip() == "shoal/busybox:v2"
    assert "shoal/busybox:v2" in ok(run_docker(m1, docker_config, "stack", "services", "app"))
    wait_until(lambda: serves(lab), 60, "the rolled stack serving on every host")


def test_redeploy_with_a_changed_secret_is_refused_as_docker_does(
        lab: LabState, docker_config: Path, stack_dir: Path) -> None:
    (stack_dir / "token.txt").write_text("another-token")
    try:
        out = deploy(lab, docker_config, stack_dir, "v2")
    finally:
        (stack_dir / "token.txt").write_text(TOKEN)
    assert out.returncode != 0
    assert "failed to update secret app_token" in out.stderr
    assert "only updates to Labels are allowed" in out.stderr


def test_stack_rm_removes_services_networks_secret_and_config(
        lab: LabState, docker_config: Path) -> None:
    m1 = lab.host("m1")
    front = docker_json(lab, docker_config, "network", "inspect", "app_front")[0]
    subnet = front["IPAM"]["Config"][0]["Subnet"]
    out = run_docker(m1, docker_config, "stack", "rm", "app")
    assert out.returncode == 0, out.stderr
    for line in [*(f"Removing service {s}" for s in SERVICES), "Removing secret app_token",
                 "Removing config app_page", "Removing network app_front",
                 "Removing network app_back"]:
        assert line in out.stdout, out.stdout
    for kind in ("service", "network", "secret", "config"):
        listed = ok(run_docker(m1, docker_config, kind, "ls", "--format", "{{.Name}}"))
        assert not [n for n in listed.split() if n.startswith("app_")], (kind, listed)
    assert table(ok(run_docker(m1, docker_config, "stack", "ls"))) == [["NAME", "SERVICES"]]
    # The removed network's subnet is free once its last task has stopped (not before).
    wait_until(lambda: run_docker(m1, docker_config, "network", "create", "-d", "overlay",
                                  "--subnet", subnet, "reuse").returncode == 0,
               60, f"subnet {subnet} of the removed app_front free again")
    ok(run_docker(m1, docker_config, "network", "rm", "reuse"))
    assert not fetch(m1, f"http://{m1.address}:8080/")
