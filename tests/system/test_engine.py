"""System tests of the private container engine (shoal/engine.py) and the test images.

A real dockerd runs in the machine's own network namespace with its own data and exec roots;
containers use network mode `none`. The images come from `make images` (images/build.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from shoal import engine as enginemod
from shoal import engine_api, procs
from tests.system.conftest import root_namespace_snapshot, wait_until

pytestmark = pytest.mark.system

BUILD = Path(__file__).resolve().parents[2] / "images" / "build.py"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for an engine root: containerd's sockets under it must fit in 107
    bytes, and pytest's tmp_path is longer under pytest-xdist."""
    path = Path(tempfile.mkdtemp(prefix="shl-eng-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _client(eng: enginemod.Engine) -> docker.DockerClient:
    return docker.DockerClient(base_url=eng.socket, version="auto", timeout=60)


def _run(client: docker.DockerClient, image: str, cmd: list[str]) -> str:
    out = client.containers.run(image, cmd, network_mode="none", remove=True)
    return out.decode() if isinstance(out, bytes) else str(out)


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:  # exited meanwhile (other tests run beside this one)
        return ""


def _processes_naming(path: Path) -> list[int]:
    mark = str(path)
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and mark in _cmdline(p)]


def _mounts_under(path: Path) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(path) in line]


def test_engine_lifecycle(short_tmp: Path) -> None:
    before = root_namespace_snapshot()
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    root = short_tmp / "e"
    eng = enginemod.start_engine(root, "life")
    assert eng.running() and eng.socket == f"unix://{root}/docker.sock"
    assert enginemod.attach_engine(root) == enginemod.Engine(root, "e", eng.pid,
                                                             eng.storage_driver)
    info = engine_api.api(eng.socket, "GET", "/info")
    assert info["Driver"] == eng.storage_driver in ("overlay2", "vfs")
    assert info["DockerRootDir"] == str(root / "data")
    assert "org.shoal.engine=life" in info["Labels"]

    assert not engine_api.has_image(eng.socket, "shoal/busybox:latest")
    loaded = engine_api.load_image(eng, engine_api.images_dir() / "busybox.tar")
    assert loaded == ["shoal/busybox:latest", "shoal/busybox:v1", "shoal/busybox:v2"]
    assert engine_api.has_image(eng.socket, "shoal/busybox:latest")

    client = _client(eng)
    assert _run(client, "shoal/busybox:latest", ["echo", "hello"]) == "hello\n"
    page = _run(client, "shoal/busybox:latest",
                ["sh", "-c", "httpd -h /var/www && wget -q -O- localhost"])
    assert page == "hello from shoal/busybox\n"
    assert _run(client, "shoal/busybox:v2", ["sh", "-c", "echo $SHOAL_IMAGE"]) == "v2\n"
    ids = {i.id for tag in ("latest", "v2") for i in [client.images.get(f"shoal/busybox:{tag}")]}
    assert len(ids) == 2, "v2 must be a different image"
    names = _run(client, "shoal/busybox:latest", ["sh", "-c", "id -un; grep -c . /etc/group"])
    assert names.split() == ["root", "3"]
    client.containers.run("shoal/busybox:latest", ["sleep", "600"], network_mode="none",
                          detach=True, labels={engine_api.SWARM_NODE_LABEL: "n1"})
    client.close()

    started = time.monotonic()
    eng.stop()  # removes the sleeping container first: no 10 s stop timeout
    assert time.monotonic() - started < 10
    assert not eng.running() and not os.path.exists(f"/proc/{eng.pid}")
    assert enginemod.attach_engine(root) is None
    assert _processes_naming(root) == []
    assert root_namespace_snapshot() == before
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forward

    # The same root starts again with its images; purge deletes everything.
    again = enginemod.start_engine(root, "life")
    assert engine_api.has_image(again.socket, "shoal/busybox:v2")
    again.purge()
    assert not root.exists() and _mounts_under(root) == []


def test_crashed_engine_leaves_nothing(short_tmp: Path) -> None:
    """A SIGKILLed dockerd leaves shims and containers; stop() still ends them all."""
    root = short_tmp / "e"
    eng = enginemod.start_engine(root, "crash")
    try:
        engine_api.load_image(eng, engine_api.images_dir() / "busybox.tar")
        client = _client(eng)
        box = client.containers.run("shoal/busybox:latest", ["sleep", "600"],
                                    network_mode="none", detach=True)
        pid = box.attrs["State"]["Pid"] or client.containers.get(box.id).attrs["State"]["Pid"]
        client.close()
        os.kill(eng.pid, signal.SIGKILL)
        wait_until(lambda: not eng.running(), 5, "dockerd to die")
        assert pid and os.path.exists(f"/proc/{pid}"), "the container outlives its dockerd"
    finally:
        eng.purge()
    assert not procs.alive(pid)  # gone, or a zombie until init reaps it
    assert _processes_naming(root) == [] and not root.exists()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/docker/{box.id}"))


def test_session_engine(engine: enginemod.Engine) -> None:
    client = _client(engine)
    assert _run(client, "shoal/busybox", ["sh", "-c", "echo $PATH; which nc nslookup"]).split() \
        == ["/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "/usr/bin/nc", "/usr/bin/nslookup"]
    client.close()


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(enginemod.EngineError, match="storage-driver btrfs it exited"):
        enginemod.start_engine(tmp_path / "b", "bad", storage_driver="btrfs", timeout=10)
    enginemod.remove_root(tmp_path / "b")
    with pytest.raises(enginemod.EngineError, match="too long"):
        enginemod.start_engine(tmp_path / ("x" * 100), "long")
    with pytest.raises(enginemod.EngineError, match="make images"):
        engine_api.load_image("unix:///nonexistent.sock", tmp_path / "none.tar")
    with pytest.raises(enginemod.EngineError, match="is its dockerd running"):
        engine_api.api("unix:///nonexistent.sock", "GET", "/info")
    assert not engine_api.ping("unix:///nonexistent.sock")


def test_image_build_is_deterministic(tmp_path: Path) -> None:
    for name in ("a.tar", "b.tar"):
        subprocess.run([sys.executable, str(BUILD), str(tmp_path / name)], check=True,
                       capture_output=True)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
