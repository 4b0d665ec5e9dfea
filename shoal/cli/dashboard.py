"""`shoal dashboard`: serve the node's web dashboard on a local port (a read-only proxy)."""

from __future__ import annotations

import asyncio
import contextlib

import click

from shoal.cli.output import CommandFailed
from shoal.client import Client
from shoal.dashboard.policy import LOOPBACK
from shoal.dashboard.proxy import ProxyError, serve, upstream


@click.command()
@click.option("-p", "--port", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="Local port to serve on (0 picks a free one).")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to serve on; anyone who reaches it sees the cluster.")
@click.option("--allow-actions", is_flag=True,
              help="Let the page scale services and change node availability.")
@click.pass_obj
def dashboard(client: Client, port: int, address: str, allow_actions: bool) -> None:
    """Serve the cluster's web dashboard on ADDRESS:PORT by proxying to the node's API
    (read-only unless --allow-actions), and print its URL. The node must be a manager."""
    client.raw("GET", "/dashboard/")  # a worker or a node outside a swarm says why here
    try:
        up = upstream(client.host, client.tls)
    except ProxyError as err:
        raise CommandFailed(str(err)) from err
    if address not in LOOPBACK:
        what = "can scale services and drain nodes" if allow_actions else "sees the cluster"
        click.echo(f"WARNING: serving on {address}: anyone who can reach it {what}, without "
                   "TLS", err=True)

    def ready(url: str) -> None:
        mode = "scale and availability actions allowed" if allow_actions else "read-only"
        click.echo(f"Serving the dashboard of {client.host} ({mode}; Ctrl-C to stop) at")
        click.echo(url)

    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(serve(up, address, port, ready, allow_actions))
        except ProxyError as err:
            raise CommandFailed(str(err)) from err
