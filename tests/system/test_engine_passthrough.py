"""Issue 9 item 10: a node's Shoal socket is a drop-in for its Docker socket. What is not the
swarm subset goes to the node's engine: the docker CLI's `ps`, `images`, `inspect`, `logs
[-f]`, `exec [-i] [-t]`, `run`, `volume` and docker-py's containers and images work through it,
while the swarm routes stay Shoal's. One lab (1 manager) with a service that prints a line a
second serves every test but the last, which runs shoald on its own without a reachable engine.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from shoal import lab as labmod
from tests.system.conftest import make_lab_name, teardown_lab, wait_until

pytestmark = pytest.mark.system

DOCKER = "/usr/local/bin/docker"  # the docker 28.2 CLI (Debian's docker.io is older)
IMAGE = "shoal/busybox:latest"
SERVICE = "tick"
TICKER = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"


def docker_cli(sock: str, config: Path, *args: str, input: str | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": "unix://" + sock, "DOCKER_CONFIG": str(config)}
    return subprocess.run([DOCKER, *args], input=input, capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


class Node:
    """The lab's manager as the docker CLI sees it, and its engine for comparison."""

    def __init__(self, lab: labmod.LabState, config: Path) -> None:
        assert lab.engine is not None
        self.lab = lab
        self.sock = lab.host("m1").api_socket
        self.engine_sock = lab.engine.removeprefix("unix://")
        self.config = config

    def docker(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return docker_cli(self.sock, self.config, *args, **kwargs)

    def engine_docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        return docker_cli(self.engine_sock, self.config, *args)

    def engine_client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url="unix://" + self.engine_sock, version="1.41")

    def task_container(self) -> str:
        found = self.engine_client().containers.list(
            filters={"label": f"com.docker.swarm.service.name={SERVICE}"})
        return found[0].id if found else ""


@pytest.fixture(scope="module")
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Node]:
    name = make_lab_name(request.node.nodeid)
    try:
        lab = labmod.up(name, 1, 0)
        node = Node(lab, tmp_path_factory.mktemp("docker-config"))
        out = node.docker("service", "create", "--detach", "--name", SERVICE, IMAGE,
                          "sh", "-c", TICKER)
        assert out.returncode == 0, out.stderr
        wait_until(node.task_container, 60, "the service's task container running")
        yield node
    finally:
        teardown_lab(name)


def test_ps_images_and_inspect_show_the_engine(node: Node) -> None:
    ctr = node.task_container()
    fmt = "{{.ID}} {{.Image}} {{.Names}} {{.Status}}"
    ps = node.docker("ps", "--no-trunc", "--format", fmt)
    assert ps.returncode == 0, ps.stderr
    assert ctr in ps.stdout and f" {SERVICE}.1." in ps.stdout, ps.stdout
    assert [line.split()[:3] for line in ps.stdout.splitlines()] == \
        [line.split()[:3] for line in node.engine_docker("ps", "--no-trunc", "--format",
                                                         fmt).stdout.splitlines()]

    images = node.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert images.returncode == 0, images.stderr
    assert f"{IMAGE} " in images.stdout, images.stdout
    direct = node.engine_docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert sorted(images.stdout.splitlines()) == sorted(direct.stdout.splitlines())

    fmt = '{{.Id}} {{index .Config.Labels "com.docker.swarm.service.name"}} {{.State.Running}}'
    inspect = node.docker("inspect", "--format", fmt, ctr)
    assert inspect.returncode == 0, inspect.stderr
    assert inspect.stdout.split() == [ctr, SERVICE, "true"]


def test_logs_and_logs_follow(node: Node) -> None:
    ctr = node.task_container()
    logs = node.docker("logs", ctr)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.startswith("tick 0\n"), logs.stdout
    last = int(logs.stdout.splitlines()[-1].split()[1])

    env = {**os.environ, "DOCKER_HOST": "unix://" + node.sock,
           "DOCKER_CONFIG": str(node.config)}
    follow = subprocess.Popen([DOCKER, "logs", "-f", "--tail", "1", ctr], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        seen = []
        while not seen or int(seen[-1].split()[1]) <= last + 2:  # lines written after `logs`
            line = follow.stdout.readline()
            assert line, f"docker logs -f ended: {follow.wait()} {follow.stderr.read()}"
            seen.append(line)
        assert follow.poll() is None  # still following
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(30)
    numbers = [int(line.split()[1]) for line in seen]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), seen


