"""`shoal swarm ...`: init, join, join-token, leave, inspect (Docker's names, flags, output)."""

from __future__ import annotations

import os
import sys
from typing import Any
from urllib.parse import quote

import click

from manager import backup as backup_format
from shoal.cli.output import DURATION, CommandFailed, pass_client, print_json
from shoal.client import Client

DEFAULT_LISTEN_ADDR = "0.0.0.0:2377"
AVAILABILITY = click.Choice(["active", "pause", "drain"], case_sensitive=False)
ROLE = click.Choice(["worker", "manager"], case_sensitive=False)


def normalize_listen_addr(value: str) -> str:
    """Fill in a missing host or port from 0.0.0.0:2377, as Docker does ("1.2.3.4",
    ":4000" -> "1.2.3.4:2377", "0.0.0.0:4000")."""
    value = value.strip()
    if ":" not in value or value.endswith("]"):
        host, port = value, ""
    else:
        host, _, port = value.rpartition(":")
    default_host, _, default_port = DEFAULT_LISTEN_ADDR.rpartition(":")
    port = port or default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid port {port!r} in address {value!r}")
    return f"{host or default_host}:{port}"


def _listen_addr_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return normalize_listen_addr(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


def listen_addr_flag(func: Any) -> Any:
    return click.option("--listen-addr", default=DEFAULT_LISTEN_ADDR, show_default=True,
                        callback=_listen_addr_option, metavar="IP:PORT",
                        help="Listen address for cluster management traffic.")(func)


@click.group()
def swarm() -> None:
    """Manage the swarm."""


def init_request(advertise_addr: str, listen_addr: str, availability: str | None,
                 cert_expiry: int | None, heartbeat: int | None,
                 history_limit: int | None, pools: tuple[str, ...] = (),
                 pool_mask: int | None = None, data_path_port: int | None = None
                 ) -> dict[str, Any]:
    """The SwarmInitRequest body, shaped as the docker CLI sends it."""
    spec: dict[str, Any] = {
        "Labels": None, "Orchestration": {}, "Raft": {"ElectionTick": 0, "HeartbeatTick": 0},
        "Dispatcher": {}, "CAConfig": {}, "TaskDefaults": {},
        "EncryptionConfig": {"AutoLockManagers": False},
    }
    if history_limit is not None:
        spec["Orchestration"]["TaskHistoryRetentionLimit"] = history_limit
    if heartbeat is not None:
        spec["Dispatcher"]["HeartbeatPeriod"] = heartbeat
    if cert_expiry is not None:
        spec["CAConfig"]["NodeCertExpiry"] = cert_expiry
    return {
        "ListenAddr": listen_addr, "AdvertiseAddr": advertise_addr, "DataPathAddr": "",
        "DataPathPort": data_path_port or 0, "ForceNewCluster": False, "Spec": spec,
        "AutoLockManagers": False, "Availability": (availability or "").lower(),
        "DefaultAddrPool": list(pools), "SubnetSize": pool_mask or 24,
    }


@swarm.command()
@click.option("--advertise-addr", default="", metavar="IP[:PORT]",
              help="Advertised address (format: <ip|interface>[:port]).")
@listen_addr_flag
@click.option("--availability", type=AVAILABILITY, help="Availability of the node.")
@click.option("--cert-expiry", type=DURATION, help="Validity period for node certificates "
              "(e.g. 2160h).")
@click.option("--dispatcher-heartbeat", type=DURATION, help="Dispatcher heartbeat period "
              "(e.g. 5s).")
@click.option("--task-history-limit", type=int, help="Task history retention limit.")
@click.option("--default-addr-pool", multiple=True, metavar="CIDR",
              help="Address pool(s) overlay networks' subnets come from (default 10.0.0.0/8).")
@click.option("--default-addr-pool-mask-length", type=int, metavar="N",
              help="Prefix length of the subnets cut from the pools (default 24).")
@click.option("--data-path-port", type=int, metavar="PORT",
              help="UDP port of the overlay (VXLAN) traffic (default 4789).")
@pass_client
def init(client: Client, advertise_addr: str, listen_addr: str, availability: str | None,
         cert_expiry: int | None, dispatcher_heartbeat: int | None,
         task_history_limit: int | None, default_addr_pool: tuple[str, ...],
         default_addr_pool_mask_length: int | None, data_path_port: int | None) -> None:
    """Initialize a swarm with this node as its first manager."""
    body = init_request(advertise_addr, listen_addr, availability, cert_expiry,
                        dispatcher_heartbeat, task_history_limit, default_addr_pool,
                        default_addr_pool_mask_length, data_path_port)
    node_id = str(client.post("/swarm/init", body))
    click.echo(f"Swarm initialized: current node ({node_id}) is now a manager.\n")
    addr = manager_addr(client, node_id)
    token = client.get("/swarm")["JoinTokens"]["Worker"]
    echo_join_command("worker", token, addr)
    click.echo("To add a manager to this swarm, run 'shoal swarm join-token manager' "
               "and follow the instructions.\n")


def manager_addr(client: Client, node_id: str) -> str:
    """The cluster address (ManagerStatus.Addr) of a manager node."""
    node = client.get(f"/nodes/{quote(node_id, safe='')}")
    return str((node.get("ManagerStatus") or {}).get("Addr") or "")


def echo_join_command(role: str, token: str, addr: str) -> None:
    click.echo(f"To add a {role} to this swarm, run the following command:\n\n"
               f"    shoal swarm join --token {token} {addr}\n")


@swarm.command()
@click.option("--token", required=True, help="Token for entry into the swarm.")
@click.option("--advertise-addr", default="", metavar="IP[:PORT]",
              help="Advertised address (format: <ip|interface>[:port]).")
@listen_addr_flag
@click.option("--availability", type=AVAILABILITY, help="Availability of the node.")
@click.argument("remote", metavar="HOST:PORT")
@pass_client
def join(client: Client, token: str, advertise_addr: str, listen_addr: str,
         availability: str | None, remote: str) -> None:
    """Join a swarm as a node and/or manager."""
    body = {
        "ListenAddr": listen_addr, "AdvertiseAddr": advertise_addr, "DataPathAddr": "",
        "RemoteAddrs": [remote], "JoinToken": token,
        "Availability": (availability or "").lower(),
    }
    client.post("/swarm/join", body)
    info = client.get("/info")
    role = "manager" if (info.get("Swarm") or {}).get("ControlAvailable") else "worker"
    click.echo(f"This node joined a swarm as a {role}.")


@swarm.command("join-token")
@click.option("-q", "--quiet", is_flag=True, help="Only display the token.")
@click.option("--rotate", is_flag=True, help="Rotate the join token.")
@click.argument("role", type=ROLE)
@pass_client
def join_token(client: Client, quiet: bool, rotate: bool, role: str) -> None:
    """Manage join tokens: print (or rotate) the token for ROLE (worker|manager)."""
    role = role.lower()
    cluster = client.get("/swarm")
    if rotate:
        client.post("/swarm/update", cluster.get("Spec") or {},
                    version=cluster["Version"]["Index"],
                    rotateWorkerToken=_bool(role == "worker"),
                    rotateManagerToken=_bool(role == "manager"),
                    rotateManagerUnlockKey="false")
        cluster = client.get("/swarm")
        if not quiet:
            click.echo(f"Successfully rotated {role} join token.\n")
    token = cluster["JoinTokens"][role.capitalize()]
    if quiet:
        click.echo(token)
        return
    echo_join_command(role, token, manager_addr(client, local_node_id(client)))


def local_node_id(client: Client) -> str:
    """This node's ID, from GET /info (Swarm.NodeID)."""
    node_id = (client.get("/info").get("Swarm") or {}).get("NodeID") or ""
    if not node_id:
        raise CommandFailed("This node is not part of a swarm. Use \"shoal swarm init\" or "
                            "\"shoal swarm join\" to connect it to a swarm.")
    return str(node_id)


def _bool(value: bool) -> str:
    return "true" if value else "false"


@swarm.command()
@click.option("-f", "--force", is_flag=True,
              help="Force this node to leave the swarm, ignoring warnings.")
@pass_client
def leave(client: Client, force: bool) -> None:
    """Leave the swarm."""
    params = {"force": True} if force else {}
    client.post("/swarm/leave", **params)
    click.echo("Node left the swarm.")


@swarm.command()
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True,
              help="Output format.")
@pass_client
def inspect(client: Client, fmt: str) -> None:
    """Display the swarm object (cluster settings, join tokens, TLS info) as JSON."""
    print_json(client.get("/swarm"))


@swarm.command()
@click.argument("file", metavar="FILE")
@pass_client
def backup(client: Client, file: str) -> None:
    """Write a backup of the swarm's state (services, networks, secrets, configs, nodes,
    the cluster CA) to FILE ("-": standard output); run it on a manager. While autolock is
    on the backup is encrypted: restoring it (`shoald --restore FILE`) needs the unlock key."""
    data = client.raw("GET", "/swarm/backup")
    try:
        header, _ = backup_format.decode(data)
    except backup_format.BackupInvalid as err:
        raise CommandFailed(f"the daemon sent a damaged backup: {err}") from None
    if file == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    tmp = f"{file}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, file)
    sealed = "encrypted with the unlock key" if header.sealed else "not encrypted"
    click.echo(f"Backup of swarm {header.cluster_id} (store version {header.store_version}, "
               f"{sealed}) written to {file} ({len(data)} bytes).")
