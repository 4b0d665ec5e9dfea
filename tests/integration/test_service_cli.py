"""`shoal service` (and the docker CLI, when installed) through the HTTP API on a real
one-manager, one-worker cluster in one process (real Raft, orchestrators, scheduler,
dispatcher; fake executors): create and wait, scale, a failing update that pauses, rollback,
rm until the reaper has removed every task."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from proto import objects_pb2 as pb
from shoal.api.server import make_app
from tests.integration.test_worker_fake import Cluster, until


class Served:
    def __init__(self, cluster: Cluster, sock: str) -> None:
        self.cluster, self.sock = cluster, sock

    async def run(self, *args: str, docker: bool = False) -> subprocess.CompletedProcess[str]:
        if docker:
            cmd = ["docker", *args]
            env = dict(os.environ, DOCKER_HOST=f"unix://{self.sock}")
        else:
            cmd = [sys.executable, "-m", "shoal.cli.main", "-H", f"unix://{self.sock}", *args]
            env = dict(os.environ)
        return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True,
                                       timeout=60, env=env)

    def tasks(self) -> list[pb.Task]:
        return list(self.cluster.mgr.store.list(pb.Task))


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    cluster = Cluster(tmp_path)
    sock_dir = tempfile.mkdtemp(prefix="shoal")
    runner = web.AppRunner(make_app(cluster.m))
    try:
        await cluster.up()
        await runner.setup()
        await web.UnixSite(runner, f"{sock_dir}/api.sock").start()
        yield Served(cluster, f"{sock_dir}/api.sock")
    finally:
        await runner.cleanup()
        await cluster.down()
        shutil.rmtree(sock_dir, ignore_errors=True)


async def test_service_lifecycle_through_the_cli(served: Served) -> None:
    out = await served.run("service", "create", "--name", "web", "--replicas", "3",
                           "--update-monitor", "300ms", "shoal/busybox:latest", "sleep", "100")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].endswith("converged")
    out = await served.run("service", "scale", "web=4")
    assert out.returncode == 0, out.stderr
    out = await served.run("service", "ls")
    assert out.stdout.splitlines()[1].split()[1:4] == ["web", "replicated", "4/4"]

    out = await served.run("service", "update", "--container-label-add", "shoal.fake.exit=3",
                           "--container-label-add", "shoal.fake.run_for=0.2", "web")
    assert out.returncode == 1
    assert "service update paused: update paused due to failure" in out.stderr
    out = await served.run("service", "rollback", "web")
    assert out.returncode == 0, out.stderr
    assert "rollback: manually requested rollback" in out.stdout
    out = await served.run("service", "ps", "-f", "desired-state=running", "web")
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    assert sorted(r[1] for r in rows) == ["web.1", "web.2", "web.3", "web.4"]
    assert {r[5] for r in rows} == {"Running"}

    out = await served.run("service", "rm", "web")
    assert out.returncode == 0 and out.stdout == "web\n"
    await until(lambda: not served.tasks() and not served.cluster.mgr.store.list(pb.Service),
                15, "the reaper to remove the service and its tasks")


async def test_the_docker_cli_creates_and_updates(served: Served) -> None:
    # `make test` installs docker.io, which brings the docker CLI.
    assert shutil.which("docker"), "the docker CLI is missing: run `make deps`"
    out = await served.run("service", "create", "--name", "dk", "--replicas", "2",
                           "--update-monitor", "300ms", "shoal/busybox:latest", docker=True)
    assert out.returncode == 0, out.stderr
    assert "converged" in out.stdout
    out = await served.run("service", "update", "--force", "dk", docker=True)
    assert out.returncode == 0, out.stderr
    out = await served.run("service", "ls", docker=True)
    assert "2/2" in out.stdout
    out = await served.run("service", "create", "-d", "--name", "dk", "busybox", docker=True)
    assert out.returncode == 1
    assert out.stderr.strip() == ("Error response from daemon: service dk already exists: "
                                  "choose another name, or update it (docker service update)")
