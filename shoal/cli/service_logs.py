"""`shoal service logs`: each task's output, prefixed with the task name and its node."""

from __future__ import annotations

import struct
import urllib.parse
from collections.abc import Iterator
from typing import Any

import click

from shoal.cli.output import pass_client, truncate_id
from shoal.client import APIError, Client


def frames(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """Split Docker's multiplexed stream into (stream, payload) frames."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while len(buf) >= 8:
            stream, size = struct.unpack(">BxxxL", buf[:8])
            if len(buf) < 8 + size:
                break
            yield stream, buf[8:8 + size]
            buf = buf[8 + size:]


def parse_line(line: str, timestamps: bool) -> tuple[str, dict[str, str], str]:
    """'[ts ]k=v,k=v msg' → (ts, details, msg)."""
    ts = ""
    if timestamps:
        ts, _, line = line.partition(" ")
    raw, _, msg = line.partition(" ")
    details = {}
    for pair in raw.split(","):
        key, _, value = pair.partition("=")
        details[key] = urllib.parse.unquote(value)
    return ts, details, msg


class Names:
    """Task and node names for prefixes, fetched once per ID like the docker CLI does."""

    def __init__(self, client: Client, no_trunc: bool) -> None:
        self.client, self.no_trunc = client, no_trunc
        self.cache: dict[tuple[str, str], str] = {}

    def _lookup(self, kind: str, obj_id: str) -> Any:
        try:
            return self.client.get(f"/{kind}/{obj_id}")
        except APIError:
            return None

    def task(self, task_id: str, service_name: str) -> str:
        key = ("task", task_id)
        if key not in self.cache:
            task = self._lookup("tasks", task_id) or {}
            middle = task.get("Slot") or task.get("NodeID") or "?"
            tid = task_id if self.no_trunc else truncate_id(task_id)
            self.cache[key] = f"{service_name}.{middle}.{tid}"
        return self.cache[key]

    def node(self, node_id: str) -> str:
        key = ("node", node_id)
        if key not in self.cache:
            node = self._lookup("nodes", node_id) or {}
            self.cache[key] = node.get("Description", {}).get("Hostname") or node_id
        return self.cache[key]


def _target(client: Client, ref: str) -> tuple[str, str]:
    """('services'|'tasks', id) and the service name, for a service or task reference."""
    try:
        service = client.get(f"/services/{ref}")
        return f"/services/{service['ID']}/logs", service["Spec"]["Name"]
    except APIError as err:
        if err.status != 404:
            raise
    task = client.get(f"/tasks/{ref}")
    service = client.get(f"/services/{task['ServiceID']}")
    return f"/tasks/{task['ID']}/logs", service["Spec"]["Name"]


@click.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Follow log output")
@click.option("-n", "--tail", default="all", help='Number of lines from the end ("all")')
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output")
@click.option("--raw", is_flag=True, help="Do not neatly format logs")
@click.argument("service")
@pass_client
def logs(client: Client, follow: bool, tail: str, timestamps: bool, no_trunc: bool, raw: bool,
         service: str) -> None:
    """Fetch the logs of a service or task."""
    path, service_name = _target(client, service)
    names = Names(client, no_trunc)
    chunks = client.stream(path, details=True, stdout=True, stderr=True, tail=tail,
                           follow=follow or None, timestamps=timestamps or None)
    for stream, payload in frames(chunks):
        ts, details, msg = parse_line(payload.decode(errors="replace"), timestamps)
        prefix = "" if raw else (
            names.task(details.get("com.docker.swarm.task.id", ""), service_name) + "@" +
            names.node(details.get("com.docker.swarm.node.id", "")) + "    | ")
        line = (ts + " " if ts else "") + prefix + msg
        click.echo(line, nl=not line.endswith("\n"), err=stream == 2)