def test_exec_plain_with_stdin_and_with_a_tty(node: Node) -> None:
    ctr = node.task_container()
    hostname = node.engine_client().containers.get(ctr).attrs["Config"]["Hostname"]
    plain = node.docker("exec", ctr, "cat", "/etc/hostname")  # multiplexed stream, no stdin
    assert (plain.returncode, plain.stdout) == (0, hostname + "\n"), plain.stderr
    both = node.docker("exec", ctr, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (both.returncode, both.stdout, both.stderr) == (3, "out\n", "err\n")

    # -i: the hijacked connection carries stdin in; the CLI half-closes it at stdin's end
    # and still reads the answer.
    piped = node.docker("exec", "-i", ctr, "sh", "-c", "read x; echo got $x",
                        input="hello\n")
    assert (piped.returncode, piped.stdout) == (0, "got hello\n"), piped.stderr

    # -t and -it need a terminal: script(1) gives the CLI one.
    tty = subprocess.run(["script", "-qc", f"{DOCKER} exec -t {ctr} sh -c 'tty; echo tty-ok'",
                          "/dev/null"], capture_output=True, text=True, timeout=60,
                         env=_env(node))
    assert tty.returncode == 0, tty.stdout + tty.stderr
    assert "/dev/pts/" in tty.stdout and "tty-ok" in tty.stdout, tty.stdout
    it = subprocess.run(["script", "-qc", f"{DOCKER} exec -it {ctr} sh", "/dev/null"],
                        input="echo hi-$((40+2))\nexit\n", capture_output=True, text=True,
                        timeout=60, env=_env(node))
    assert it.returncode == 0, it.stdout + it.stderr
    assert "hi-42" in it.stdout, it.stdout  # the shell in the container computed it


def test_exec_stdin_and_output_pass_byte_for_byte(node: Node) -> None:
    ctr = node.task_container()
    data = secrets.token_bytes(5 * 1024 * 1024)  # more than the proxy buffers either way
    out = subprocess.run([DOCKER, "exec", "-i", ctr, "cat"], input=data, capture_output=True,
                         env=_env(node), timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data


def test_run_it_and_attach(node: Node) -> None:
    name = "pt-att-" + secrets.token_hex(3)
    it = subprocess.run(["script", "-qc", f"{DOCKER} run -it --rm {IMAGE} sh", "/dev/null"],
                        input="echo it-$((6*7))\nexit\n", capture_output=True, text=True,
                        timeout=60, env=_env(node))
    assert it.returncode == 0, it.stdout + it.stderr
    assert "it-42" in it.stdout, it.stdout
    try:
        started = node.docker("run", "-di", "--name", name, IMAGE, "sh", "-c",
                              "read x; echo attached $x")
        assert started.returncode == 0, started.stderr
        # attach: stdin goes in over the hijacked connection, the output comes back, and the
        # CLI ends with the container (stdin stays open: at its end dockerd ends the attach).
        attach = subprocess.Popen([DOCKER, "attach", name], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=_env(node))
        try:
            assert attach.stdin is not None and attach.stdout is not None
            attach.stdin.write("yes\n")
            attach.stdin.flush()
            assert attach.stdout.readline() == "attached yes\n"
            assert attach.wait(30) == 0
        finally:
            if attach.poll() is None:
                attach.kill()
            attach.communicate()
    finally:
        node.engine_docker("rm", "-f", name)


def _env(node: Node) -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": "unix://" + node.sock,
            "DOCKER_CONFIG": str(node.config)}


def test_run_rm_creates_attaches_starts_waits_and_removes(node: Node) -> None:
    name = "pt-run-" + secrets.token_hex(3)
    run = node.docker("run", "--rm", "--name", name, IMAGE, "echo", "hi")
    assert (run.returncode, run.stdout) == (0, "hi\n"), run.stderr
    engine = node.engine_client()
    wait_until(lambda: not engine.containers.list(all=True, filters={"name": name}), 30,
               f"{name} removed (--rm)")
    failed = node.docker("run", "--rm", IMAGE, "sh", "-c", "exit 7")
    assert failed.returncode == 7, failed.stderr


def test_volume_create_ls_rm(node: Node) -> None:
    name = "pt-vol-" + secrets.token_hex(3)
    try:
        created = node.docker("volume", "create", name)
        assert (created.returncode, created.stdout) == (0, name + "\n"), created.stderr
        ls = node.docker("volume", "ls", "--format", "{{.Driver}} {{.Name}}")
        assert f"local {name}\n" in ls.stdout, ls.stdout
        assert name in [v.name for v in node.engine_client().volumes.list()]
        removed = node.docker("volume", "rm", name)
        assert (removed.returncode, removed.stdout) == (0, name + "\n"), removed.stderr
        assert name not in [v.name for v in node.engine_client().volumes.list()]
        missing = node.docker("volume", "rm", name)  # the engine's own error comes back
        assert missing.returncode == 1 and "no such volume" in missing.stderr, missing.stderr
    finally:
        node.engine_docker("volume", "rm", "-f", name)


def test_docker_py_containers_exec_and_images(node: Node) -> None:
    client = docker.DockerClient(base_url="unix://" + node.sock)
    ctr = node.task_container()
    assert ctr in [c.id for c in client.containers.list()]
    container = client.containers.get(ctr)
    assert container.labels["com.docker.swarm.service.name"] == SERVICE
    result = container.exec_run(["sh", "-c", "echo out; echo err >&2"], demux=True)
    assert (result.exit_code, result.output) == (0, (b"out\n", b"err\n"))
    assert any(IMAGE in image.tags for image in client.images.list())


def test_swarm_routes_stay_shoal_and_unknown_paths_get_404(node: Node) -> None:
    ls = node.docker("service", "ls", "--format", "{{.Name}} {{.Replicas}}")
    assert (ls.returncode, ls.stdout) == (0, f"{SERVICE} 1/1\n"), ls.stderr
    api = docker.APIClient(base_url="unix://" + node.sock)
    # Neither Shoal's nor the engine's: the engine's answer, as the engine gives it.
    answer = api.get(api._url("/no/such/thing"))
    direct = docker.APIClient(base_url="unix://" + node.engine_sock, version="1.41")
    engine_answer = direct.get(direct._url("/no/such/thing"))
    assert (answer.status_code, answer.content) == (404, engine_answer.content)
    assert answer.json() == {"message": "page not found"}
    shoal_answer = api.put(api._url("/services"))  # a swarm path never goes to the engine
    assert shoal_answer.status_code == 404
    message = shoal_answer.json()["message"]
    assert message.startswith("page not found: PUT /v") and message.endswith("/services")
    assert shoal_answer.headers["Server"].startswith("Shoal/")


@pytest.mark.parametrize("argv,message", [
    # dockerd not running: its socket gone, or left behind by a dockerd that died
    (["--engine", "unix://{root}/gone.sock"],
     "container engine (unix://{root}/gone.sock) is not reachable (No such file or "
     "directory): is dockerd running?"),
    (["--engine", "unix://{root}/stale.sock"],
     "container engine (unix://{root}/stale.sock) is not reachable (Connection refused): "
     "is dockerd running?"),
    (["--executor", "fake"], "this node runs no container engine"),
])
def test_without_an_engine_the_cli_gets_a_clear_503(tmp_path: Path, argv: list[str],
                                                    message: str) -> None:
    with socket.socket(socket.AF_UNIX) as stale:  # bound, never listening: refused
        stale.bind(str(tmp_path / "stale.sock"))
    sock = tmp_path / "shoal.sock"
    shoald = Path(sys.executable).parent / "shoald"
    with open(tmp_path / "shoald.log", "wb") as log:
        proc = subprocess.Popen([str(shoald), "--data-root", str(tmp_path / "data"),
                                 "--host", f"unix://{sock}", "--hostname", "lonely",
                                 *[a.format(root=tmp_path) for a in argv]],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        config = tmp_path / "docker-config"
        wait_until(lambda: docker_cli(str(sock), config, "version").returncode == 0 or
                   proc.poll() is not None, 30, "shoald answering")
        assert proc.poll() is None, (tmp_path / "shoald.log").read_text()
        ps = docker_cli(str(sock), config, "ps")
        assert ps.returncode == 1
        assert ps.stderr.startswith("Error response from daemon: "), ps.stderr
        assert message.format(root=tmp_path) in ps.stderr, ps.stderr
        version = docker_cli(str(sock), config, "version", "--format", "{{.Server.Version}}")
        assert version.returncode == 0, version.stderr  # Shoal's own routes still answer
    finally:
        proc.terminate()
        proc.wait(30)
