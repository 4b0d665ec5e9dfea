"""`shoal service ...`: create, ls, ps, inspect, scale, update, rollback, rm (Docker's names,
flags and output). Flag parsing lives in service_opts.py, the convergence wait in
service_progress.py."""

from __future__ import annotations

import datetime
import re
import shlex
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
from shoal.cli.service_opts import (
    MODES,
    SPEC_OPTIONS,
    apply_common,
    create_spec,
    parse_env,
    parse_kv,
    parse_mount,
    parse_pref,
    parse_publish,
)
from shoal.cli.service_progress import wait
from shoal.client import APIError, Client

LS_HEADERS = ("ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS")
PS_HEADERS = ("ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS")
_BOOL_FLAGS = {"--detach": "detach", "-d": "detach", "--init": "init", "--tty": "tty",
               "-t": "tty"}


class ServiceCommand(click.Command):
    """Also takes Docker's `--detach=false` / `--init=true` spelling of boolean flags."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        valued = {o for p in self.params if isinstance(p, click.Option) and not p.is_flag
                  for o in p.opts}
        out: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--" or (not arg.startswith("-") and not ctx.allow_interspersed_args):
                out += args[i:]
                break
            name, eq, value = arg.partition("=")
            if eq and name in _BOOL_FLAGS:
                on = value.strip().lower() not in ("", "0", "false", "no")
                arg = f"--{'' if on else 'no-'}{_BOOL_FLAGS[name]}"
            out.append(arg)
            if arg in valued and i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
            i += 1
        return super().parse_args(ctx, out)


@click.group()
def service() -> None:
    """Manage swarm services."""


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


# ---------------------------------------------------------------- create


@service.command(cls=ServiceCommand, context_settings={"allow_interspersed_args": False})
@click.option("--name", help="Service name.")
@click.option("--mode", type=click.Choice(MODES), default="replicated", show_default=True,
              help="Service mode.")
@click.option("--constraint", multiple=True, metavar="EXPR", help="Placement constraints.")
@click.option("--placement-pref", multiple=True, metavar="spread=KEY",
              help="Add a placement preference.")
@click.option("-e", "--env", multiple=True, metavar="KEY=VALUE",
              help="Set environment variables.")
@click.option("-l", "--label", multiple=True, metavar="KEY=VALUE", help="Service labels.")
@click.option("--container-label", multiple=True, metavar="KEY=VALUE",
              help="Container labels.")
@click.option("--mount", multiple=True, metavar="type=...,target=...",
              help="Attach a filesystem mount to the service.")
@click.option("-p", "--publish", multiple=True, metavar="[PUBLISHED:]TARGET[/PROTO]",
              help="Publish a port as a node port.")
@SPEC_OPTIONS
@click.argument("image")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[COMMAND] [ARG...]")
@pass_client
def create(client: Client, image: str, args: tuple[str, ...], **opts: Any) -> None:
    """Create a new service."""
    out = client.post("/services/create", create_spec(image, args, opts)) or {}
    for warning in out.get("Warnings") or []:
        click.echo(warning, err=True)
    click.echo(out["ID"])
    if not opts["detach"]:
        wait(client, out["ID"], opts["quiet"])


# ---------------------------------------------------------------- ls / ps / inspect


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


@service.command("ls")
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


@service.command("ps")
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


@service.command()
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


# ---------------------------------------------------------------- update / rollback / scale


def post_update(client: Client, svc: dict[str, Any], spec: dict[str, Any],
                rollback: bool = False) -> None:
    params: dict[str, Any] = {"version": svc["Version"]["Index"]}
    if rollback:
        params["rollback"] = "previous"
    out = client.post(service_path(svc["ID"]) + "/update", spec, **params) or {}
    for warning in out.get("Warnings") or []:
        click.echo(warning, err=True)


def _remove_keyed(items: list[str], keys: tuple[str, ...]) -> list[str]:
    drop = set(keys)
    return [i for i in items if i.partition("=")[0] not in drop]


def apply_update(spec: dict[str, Any], opts: dict[str, Any]) -> None:
    """What `service update`'s own flags change on the fetched spec."""
    task = spec.setdefault("TaskTemplate", {})
    container = task.setdefault("ContainerSpec", {})
    if opts["image"]:
        container["Image"] = opts["image"]
    if opts["args"] is not None:
        container["Args"] = shlex.split(opts["args"])
    env = _remove_keyed(container.get("Env") or [], opts["env_rm"])
    for value in opts["env_add"]:
        entry = parse_env(value)
        env = _remove_keyed(env, (entry.partition("=")[0],)) + [entry]
    container["Env"] = env
    for target, add, rm, flag in ((spec, "label_add", "label_rm", "--label-add"),
                                  (container, "container_label_add", "container_label_rm",
                                   "--container-label-add")):
        labels = dict(target.get("Labels") or {})
        for key in opts[rm]:
            labels.pop(key, None)
        labels.update(parse_kv(v, flag) for v in opts[add])
        target["Labels"] = labels
    placement = task.setdefault("Placement", {})
    constraints = [c for c in placement.get("Constraints") or []
                   if c not in opts["constraint_rm"]]
    constraints += [c for c in opts["constraint_add"] if c not in constraints]
    placement["Constraints"] = constraints
    prefs = [p for p in placement.get("Preferences") or []
             if p not in [parse_pref(r) for r in opts["placement_pref_rm"]]]
    placement["Preferences"] = prefs + [parse_pref(p) for p in opts["placement_pref_add"]]
    mounts = [m for m in container.get("Mounts") or [] if m.get("Target") not in
              set(opts["mount_rm"])]
    for value in opts["mount_add"]:
        mount = parse_mount(value, "--mount-add")
        mounts = [m for m in mounts if m.get("Target") != mount["Target"]] + [mount]
    container["Mounts"] = mounts
    _update_ports(spec, opts)
    if opts["force"]:
        task["ForceUpdate"] = int(task.get("ForceUpdate") or 0) + 1
    _update_mode(spec, opts)
    apply_common(spec, opts)


