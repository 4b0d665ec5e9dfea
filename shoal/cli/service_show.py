"""`shoal service ls / ps / inspect`: Docker's tables (REPLICAS "3/3", task history with
"\\_ ", CURRENT STATE "Running 2 minutes ago", nodes by hostname) and `inspect --pretty`."""

from __future__ import annotations

import datetime
import re
import time
from typing import Any
from urllib.parse import quote

import click

from shoal.cli.output import (
    CommandFailed,
    describe_api_error,
    format_duration,
    human_duration,
    natural_key,
    parse_filters,
    pass_client,
    pretty,
    print_json,
    print_table,
    truncate_id,
)
from shoal.client import APIError, Client

LS_HEADERS = ("ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS")
PS_HEADERS = ("ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS")


def service_path(ref: str) -> str:
    return f"/services/{quote(ref, safe='')}"


def strip_digest(image: str) -> str:
    return image.split("@", 1)[0]


def mode_label(spec: dict[str, Any]) -> str:
    mode = spec.get("Mode") or {}
    for key, label in (("Global", "global"), ("ReplicatedJob", "replicated job"),
                       ("GlobalJob", "global job")):
        if key in mode:
            return label
    return "replicated"


def replicas(svc: dict[str, Any]) -> str:
    """REPLICAS of `service ls`: "3/3", "2/3 (max 1 per node)", "1/2 (3/5 completed)"."""
    status = svc.get("ServiceStatus") or {}
    running, desired = status.get("RunningTasks", 0), status.get("DesiredTasks", 0)
    completed = status.get("CompletedTasks", 0)
    spec = svc.get("Spec") or {}
    mode = spec.get("Mode") or {}
    if "ReplicatedJob" in mode:
        total = (mode["ReplicatedJob"] or {}).get("TotalCompletions", 0)
        return f"{running}/{desired} ({completed}/{total} completed)"
    if "GlobalJob" in mode:
        return f"{running}/{desired} ({completed}/{desired + completed} completed)"
    most = ((spec.get("TaskTemplate") or {}).get("Placement") or {}).get("MaxReplicas")
    if most and "Replicated" in mode:
        return f"{running}/{desired} (max {most} per node)"
    return f"{running}/{desired}"


def port_text(port: dict[str, Any]) -> str:
    published = port.get("PublishedPort") or ""
    return f"*:{published}->{port.get('TargetPort')}/{port.get('Protocol', 'tcp')}"


def ls_row(svc: dict[str, Any]) -> list[str]:
    spec = svc.get("Spec") or {}
    image = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")
    ports = [port_text(p) for p in (svc.get("Endpoint") or {}).get("Ports") or []
             if p.get("PublishMode", "ingress") == "ingress"]
    return [truncate_id(svc.get("ID", "")), spec.get("Name", ""), mode_label(spec),
            replicas(svc), strip_digest(image), ", ".join(ports)]


@click.command("ls")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Filter output (id, name, label, mode).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"], case_sensitive=False),
              default="table", show_default=True, help="Output format.")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs.")
@pass_client
def ls(client: Client, filters: tuple[str, ...], fmt: str, quiet: bool) -> None:
    """List services."""
    params: dict[str, Any] = {"status": True}
    if filters:
        params["filters"] = parse_filters(filters)
    services = sorted(client.get("/services", **params) or [],
                      key=lambda s: natural_key((s.get("Spec") or {}).get("Name", "")))
    if fmt.lower() == "json":
        print_json(services)
    elif quiet:
        for svc in services:
            click.echo(svc.get("ID", ""))
    else:
        print_table(LS_HEADERS, [ls_row(s) for s in services])


def parse_time(text: str) -> float | None:
    """RFC 3339 with nanoseconds → UNIX seconds; None for Go's zero time."""
    if not text or text.startswith("0001-"):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def current_state(task: dict[str, Any], now: float) -> str:
    status = task.get("Status") or {}
    since = parse_time(status.get("Timestamp", ""))
    state = pretty(status.get("State"))
    if since is None:
        return state
    return f"{state} {human_duration(max(0.0, now - since)).lower()} ago"


