"""`shoal network ...`: create, ls, inspect, rm (Docker's names, flags and output)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from shoal.cli.output import (
    CommandFailed,
    inspect_each,
    parse_filters,
    pass_client,
    print_table,
    remove_each,
    truncate_id,
)
from shoal.client import Client

HEADERS = ("NETWORK ID", "NAME", "DRIVER", "SCOPE")


@click.group()
def network() -> None:
    """Manage overlay networks."""


def network_path(ref: str) -> str:
    return f"/networks/{quote(ref, safe='')}"


def _kv(values: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, _, val = value.partition("=")
        if not key:
            raise click.BadParameter(f"invalid {value!r}: expected KEY[=VALUE]",
                                     param_hint=f"'{flag}'")
        out[key] = val
    return out


def create_body(name: str, driver: str, subnet: str | None, gateway: str | None,
                ip_range: str | None, attachable: bool, internal: bool, ingress: bool,
                opts: tuple[str, ...], labels: tuple[str, ...]) -> dict[str, Any]:
    """The body `docker network create` sends."""
    config: list[dict[str, str]] = []
    if subnet or gateway or ip_range:
        entry = {"Subnet": subnet or ""}
        if gateway:
            entry["Gateway"] = gateway
        if ip_range:
            entry["IPRange"] = ip_range
        config.append(entry)
    return {"Name": name, "CheckDuplicate": True, "Driver": driver, "Scope": "swarm",
            "Internal": internal, "Attachable": attachable, "Ingress": ingress,
            "IPAM": {"Driver": "default", "Config": config, "Options": {}},
            "Options": _kv(opts, "--opt"), "Labels": _kv(labels, "--label")}


@network.command()
@click.option("-d", "--driver", default="overlay", show_default=True,
              help="Driver to manage the network.")
@click.option("--subnet", help="Subnet in CIDR format.")
@click.option("--gateway", help="Gateway for the subnet.")
@click.option("--ip-range", help="Allocate task addresses from a sub-range.")
@click.option("--attachable", is_flag=True, help="Let standalone containers join.")
@click.option("--internal", is_flag=True, help="Restrict external access to the network.")
@click.option("--ingress", is_flag=True, help="Create the routing-mesh network.")
@click.option("-o", "--opt", "opts", multiple=True, metavar="KEY[=VALUE]",
              help="Driver options (encrypted).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Network labels.")
@click.argument("name")
@pass_client
def create(client: Client, name: str, driver: str, subnet: str | None, gateway: str | None,
           ip_range: str | None, attachable: bool, internal: bool, ingress: bool,
           opts: tuple[str, ...], labels: tuple[str, ...]) -> None:
    """Create a network."""
    body = create_body(name, driver, subnet, gateway, ip_range, attachable, internal, ingress,
                       opts, labels)
    out = client.post("/networks/create", body) or {}
    click.echo(out.get("Id", ""))


@network.command("ls")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Filter output (id, name, label, driver, scope).")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate the output.")
@pass_client
def ls(client: Client, filters: tuple[str, ...], quiet: bool, no_trunc: bool) -> None:
    """List networks."""
    params = {"filters": parse_filters(filters)} if filters else {}
    networks = client.get("/networks", **params) or []
    ids = [n["Id"] if no_trunc else truncate_id(n["Id"]) for n in networks]
    if quiet:
        for i in ids:
            click.echo(i)
        return
    print_table(HEADERS, [[i, n["Name"], n["Driver"], n["Scope"]]
                          for i, n in zip(ids, networks, strict=True)])


@network.command()
@click.argument("refs", nargs=-1, required=True, metavar="NETWORK...")
@pass_client
def inspect(client: Client, refs: tuple[str, ...]) -> None:
    """Display detailed information on one or more networks."""
    inspect_each(client, [network_path(ref) for ref in refs])


@network.command()
@click.option("--node", help="Only this node (ID or hostname).")
@click.argument("ref", metavar="NETWORK")
@pass_client
def doctor(client: Client, node: str | None, ref: str) -> None:
    """Compare each node's data plane on a network with what it should be."""
    params = {"node": node} if node else {}
    out = client.get(network_path(ref) + "/doctor", **params)
    net = out["Network"]
    config = (net["IPAM"]["Config"] or [{}])[0]
    vni = net["Options"].get("com.docker.network.driver.overlay.vxlanid_list", "-")
    click.echo(f"network {net['Name']} ({truncate_id(net['Id'])}): subnet "
               f"{config.get('Subnet', '-')}, VNI {vni}"
               + (", encrypted" if "encrypted" in net["Options"] else ""))
    if not out["Nodes"]:
        click.echo("no node is on this network (no task of it runs anywhere)")
    bad = 0
    for n in out["Nodes"]:
        bad += _print_node(n)
    if bad:
        raise CommandFailed(f"{bad} node(s) differ from what they should have")


def _print_node(n: dict[str, Any]) -> int:
    age = n["checked_age_s"]
    checked = "never checked" if age is None else f"checked {age:.0f} s ago"
    problems = n["problems"]
    click.echo(f"\nnode {n['hostname'] or n['node_id']} ({truncate_id(n['node_id'])}): "
               f"{checked}: {'OK' if not problems else 'PROBLEMS'}")
    for kind in sorted(set(n["wanted"]) | set(n["found"])):
        found = n["found"].get(kind, "?")
        click.echo(f"  {kind:<16} wanted {n['wanted'].get(kind, '?'):>4}   found {found:>4}")
    for peer in n["peers"]:
        hs = peer["handshake_age_s"]
        click.echo(f"  peer {peer['hostname'] or peer['node_id']:<12} {peer['endpoint'] or '-':<22}"
                   f" handshake {'never' if hs is None else f'{hs:.0f} s ago'}")
    for diff in n["differences"]:
        click.echo(f"  repaired: {diff}")
    for problem in problems:
        click.echo(f"  problem: {problem}")
    return 1 if problems else 0


@network.command()
@click.option("--alias", "aliases", multiple=True, help="Another name for the container.")
@click.argument("ref", metavar="NETWORK")
@click.argument("container")
@pass_client
def connect(client: Client, aliases: tuple[str, ...], ref: str, container: str) -> None:
    """Connect a running container of this node's engine to an attachable network."""
    client.post(network_path(ref) + "/connect",
                {"Container": container, "EndpointConfig": {"Aliases": list(aliases)}})


@network.command()
@click.option("-f", "--force", is_flag=True, help="Force the container to disconnect.")
@click.argument("ref", metavar="NETWORK")
@click.argument("container")
@pass_client
def disconnect(client: Client, force: bool, ref: str, container: str) -> None:
    """Disconnect a container from a network."""
    client.post(network_path(ref) + "/disconnect", {"Container": container, "Force": force})


@network.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="NETWORK...")
@pass_client
def rm(client: Client, refs: tuple[str, ...]) -> None:
    """Remove one or more networks."""
    remove_each(client, {ref: network_path(ref) for ref in refs})
