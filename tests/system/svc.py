"""Helpers for service system tests: specs, task views and the lab's engine."""

from __future__ import annotations

from typing import Any

import docker

from shoal.client import Client
from shoal.lab import LabState

IMAGE = "shoal/busybox:latest"


def spec(name: str, args: list[str] | None = None, replicas: int | None = 1,
         **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Name": name,
        "TaskTemplate": {"ContainerSpec": {"Image": IMAGE,
                                           "Args": args or ["sleep", "3600"]}},
        "Mode": {"Replicated": {"Replicas": replicas}},
    }
    for key, value in extra.items():
        if key in ("RestartPolicy", "Placement", "Resources"):
            body["TaskTemplate"][key] = value
        elif key in ("Healthcheck", "Mounts", "Env", "StopGracePeriod"):
            body["TaskTemplate"]["ContainerSpec"][key] = value
        else:
            body[key] = value
    return body


def create(client: Client, body: dict[str, Any]) -> str:
    return str(client.post("/services/create", body)["ID"])


def tasks(client: Client, service: str) -> list[dict[str, Any]]:
    return list(client.get("/tasks", filters={"service": [service]}))


def running(client: Client, service: str) -> list[dict[str, Any]]:
    return [t for t in tasks(client, service)
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]


def running_slots(client: Client, service: str) -> dict[int, int]:
    slots: dict[int, int] = {}
    for t in running(client, service):
        slots[t["Slot"]] = slots.get(t["Slot"], 0) + 1
    return slots


def engine(lab: LabState) -> docker.DockerClient:
    assert lab.engine, "the lab has no engine"
    return docker.DockerClient(base_url=lab.engine, version="1.41")


def containers(lab: LabState, service_id: str, all_: bool = False) -> list[dict[str, Any]]:
    """The service's containers (one listing call: no per-container inspect that could race
    with a container being removed)."""
    return list(engine(lab).api.containers(
        all=all_, filters={"label": f"com.docker.swarm.service.id={service_id}"}))


def node_names(client: Client) -> dict[str, str]:
    return {n["ID"]: n["Description"]["Hostname"] for n in client.get("/nodes")}