class NodeNames:
    """Node hostnames for `service ps`, one GET /nodes/{id} per distinct node."""

    def __init__(self, client: Client, resolve: bool) -> None:
        self.client, self.resolve = client, resolve
        self.names: dict[str, str] = {}

    def __call__(self, node_id: str) -> str:
        if not node_id or not self.resolve:
            return node_id
        if node_id not in self.names:
            try:
                node = self.client.get(f"/nodes/{quote(node_id, safe='')}") or {}
                self.names[node_id] = (node.get("Description") or {}).get("Hostname") or node_id
            except APIError:
                self.names[node_id] = node_id
        return self.names[node_id]


def ps_rows(tasks: list[dict[str, Any]], names: dict[str, str], node_name: NodeNames,
            no_trunc: bool, now: float) -> list[list[str]]:
    """Tasks grouped by slot (node for global services), newest first; older tasks of a slot
    are shown as its history, prefixed with "\\_ " as Docker does."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for t in tasks:
        service_name = names.get(t.get("ServiceID", ""), t.get("ServiceID", ""))
        slot = int(t.get("Slot") or 0)
        key = (service_name, slot, "" if slot else t.get("NodeID", ""))
        groups.setdefault(key, []).append(t)
    rows = []
    for key in sorted(groups):
        history = sorted(groups[key], key=lambda t: (t.get("CreatedAt", ""), t.get("ID", "")),
                         reverse=True)
        for i, t in enumerate(history):
            service_name, _, node_id = key
            name = f"{service_name}.{t.get('Slot') or node_id}"
            if no_trunc:
                name += f".{t.get('ID', '')}"
            status = t.get("Status") or {}
            image = ((t.get("Spec") or {}).get("ContainerSpec") or {}).get("Image", "")
            err = status.get("Err") or ""
            ports = [port_text(p) for p in (status.get("PortStatus") or {}).get("Ports") or []]
            rows.append([
                t.get("ID", "") if no_trunc else truncate_id(t.get("ID", "")),
                name if i == 0 else f" \\_ {name}",
                image if no_trunc else strip_digest(image),
                node_name(t.get("NodeID", "")),
                pretty(t.get("DesiredState")), current_state(t, now),
                f'"{err}"' if err else "", ", ".join(ports)])
    return rows


@click.command("ps")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.option("--no-resolve", is_flag=True, help="Do not map IDs to names.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Filter output (id, name, node, desired-state, label).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"], case_sensitive=False),
              default="table", show_default=True, help="Output format.")
@click.option("-q", "--quiet", is_flag=True, help="Only display task IDs.")
@click.argument("refs", nargs=-1, required=True, metavar="SERVICE...")
@pass_client
def ps(client: Client, no_trunc: bool, no_resolve: bool, filters: tuple[str, ...], fmt: str,
       quiet: bool, refs: tuple[str, ...]) -> None:
    """List the tasks of one or more services."""
    names: dict[str, str] = {}
    missing = []
    for ref in refs:
        try:
            svc = client.get(service_path(ref), insertDefaults=False)
        except APIError as exc:
            if exc.status != 404:
                raise
            missing.append(f"no such service: {ref}")
            continue
        names[svc["ID"]] = (svc.get("Spec") or {}).get("Name", "")
    if not names:
        raise CommandFailed("\n".join(missing))
    query = parse_filters(filters)
    query["service"] = {sid: True for sid in names}
    tasks = client.get("/tasks", filters=query) or []
    if fmt.lower() == "json":
        print_json(tasks)
    elif quiet:
        for t in tasks:
            click.echo(t.get("ID", ""))
    else:
        print_table(PS_HEADERS, ps_rows(tasks, names, NodeNames(client, not no_resolve),
                                        no_trunc, time.time()))
    if missing:
        raise CommandFailed("\n".join(missing))


@click.command()
@click.option("--pretty", "human", is_flag=True, help="Print the information in a human "
              "friendly format.")
@click.argument("refs", nargs=-1, required=True, metavar="SERVICE...")
@pass_client
def inspect(client: Client, human: bool, refs: tuple[str, ...]) -> None:
    """Display detailed information on one or more services."""
    found: list[Any] = []
    missing: list[str] = []
    for ref in refs:
        try:
            found.append(client.get(service_path(ref), insertDefaults=True))
        except APIError as exc:
            if exc.status != 404:
                raise
            missing.append(describe_api_error(exc))
    if human:
        click.echo("\n\n".join(pretty_service(s) for s in found))
    else:
        print_json(found)
    if missing:
        raise CommandFailed("\n".join(missing))


def pretty_service(svc: dict[str, Any]) -> str:
    spec = svc.get("Spec") or {}
    task = spec.get("TaskTemplate") or {}
    container = task.get("ContainerSpec") or {}
    lines = [f"ID:\t\t{svc.get('ID', '')}", f"Name:\t\t{spec.get('Name', '')}"]
    lines += [f" {k}={v}" for k, v in (spec.get("Labels") or {}).items()]
    lines.append(f"Service Mode:\t{pretty(mode_label(spec))}")
    mode = spec.get("Mode") or {}
    if "Replicated" in mode:
        lines.append(f" Replicas:\t{(mode['Replicated'] or {}).get('Replicas', 1)}")
    update = svc.get("UpdateStatus")
    if update:
        lines += ["UpdateStatus:", f" State:\t\t{update.get('State', '')}",
                  f" Message:\t{update.get('Message', '')}"]
    placement = task.get("Placement") or {}
    if placement.get("Constraints"):
        lines += ["Placement:", f" Constraints:\t{placement['Constraints']}"]
    for key, title in (("UpdateConfig", "UpdateConfig"), ("RollbackConfig", "RollbackConfig")):
        config = spec.get(key) or {}
        if config:
            lines += [f"{title}:", f" Parallelism:\t{config.get('Parallelism', 0)}",
                      f" On failure:\t{config.get('FailureAction', '')}",
                      f" Monitoring Period: {format_duration(config.get('Monitor', 0))}",
                      f" Max failure ratio: {config.get('MaxFailureRatio', 0)}",
                      f" Update order:      {config.get('Order', '')}"]
            if config.get("Delay"):
                lines.append(f" Delay:\t\t{format_duration(config['Delay'])}")
    lines += ["ContainerSpec:", f" Image:\t\t{container.get('Image', '')}"]
    if container.get("Args"):
        lines.append(f" Args:\t\t{' '.join(container['Args'])}")
    if container.get("Env"):
        lines.append(f" Env:\t\t{' '.join(container['Env'])}")
    if container.get("Mounts"):
        lines.append("Mounts:")
        lines += [f" Target:\t{m.get('Target', '')}\n  Source:\t{m.get('Source', '')}\n"
                  f"  ReadOnly:\t{str(m.get('ReadOnly', False)).lower()}\n"
                  f"  Type:\t\t{m.get('Type', '')}" for m in container["Mounts"]]
    endpoint = spec.get("EndpointSpec") or {}
    lines.append(f"Endpoint Mode:\t{endpoint.get('Mode', 'vip')}")
    ports = (svc.get("Endpoint") or {}).get("Ports") or []
    if ports:
        lines.append("Ports:")
        lines += [f" PublishedPort = {p.get('PublishedPort', '')}\n"
                  f"  Protocol = {p.get('Protocol', 'tcp')}\n"
                  f"  TargetPort = {p.get('TargetPort', '')}\n"
                  f"  PublishMode = {p.get('PublishMode', 'ingress')}" for p in ports]
    return "\n".join(lines).expandtabs(8)