def _update_ports(spec: dict[str, Any], opts: dict[str, Any]) -> None:
    endpoint = spec.setdefault("EndpointSpec", {})
    ports = list(endpoint.get("Ports") or [])
    for value in opts["publish_rm"]:
        number, _, proto = value.partition("/")
        number = number.rpartition(":")[2]
        ports = [p for p in ports if not (
            str(number) in (str(p.get("PublishedPort")), str(p.get("TargetPort"))) and
            (not proto or p.get("Protocol", "tcp") == proto))]
    for value in opts["publish_add"]:
        port = parse_publish(value, "--publish-add")
        ports = [p for p in ports if not (
            p.get("TargetPort") == port["TargetPort"] and
            p.get("Protocol", "tcp") == port["Protocol"])] + [port]
    endpoint["Ports"] = ports


def _update_mode(spec: dict[str, Any], opts: dict[str, Any]) -> None:
    mode = spec.setdefault("Mode", {})
    if opts["replicas"] is not None:
        if "Replicated" in mode:
            mode["Replicated"] = {"Replicas": opts["replicas"]}
        elif "ReplicatedJob" in mode:
            mode["ReplicatedJob"]["TotalCompletions"] = opts["replicas"]
        else:
            raise CommandFailed("--replicas can only be used with replicated or "
                                "replicated-job mode")
    if opts["max_concurrent"] is not None:
        if "ReplicatedJob" not in mode:
            raise CommandFailed("--max-concurrent can only be used with replicated-job mode")
        mode["ReplicatedJob"]["MaxConcurrent"] = opts["max_concurrent"]


@service.command(cls=ServiceCommand)
@click.option("--image", help="Service image tag.")
@click.option("--args", help="Service command args (one string, split like a shell).")
@click.option("--env-add", multiple=True, metavar="KEY=VALUE",
              help="Add or update an environment variable.")
@click.option("--env-rm", multiple=True, metavar="KEY", help="Remove an environment variable.")
@click.option("--label-add", multiple=True, metavar="KEY=VALUE",
              help="Add or update a service label.")
@click.option("--label-rm", multiple=True, metavar="KEY", help="Remove a label by its key.")
@click.option("--container-label-add", multiple=True, metavar="KEY=VALUE",
              help="Add or update a container label.")
@click.option("--container-label-rm", multiple=True, metavar="KEY",
              help="Remove a container label by its key.")
@click.option("--constraint-add", multiple=True, metavar="EXPR",
              help="Add or update a placement constraint.")
