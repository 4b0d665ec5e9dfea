"""`shoal ca issue-client|issue-server --out DIR`: certificates for the TCP API signed by the
swarm's root CA. The private key is made here and never leaves this machine: only a CSR goes
to the manager. DIR gets the names the docker CLI (and dockerd's docs) use: ca.pem, cert.pem,
key.pem (0600)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

import pki
from shoal.cli.output import CommandFailed, parse_duration, pass_client
from shoal.client import Client

FILES = ("ca.pem", "cert.pem", "key.pem")


def _expiry_seconds(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_duration(text) // 1_000_000_000
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--expiry'") from err


def _prepare(out: str, force: bool) -> Path:
    path = Path(out)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = [name for name in FILES if (path / name).exists()]
    if existing and not force:
        raise CommandFailed(f"{out} already holds {', '.join(existing)}; choose another "
                            "--out directory or pass --force to replace them")
    return path


def _write(path: Path, name: str, data: bytes, mode: int) -> None:
    target = path / name
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(target, mode)


def issue(client: Client, out: str, force: bool, body: dict[str, Any]) -> None:
    path = _prepare(out, force)
    key = pki.new_key()
    answer = client.post("/ca/certificates", {**body, "CSR": pki.make_csr(key).decode()})
    _write(path, "key.pem", pki.key_pem(key), 0o600)
    _write(path, "cert.pem", answer["Certificate"].encode(), 0o644)
    _write(path, "ca.pem", answer["CACertificate"].encode(), 0o644)
    click.echo(f"wrote {path / 'ca.pem'}, {path / 'cert.pem'} and {path / 'key.pem'}")


@click.group()
def ca() -> None:
    """Certificates for the TLS-protected TCP API, signed by the swarm's root CA."""


_out = click.option("--out", required=True, metavar="DIR",
                    help="Directory for ca.pem, cert.pem and key.pem.")
_expiry = click.option("--expiry", metavar="DURATION",
                       help="Validity, a Go duration such as 2160h (default 90 days).")
_force = click.option("--force", is_flag=True, help="Replace the files DIR already holds.")


@ca.command("issue-client")
@_out
@click.option("--name", default="operator", show_default=True,
              help="The certificate's common name (who it is for).")
@_expiry
@_force
@pass_client
def issue_client(client: Client, out: str, name: str, expiry: str | None,
                 force: bool) -> None:
    """Issue a client certificate (EKU clientAuth) for the docker or shoal CLI:
    `docker --tlsverify --tlscacert DIR/ca.pem --tlscert DIR/cert.pem --tlskey DIR/key.pem`,
    or DOCKER_CERT_PATH=DIR DOCKER_TLS_VERIFY=1."""
    issue(client, out, force, {"Kind": "client", "Name": name,
                               "ExpirySeconds": _expiry_seconds(expiry)})


@ca.command("issue-server")
@_out
@click.option("--host", "hosts", multiple=True, required=True, metavar="IP|NAME",
              help="An address or DNS name clients reach the listener by (repeatable).")
@_expiry
@_force
@pass_client
def issue_server(client: Client, out: str, hosts: tuple[str, ...], expiry: str | None,
                 force: bool) -> None:
    """Issue a server certificate (EKU serverAuth) for `shoald -H tcp://...:2376 --tlsverify
    --tlscacert DIR/ca.pem --tlscert DIR/cert.pem --tlskey DIR/key.pem`."""
    issue(client, out, force, {"Kind": "server", "Name": "shoal-api", "Hosts": list(hosts),
                               "ExpirySeconds": _expiry_seconds(expiry)})
