"""Sandboxes on a real private dockerd: a task on an overlay network runs in a pause
container's namespace, plumbed before the task's process starts.

The data plane here is the test's own `NodeNetwork` (a dummy interface with the
attachment's address, made with `ip` inside the sandbox namespace), so this checks the
executor's half: the order (sandbox, plumb, then the task), the resolver and hostname, and
that the sandbox goes with the task. The real data plane is tested in test_overlay*.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.parse
from collections.abc import Sequence

import pytest

from proto import cluster_pb2
from proto import objects_pb2 as pb
from shoal import engine as enginemod
from shoal import engine_api
from tests.system.test_executor_docker import Reports, make_task, until
from worker.executor.docker import sandbox as sb
from worker.executor.docker.executor import DockerExecutor
from worker.task_manager import TaskManager

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]


class DummyNetwork:
    """Plumbs each attachment as a veth pair `ethN` (peer `pN`) inside the sandbox, with its
    address (this kernel has no dummy interfaces)."""

    def __init__(self) -> None:
        self.attached: dict[str, str] = {}
        self.detached: list[str] = []

    def update(self, message: cluster_pb2.AssignmentsMessage) -> None:
        pass

    async def attach(self, key: str, netns_path: str,
                     attachments: Sequence[pb.NetworkAttachment]) -> None:
        for i, att in enumerate(attachments):
            ip = ["nsenter", f"--net={netns_path}", "ip"]
            await asyncio.to_thread(subprocess.run, ip + ["link", "add", f"eth{i}", "type",
                                                          "veth", "peer", "name", f"p{i}"],
                                    check=False)
            await asyncio.to_thread(subprocess.run, ip + ["addr", "replace", att.addresses[0],
                                                          "dev", f"eth{i}"], check=True)
            for dev in (f"p{i}", f"eth{i}"):
                await asyncio.to_thread(subprocess.run, ip + ["link", "set", dev, "up"],
                                        check=True)
        self.attached[key] = netns_path

    async def detach(self, key: str) -> None:
        self.attached.pop(key, None)
        self.detached.append(key)


def on_network(task: pb.Task, addr: str) -> pb.Task:
    task.networks.add(network_id="net1", addresses=[addr], aliases=["db"])
    task.spec.container.hostname = "web-host"
    return task


def test_task_process_starts_with_its_address_resolver_and_hostname(
        engine: enginemod.Engine) -> None:
    async def run() -> None:
        net = DummyNetwork()
        ex = DockerExecutor(engine.socket, network=net)
        # The first thing the process does is print its addresses: no wait, no retry.
        task = on_network(make_task("n1", "ip -o -4 addr show eth0; cat /etc/resolv.conf;"
                                    " hostname; sleep 60"), "10.77.1.5/24")
        reports = Reports()
        tm = TaskManager(task, ex, reports)
        tm.start()
        try:
            await until(lambda: reports.last.state == pb.RUNNING, what="running")
            out = b""
            async def read() -> bool:
                nonlocal out
                out = b"".join([r[2] async for r in ex.logs(task.id)])
                return b"web-host" in out
            for _ in range(100):
                if await read():
                    break
                await asyncio.sleep(0.1)
            lines = out.decode().splitlines()
            assert "10.77.1.5/24" in lines[0], lines
            assert "nameserver 127.0.0.11" in out.decode(), out
            assert "web-host" in lines, lines
            assert task.id in net.attached
            task.desired_state = pb.REMOVE
            tm.update(task)
            await until(lambda: tm.done, what="removed")
            assert task.id in net.detached
            label = urllib.parse.quote(json.dumps({"label": [f"{sb.LABEL_SANDBOX}={task.id}"]}))
            found = await asyncio.to_thread(
                engine_api.api, engine.socket, "GET", f"/containers/json?all=1&filters={label}")
            assert found == [], "the sandbox must go with the task"
        finally:
            await tm.stop()
            await ex.remove(task.id)
            await ex.close()
    asyncio.run(run())