@click.option("--constraint-rm", multiple=True, metavar="EXPR", help="Remove a constraint.")
@click.option("--placement-pref-add", multiple=True, metavar="spread=KEY",
              help="Add a placement preference.")
@click.option("--placement-pref-rm", multiple=True, metavar="spread=KEY",
              help="Remove a placement preference.")
@click.option("--mount-add", multiple=True, metavar="type=...,target=...",
              help="Add or update a mount (by target).")
@click.option("--mount-rm", multiple=True, metavar="TARGET", help="Remove a mount by its target.")
@click.option("--publish-add", multiple=True, metavar="[PUBLISHED:]TARGET[/PROTO]",
              help="Add or update a published port.")
@click.option("--publish-rm", multiple=True, metavar="PORT[/PROTO]",
              help="Remove a published port.")
@click.option("--force", is_flag=True, help="Force update even if no changes require it.")
@click.option("--rollback", is_flag=True, help="Rollback to the previous specification.")
@SPEC_OPTIONS
@click.argument("ref", metavar="SERVICE")
@pass_client
def update(client: Client, ref: str, **opts: Any) -> None:
    """Update a service."""
    svc = client.get(service_path(ref), insertDefaults=False)
    spec = svc["Spec"]
    if not opts["rollback"]:
        apply_update(spec, opts)
    post_update(client, svc, spec, rollback=opts["rollback"])
    click.echo(ref)
    if not opts["detach"]:
        wait(client, svc["ID"], opts["quiet"], rollback=opts["rollback"])


@service.command(cls=ServiceCommand)
@click.option("-d", "--detach/--no-detach", default=False,
              help="Exit immediately instead of waiting for the service to converge.")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output.")
@click.argument("ref", metavar="SERVICE")
@pass_client
def rollback(client: Client, detach: bool, quiet: bool, ref: str) -> None:
    """Revert changes to a service's configuration."""
    svc = client.get(service_path(ref), insertDefaults=False)
    post_update(client, svc, svc["Spec"], rollback=True)
    click.echo(ref)
    if not detach:
        wait(client, svc["ID"], quiet, rollback=True)


def parse_scale(value: str) -> tuple[str, int]:
    name, sep, count = value.partition("=")
    if not sep or not name or not count.isdigit():
        raise click.BadParameter(f"invalid scale specifier {value!r}: expected "
                                 "SERVICE=REPLICAS (a number of 0 or more)")
    return name, int(count)


@service.command(cls=ServiceCommand)
@click.option("-d", "--detach/--no-detach", default=False,
              help="Exit immediately instead of waiting for the service to converge.")
@click.argument("pairs", nargs=-1, required=True, metavar="SERVICE=REPLICAS...")
@pass_client
def scale(client: Client, detach: bool, pairs: tuple[str, ...]) -> None:
    """Scale one or more replicated services."""
    wanted = [parse_scale(p) for p in pairs]
    errors: list[str] = []
    scaled: list[str] = []
    for name, count in wanted:
        try:
            svc = client.get(service_path(name), insertDefaults=False)
            mode = svc["Spec"].get("Mode") or {}
            if "Replicated" in mode:
                mode["Replicated"] = {"Replicas": count}
            elif "ReplicatedJob" in mode:
                mode["ReplicatedJob"]["TotalCompletions"] = count
            else:
                errors.append(f"{name}: scale can only be used with replicated or "
                              "replicated-job mode")
                continue
            post_update(client, svc, svc["Spec"])
        except APIError as exc:
            if exc.status == 0:
                raise
            errors.append(describe_api_error(exc))
            continue
        click.echo(f"{name} scaled to {count}")
        scaled.append(svc["ID"])
    if not detach:
        for service_id in scaled:
            wait(client, service_id)
    if errors:
        raise CommandFailed("\n".join(errors))


@service.command()
@click.argument("refs", nargs=-1, required=True, metavar="SERVICE...")
@pass_client
def rm(client: Client, refs: tuple[str, ...]) -> None:
    """Remove one or more services (each is tried; errors are reported last)."""
    errors: list[str] = []
    for ref in refs:
        try:
            client.delete(service_path(ref))
        except APIError as exc:
            if exc.status == 0:
                raise
            errors.append(describe_api_error(exc))
            continue
        click.echo(ref)
    if errors:
        raise CommandFailed("\n".join(errors))
