"""`shoal node ...`: ls, inspect, update, promote, demote, rm (Docker's names, flags, output)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from shoal.cli.output import (
    CommandFailed,
    describe_api_error,
    inspect_each,
    natural_key,
    parse_filters,
    pass_client,
    pretty,
    print_json,
    print_table,
)
from shoal.cli.swarm import AVAILABILITY, ROLE, local_node_id
from shoal.client import APIError, Client

NODE_HEADERS = ("ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION")


@click.group()
def node() -> None:
    """Manage swarm nodes."""


def node_path(ref: str) -> str:
    return f"/nodes/{quote(ref, safe='')}"


def manager_status(n: dict[str, Any]) -> str:
    """"Leader", the reachability ("Reachable"/"Unreachable"), or "" for a worker."""
    status = n.get("ManagerStatus")
    if not status:
        return ""
    if status.get("Leader"):
        return "Leader"
    return pretty(status.get("Reachability"))


def node_row(n: dict[str, Any], self_id: str) -> list[str]:
    """One `node ls` table row; the local node's ID carries " *" like Docker's."""
    desc = n.get("Description") or {}
    return [
        n.get("ID", "") + (" *" if n.get("ID") == self_id else "  "),
        desc.get("Hostname", ""),
        pretty((n.get("Status") or {}).get("State")),
        pretty((n.get("Spec") or {}).get("Availability")),
        manager_status(n),
        (desc.get("Engine") or {}).get("EngineVersion", ""),
    ]


def sort_nodes(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Docker's order for `node ls`: natural sort by hostname (then ID, to be stable)."""
    return sorted(nodes, key=lambda n: (
        natural_key((n.get("Description") or {}).get("Hostname", "")), n.get("ID", "")))


@node.command("ls")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Filter output (id, name, label, node.label, role, membership).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"], case_sensitive=False),
              default="table", show_default=True, help="Output format.")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs.")
@pass_client
def ls(client: Client, filters: tuple[str, ...], fmt: str, quiet: bool) -> None:
    """List nodes in the swarm."""
    params = {"filters": parse_filters(filters)} if filters else {}
    nodes = sort_nodes(client.get("/nodes", **params) or [])
    if fmt.lower() == "json":
        print_json(nodes)
        return
    if quiet:
        for n in nodes:
            click.echo(n.get("ID", ""))
        return
    self_id = ((client.get("/info") or {}).get("Swarm") or {}).get("NodeID") or ""
    print_table(NODE_HEADERS, [node_row(n, self_id) for n in nodes])


@node.command()
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True,
              help="Output format.")
@click.argument("refs", nargs=-1, required=True, metavar="NODE...")
@pass_client
def inspect(client: Client, fmt: str, refs: tuple[str, ...]) -> None:
    """Display detailed information on one or more nodes ("self" is this node)."""
    inspect_each(client, [node_path(local_node_id(client) if ref == "self" else ref)
                          for ref in refs])


def fetch_node(client: Client, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """GET a node; return it and a full copy of its Spec (Name, Labels, Role, Availability)."""
    n = client.get(node_path(ref))
    spec = dict(n.get("Spec") or {})
    spec["Name"] = spec.get("Name") or ""
    spec["Labels"] = dict(spec.get("Labels") or {})
    spec.setdefault("Role", "")
    spec.setdefault("Availability", "")
    return n, spec


def post_node_spec(client: Client, n: dict[str, Any], spec: dict[str, Any]) -> None:
    client.post(node_path(n["ID"]) + "/update", spec, version=n["Version"]["Index"])


def parse_label(value: str) -> tuple[str, str]:
    key, _, val = value.partition("=")
    if not key.strip():
        raise click.BadParameter(f"invalid label {value!r}: empty key", param_hint="'--label-add'")
    return key.strip(), val


def _label_adds(ctx: click.Context, param: click.Parameter,
                value: tuple[str, ...]) -> list[tuple[str, str]]:
    return [parse_label(v) for v in value]


@node.command()
@click.option("--availability", type=AVAILABILITY, help="Availability of the node.")
@click.option("--label-add", "label_add", multiple=True, callback=_label_adds,
              metavar="KEY=VALUE", help="Add or update a node label.")
@click.option("--label-rm", "label_rm", multiple=True, metavar="KEY",
              help="Remove a node label if it exists.")
@click.option("--role", type=ROLE, help="Role of the node.")
@click.argument("ref", metavar="NODE")
@pass_client
def update(client: Client, availability: str | None, label_add: list[tuple[str, str]],
           label_rm: tuple[str, ...], role: str | None, ref: str) -> None:
    """Update a node's availability, labels or role."""
    n, spec = fetch_node(client, ref)
    if availability:
        spec["Availability"] = availability.lower()
    if role:
        spec["Role"] = role.lower()
    spec["Labels"].update(label_add)
    for key in label_rm:
        if key not in spec["Labels"]:
            raise CommandFailed(f"key {key} doesn't exist in node's labels")
        del spec["Labels"][key]
    post_node_spec(client, n, spec)
    click.echo(ref)


def change_role(client: Client, refs: tuple[str, ...], role: str, done: str) -> None:
    """Set Spec.Role on each node; `done` is the message format for a changed node."""
    for ref in refs:
        n, spec = fetch_node(client, ref)
        if spec["Role"] == role:
            click.echo(f"Node {ref} is already a {role}.")
            continue
        spec["Role"] = role
        post_node_spec(client, n, spec)
        click.echo(done.format(ref))


@node.command()
@click.argument("refs", nargs=-1, required=True, metavar="NODE...")
@pass_client
def promote(client: Client, refs: tuple[str, ...]) -> None:
    """Promote one or more nodes to manager in the swarm."""
    change_role(client, refs, "manager", "Node {} promoted to a manager in the swarm.")


@node.command()
@click.argument("refs", nargs=-1, required=True, metavar="NODE...")
@pass_client
def demote(client: Client, refs: tuple[str, ...]) -> None:
    """Demote one or more nodes from manager in the swarm."""
    change_role(client, refs, "worker", "Manager {} demoted in the swarm.")


@node.command()
@click.option("-f", "--force", is_flag=True, help="Force remove a node from the swarm.")
@click.argument("refs", nargs=-1, required=True, metavar="NODE...")
@pass_client
def rm(client: Client, force: bool, refs: tuple[str, ...]) -> None:
    """Remove one or more nodes from the swarm (each is tried; errors are reported last)."""
    params = {"force": True} if force else {}
    errors: list[str] = []
    for ref in refs:
        try:
            client.delete(node_path(ref), **params)
        except APIError as exc:
            if exc.status == 0:
                raise
            errors.append(describe_api_error(exc))
            continue
        click.echo(ref)
    if errors:
        raise CommandFailed("\n".join(errors))
