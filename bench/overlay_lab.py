"""The overlay benchmark's services and how it finds their tasks (bench/overlay_bench.py):
two overlay networks (`plain`, `enc`), a global service on each (`pa`, `ea`) and a
replicated `web` on plain, all busybox httpd serving /etc on PORT; each task's address,
sandbox PID, hostname; the scale call as `shoal service scale` makes it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from bench.overlay_probes import PORT  # noqa: E402
from bench.waiting import wait_for  # noqa: E402
from shoal.cli.service import post_update  # noqa: E402
from shoal.client import Client  # noqa: E402

IMAGE = "shoal/busybox:latest"
# GET /hostname: the task's hostname
SERVE = ["sh", "-c", f"exec httpd -f -p {PORT} -h /etc"]
WEB_REPLICAS = 2


def ip_netns(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def running(client: Client, service: str) -> list[dict[str, Any]]:
    tasks = client.get("/tasks", filters={"service": [service], "desired-state": ["running"]})
    return [t for t in tasks if t["Status"]["State"] == "running"]


def wait_running(client: Client, service: str, count: int) -> list[dict[str, Any]]:
    return list(wait_for(lambda: (r := running(client, service)) and len(r) == count and r,
                         120, f"{count} running tasks of {service}", interval=0.2))


def task_addr(task: dict[str, Any]) -> str:
    return str(task["NetworksAttachments"][0]["Addresses"][0].split("/")[0])


def sandbox_pid(eng: docker.APIClient, task: dict[str, Any]) -> int:
    """The PID of the task's sandbox container (its namespace is the task's)."""
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    name = eng.inspect_container(cid)["Name"].lstrip("/")
    return int(eng.inspect_container(f"{name}.sandbox")["State"]["Pid"])


def hostname(eng: docker.APIClient, task: dict[str, Any]) -> str:
    return str(eng.inspect_container(task["Status"]["ContainerStatus"]["ContainerID"])
               ["Config"]["Hostname"])


def vip_of(client: Client, service: str) -> str:
    return str(client.get(f"/services/{service}")["Endpoint"]["VirtualIPs"][0]["Addr"]
               .split("/")[0])


def setup(client: Client) -> None:
    nets = {}
    for name, options in (("plain", {}), ("enc", {"encrypted": ""})):
        nets[name] = client.post("/networks/create", {
            "Name": name, "Driver": "overlay", "Options": options})["Id"]
    for name, net, mode in (("pa", "plain", {"Global": {}}), ("ea", "enc", {"Global": {}}),
                            ("web", "plain", {"Replicated": {"Replicas": WEB_REPLICAS}})):
        client.post("/services/create", {
            "Name": name, "Mode": mode,
            "TaskTemplate": {"ContainerSpec": {"Image": IMAGE, "Args": SERVE},
                             "Networks": [{"Target": nets[net]}]}})


def by_node(client: Client, tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Tasks keyed by their node's hostname (m1, w1)."""
    names = {n["ID"]: n["Description"]["Hostname"] for n in client.get("/nodes")}
    return {names[t["NodeID"]]: t for t in tasks}


def scale(client: Client, service: str, replicas: int) -> None:
    """What `shoal service scale -d SERVICE=REPLICAS` does."""
    svc = client.get(f"/services/{service}", insertDefaults=False)
    svc["Spec"]["Mode"] = {"Replicated": {"Replicas": replicas}}
    post_update(client, svc, svc["Spec"])
