"""Helpers for overlay network system tests: run commands inside tasks' containers, read
their addresses, and look at a lab host's kernel state."""

from __future__ import annotations

import subprocess
from typing import Any

from shoal.client import Client
from shoal.lab import HostState, LabState
from tests.system.conftest import wait_until
from tests.system.svc import engine, running

IMAGE = "shoal/busybox:latest"
# The task prints its overlay address first, then serves its hostname over HTTP on 8080
# (busybox httpd: GET /hostname answers the file /etc/hostname, the task's own).
SERVE = ["sh", "-c", "ip -4 -o addr show dev eth0; exec httpd -f -p 8080 -h /etc"]


def task_addr(task: dict[str, Any], network_id: str) -> str:
    """The task's address on a network (without the prefix length)."""
    for att in task.get("NetworksAttachments") or []:
        if att["Network"]["ID"] == network_id:
            return str(att["Addresses"][0].split("/")[0])
    raise AssertionError(f"task {task['ID']} is not on network {network_id}")


def wait_running(client: Client, service: str, count: int, timeout: float = 90.0
                 ) -> list[dict[str, Any]]:
    return wait_until(lambda: (r := running(client, service)) and len(r) == count and r,
                      timeout, f"{count} running tasks of {service}")


def exec_in_task(lab: LabState, task: dict[str, Any], *cmd: str, timeout: int = 10
                 ) -> tuple[int, str]:
    """Run a command in the task's container; (exit code, output)."""
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    container = engine(lab).containers.get(cid)
    result = container.exec_run(["timeout", str(timeout), *cmd])
    return int(result.exit_code), result.output.decode(errors="replace")


def first_line(lab: LabState, task: dict[str, Any]) -> str:
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    logs = engine(lab).containers.get(cid).logs(stdout=True, stderr=True).decode()
    return logs.splitlines()[0] if logs else ""


def http_get(lab: LabState, task: dict[str, Any], url: str, timeout: int = 5) -> str | None:
    # busybox-static's wget crashes with -q or -T here: quiet it with a redirect, bound it
    # with timeout(1).
    code, out = exec_in_task(lab, task, "sh", "-c", f"wget -O - {url} 2>/dev/null",
                             timeout=timeout)
    return out.strip() if code == 0 else None


def in_host(host: HostState, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--net=/run/netns/{host.namespace}", *argv],
                          capture_output=True, text=True, check=True).stdout


def network_id(client: Client, name: str) -> str:
    return str(client.get(f"/networks/{name}")["Id"])
