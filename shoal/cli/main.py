"""The `shoal` command: the root click group and the console-script entry point."""

from __future__ import annotations

import os
from typing import Any

import click

from shoal.cli.ca import ca
from shoal.cli.dashboard import dashboard
from shoal.cli.lab_cmd import lab
from shoal.cli.network import network
from shoal.cli.node import node
from shoal.cli.output import CommandFailed, describe_api_error
from shoal.cli.secret import config, secret
from shoal.cli.service import service
from shoal.cli.service_logs import logs as service_logs
from shoal.cli.swarm import swarm
from shoal.client import DEFAULT_HOST, APIError, Client
from shoal.clienttls import ClientTLSError, client_tls


class ShoalGroup(click.Group):
    """Root group: turns any daemon error raised by a subcommand into Docker's
    "Error response from daemon: <message>" on stderr with exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except APIError as exc:
            raise CommandFailed(describe_api_error(exc)) from exc


@click.group(cls=ShoalGroup)
@click.option("-H", "--host", envvar="SHOAL_HOST", default=DEFAULT_HOST, show_default=True,
              metavar="HOST",
              help="Daemon to connect to: unix:///PATH or tcp://ADDR:PORT.")
@click.option("--tls", is_flag=True, help="Use TLS; implied by --tlsverify.")
@click.option("--tlsverify", is_flag=True,
              help="Use TLS and verify the daemon (or set DOCKER_TLS_VERIFY).")
@click.option("--tlscacert", metavar="FILE",
              help="Trust certificates signed by this CA (default DOCKER_CERT_PATH/ca.pem).")
@click.option("--tlscert", metavar="FILE",
              help="TLS certificate file (default DOCKER_CERT_PATH/cert.pem).")
@click.option("--tlskey", metavar="FILE", help="TLS key file (default DOCKER_CERT_PATH/key.pem).")
@click.version_option(package_name="shoal", prog_name="shoal")
@click.pass_context
def cli(ctx: click.Context, host: str, tls: bool, tlsverify: bool, tlscacert: str | None,
        tlscert: str | None, tlskey: str | None) -> None:
    """Shoal: Docker Swarm mode, rebuilt in Python."""
    try:
        tls_opts = client_tls(tls, tlsverify, tlscacert, tlscert, tlskey, os.environ)
    except ClientTLSError as err:
        raise CommandFailed(str(err)) from err
    ctx.obj = Client(host, tls=tls_opts)


cli.add_command(swarm)
cli.add_command(node)
cli.add_command(network)
cli.add_command(secret)
cli.add_command(config)
cli.add_command(ca)
cli.add_command(dashboard)
service.add_command(service_logs)
cli.add_command(service)

cli.add_command(lab)


def main() -> None:
    cli(prog_name="shoal")


if __name__ == "__main__":
    main()
