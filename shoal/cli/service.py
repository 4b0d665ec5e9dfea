"""`shoal service ...`: create, scale, update, rollback, rm (Docker's names, flags and
output). ls / ps / inspect live in service_show.py, the flags and the spec they build in
service_opts.py, one flag value's parsing in service_values.py, the convergence wait in
service_progress.py."""

from __future__ import annotations

import shlex
from typing import Any

import click

from shoal.cli.output import CommandFailed, describe_api_error, pass_client
from shoal.cli.service_opts import MODES, SPEC_OPTIONS, apply_common, create_spec
from shoal.cli.service_progress import wait
from shoal.cli.service_show import inspect, ls, ps, service_path
from shoal.cli.service_values import (
    parse_env,
    parse_kv,
    parse_mount,
    parse_network,
    parse_pref,
    parse_publish,
    update_file_refs,
)
from shoal.client import APIError, Client

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


service.add_command(ls)
service.add_command(ps)
service.add_command(inspect)


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
@click.option("--network", multiple=True, metavar="NAME|name=NAME,alias=A",
              help="Attach the service to an overlay network.")
@click.option("--secret", multiple=True, metavar="NAME|source=NAME,target=T,uid=,gid=,mode=",
              help="Specify secrets to expose to the service.")
@click.option("--config", multiple=True, metavar="NAME|source=NAME,target=T,uid=,gid=,mode=",
              help="Specify configurations to expose to the service.")
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
    for kind in ("secret", "config"):
        key = "Secrets" if kind == "secret" else "Configs"
        refs = update_file_refs(container.get(key) or [], opts[f"{kind}_add"],
                                opts[f"{kind}_rm"], kind)
        if refs or container.get(key):
            container[key] = refs
    _update_ports(spec, opts)
    _update_networks(spec, opts)
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


def _update_networks(spec: dict[str, Any], opts: dict[str, Any]) -> None:
    if not opts.get("network_add") and not opts.get("network_rm"):
        return
    task = spec.setdefault("TaskTemplate", {})
    networks = list(task.get("Networks") or [])
    client = opts.get("_client")
    for ref in opts["network_rm"]:
        ids = {ref, _network_id(client, ref)}
        kept = [n for n in networks if n.get("Target") not in ids]
        if len(kept) == len(networks):
            raise CommandFailed(f"--network-rm {ref}: the service is not on network {ref}")
        networks = kept
    for value in opts["network_add"]:
        new = parse_network(value, "--network-add")
        ids = {new["Target"], _network_id(client, new["Target"])}
        networks = [n for n in networks if n.get("Target") not in ids] + [new]
    task["Networks"] = networks


def _network_id(client: Client | None, ref: str) -> str:
    """The network's ID (services store IDs); `ref` itself when it can't be looked up."""
    if client is None:
        return ref
    try:
        return str(client.get(f"/networks/{ref}")["Id"])
    except APIError:
        return ref


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
@click.option("--network-add", multiple=True, metavar="NAME|name=NAME,alias=A",
              help="Add a network.")
@click.option("--network-rm", multiple=True, metavar="NAME", help="Remove a network.")
@click.option("--secret-add", multiple=True, metavar="NAME|source=NAME,target=T,...",
              help="Add or update a secret on a service.")
@click.option("--secret-rm", multiple=True, metavar="NAME", help="Remove a secret.")
@click.option("--config-add", multiple=True, metavar="NAME|source=NAME,target=T,...",
              help="Add or update a config file on a service.")
@click.option("--config-rm", multiple=True, metavar="NAME", help="Remove a configuration file.")
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
        apply_update(spec, dict(opts, _client=client))
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
